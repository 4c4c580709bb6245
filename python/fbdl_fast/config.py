"""ModelConfig: every knob of a model and its training run, checked once when it is made.

The first twelve fields and their defaults are the product design's; the rest complete it. Names
(optimizer, scheduler, loss, initialiser) are checked against the names of the registries in
training/optim.py, training/losses.py and models/init.py, so a typo fails here and not an hour
into training. The names are written here, not imported: those modules import torch and this
one is a leaf (tests/test_registry_names.py checks that each tuple is its registry's keys).
"""

from __future__ import annotations

import dataclasses
import json
import math
import operator
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, Optional, Union

MODEL_NAMES = ("transformer", "lstm", "cnn")
AMP_DTYPES = ("auto", "float16", "bfloat16")
# Sizes beyond any model fbdl_fast builds: refused as a setting, and in a run's config.json as
# damage (building such a model would try to allocate gigabytes to terabytes, or overflow
# torch's sizes, before any other check could fail).
SIZE_LIMITS = {
    "input_dim": 1 << 16,
    "hidden_dim": 1 << 16,
    "num_layers": 1 << 10,
    "num_heads": 1 << 10,
    "vocab_size": 1 << 24,
    "num_classes": 1 << 20,
    "max_seq_length": 1 << 20,
    "kernel_sizes": 1 << 12,
}
# The largest learning rate: past any that trains, a rate still diverges in a step (which
# training reports, with advice); much past this one, an optimizer's step arithmetic (Adam's
# lr / (1 - beta1), ...) leaves float32 and torch raises mid-step instead.
MAX_LEARNING_RATE = 1e30
SEED_MAX = 2**63 - 1  # the largest seed: seed + epoch and seed + rank stay below torch's 2**64
POOLINGS = ("mean", "cls")
# Training order: "shuffle" yields every post once an epoch; "balanced" draws posts with
# replacement so that every class is equally likely (data.balanced_sample_weights).
SAMPLERS = ("shuffle", "balanced")
# What picks best.pt and drives early stopping: the lowest validation loss, or the highest
# validation macro-F1, what a classifier is judged by. They disagree on small real tasks: the
# loss bottoms out an epoch or two before macro-F1 peaks, as the model grows more confident on
# the posts it still gets wrong while it gets more of them right.
MONITORS = ("val_loss", "val_f1")
# The registries' names: training.optim.OPTIMIZERS and SCHEDULERS, training.losses'
# classification losses (those called as criterion(logits, labels)), models.init.INITIALIZERS.
OPTIMIZER_NAMES = ("adam", "adamw", "sgd", "rmsprop", "adagrad", "lion", "adabelief")
SCHEDULER_NAMES = ("step", "cosine", "plateau", "one_cycle", "linear")
CLASSIFICATION_LOSS_NAMES = ("cross_entropy", "focal", "dice")
INITIALIZER_NAMES = (
    "xavier_uniform",
    "xavier_normal",
    "kaiming_uniform",
    "kaiming_normal",
    "orthogonal",
    "sparse",
)


@dataclass
class ModelConfig:
    input_dim: int = 768  # embedding width (d_model of the Transformer)
    hidden_dim: int = 512  # feed-forward width / LSTM hidden size / CNN filters per kernel size
    num_layers: int = 6  # Transformer blocks or LSTM layers
    num_heads: int = 8  # attention heads; must divide input_dim
    dropout: float = 0.1  # dropout probability, in [0, 1)
    learning_rate: float = 1e-4  # peak learning rate
    weight_decay: float = 1e-5  # L2 (adam) or decoupled (adamw) weight decay
    batch_size: int = 32  # posts per training batch
    max_epochs: int = 100  # upper bound on training epochs
    patience: int = 10  # epochs without improvement of `monitor` before early stopping
    monitor: str = "val_loss"  # what best.pt and early stopping follow, one of MONITORS
    gradient_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    use_mixed_precision: bool = True  # AMP where it helps: fp16/bf16 on CUDA; on CPU see amp_dtype

    vocab_size: int = 10_000  # token ids are in [0, vocab_size)
    num_classes: int = 2  # output classes
    max_seq_length: int = 512  # longest sequence (learned position table size)
    pad_token_id: int = 0  # id used for padding; padded positions never change a model's output
    optimizer_type: str = "adamw"  # one of OPTIMIZER_NAMES (training.optim.OPTIMIZERS)
    scheduler_type: Optional[str] = "cosine"  # one of SCHEDULER_NAMES; None for constant LR
    loss: str = "cross_entropy"  # one of CLASSIFICATION_LOSS_NAMES
    use_focal_loss: bool = False  # the design's switch: True means loss="focal"
    class_weights: Optional[list[float]] = None  # per-class loss weights, length num_classes
    focal_gamma: float = 2.0  # focusing parameter of the focal loss, >= 0
    focal_alpha: Optional[Union[float, list[float]]] = None  # focal balance: scalar or per class
    label_smoothing: float = 0.0  # in [0, 1)
    seed: int = 42  # seeds weights, data order and dropout
    init: Optional[str] = None  # one of INITIALIZER_NAMES; None: the model's own initialisation
    kernel_sizes: tuple[int, ...] = (3, 4, 5)  # CNN convolution widths
    fused: bool = True  # use fbdl_fast.nn fused layers; False builds the pure-PyTorch reference
    amp_dtype: str = "auto"  # "auto": fp16 on CUDA, bf16 on CPU (CPU only when asked: warns)
    # The BERT encoder's own (models/bert.py); a pretrained checkpoint's config.json sets the last
    # two, and the sizes above, when create_model(..., pretrained=...) loads it.
    pooling: str = "mean"  # bert head input: "mean" over real tokens or "cls" (first token)
    type_vocab_size: int = 2  # bert: rows of the token type (segment) embedding
    layer_norm_eps: float = 1e-12  # bert: LayerNorm epsilon (the other models use torch's 1e-5)
    # Fine-tuning (`fbdl-fast train --model minilm` sets both): the "linear" scheduler's warmup,
    # as a share of all optimizer steps, and weight decay for every parameter, or (False) for
    # matrices and embeddings only: biases and norm gains (the 1-D parameters) get none.
    warmup_fraction: float = 0.06  # linear scheduler: steps of linear warmup / all steps, [0, 1)
    decay_biases_and_norms: bool = True  # False: weight_decay spares 1-D parameters
    freeze_layers: int = 0  # bert: the embeddings and the first K blocks are not trained
    layer_decay: float = 1.0  # bert: LR x layer_decay ** (layers above): head 1, top block x d
    sampler: str = "shuffle"  # training order, one of SAMPLERS
    # Several labels a post: one sigmoid output a class, binary cross-entropy (or with
    # loss="focal" the focal loss's binary form), per-class thresholds
    # (fbdl_fast.training.multilabel).
    multi_label: bool = False
    # Exponential moving average of the weights, updated after every optimizer step with this
    # decay, in (0, 1); validated and saved as best.pt in place of the trained weights. None: off.
    ema_decay: Optional[float] = None
    extra: dict[str, Any] = field(default_factory=dict)  # free-form user metadata, saved as is

    def __post_init__(self) -> None:
        self.kernel_sizes = tuple(self.kernel_sizes)
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first field whose value cannot work."""
        for name in (
            "input_dim",
            "hidden_dim",
            "num_layers",
            "num_heads",
            "batch_size",
            "max_epochs",
            "vocab_size",
            "max_seq_length",
            "type_vocab_size",
        ):
            _require(
                name,
                getattr(self, name),
                _is_int(getattr(self, name)) and getattr(self, name) >= 1,
                "a positive integer",
            )
        _require(
            "num_classes",
            self.num_classes,
            _is_int(self.num_classes) and self.num_classes >= 2,
            "an integer >= 2",
        )
        _require(
            "kernel_sizes",
            self.kernel_sizes,
            len(self.kernel_sizes) > 0 and all(_is_int(k) and k >= 1 for k in self.kernel_sizes),
            "a non-empty tuple of positive integers",
        )
        for name, limit in SIZE_LIMITS.items():
            value = getattr(self, name)
            _require(
                name,
                value,
                all(v <= limit for v in (value if isinstance(value, tuple) else (value,))),
                f"at most {limit:,} (larger is beyond any model fbdl_fast builds)",
            )
        _require(
            "patience",
            self.patience,
            _is_int(self.patience) and self.patience >= 0,
            "an integer >= 0",
        )
        if self.input_dim % self.num_heads:
            raise ValueError(
                f"input_dim={self.input_dim} is not divisible by "
                f"num_heads={self.num_heads}; pick input_dim a multiple of num_heads"
            )
        _require(
            "dropout",
            self.dropout,
            _is_number(self.dropout) and 0.0 <= self.dropout < 1.0,
            "a probability in [0, 1)",
        )
        _require(
            "label_smoothing",
            self.label_smoothing,
            _is_number(self.label_smoothing) and 0.0 <= self.label_smoothing < 1.0,
            "a value in [0, 1)",
        )
        # inf as well as nan: an infinite step or decay gives NaN weights at the first step
        _require(
            "learning_rate",
            self.learning_rate,
            _is_number(self.learning_rate) and 0 < self.learning_rate <= MAX_LEARNING_RATE,
            f"a positive number up to {MAX_LEARNING_RATE:g}",
        )
        for name in ("weight_decay", "gradient_clip"):
            value = getattr(self, name)
            _require(
                name, value, _is_number(value) and 0 <= value < math.inf, "a number >= 0 (finite)"
            )
        _require(
            "seed",
            self.seed,
            _is_int(self.seed) and 0 <= self.seed <= SEED_MAX,
            "an integer in [0, 2**63 - 1] (numpy's generators take no negative seed, torch's "
            "64 bits, and the run adds the epoch and the rank to it)",
        )
        # The focal loss's own check of gamma. Imported here: fbdl_fast.ops imports torch.
        from fbdl_fast.ops.checks import check_gamma

        check_gamma(self.focal_gamma, "ModelConfig.focal_gamma")
        _require(
            "pad_token_id",
            self.pad_token_id,
            _is_int(self.pad_token_id) and 0 <= self.pad_token_id < self.vocab_size,
            f"an id in [0, vocab_size={self.vocab_size})",
        )
        _require("amp_dtype", self.amp_dtype, self.amp_dtype in AMP_DTYPES, f"one of {AMP_DTYPES}")
        _require("pooling", self.pooling, self.pooling in POOLINGS, f"one of {POOLINGS}")
        _require(
            "layer_norm_eps",
            self.layer_norm_eps,
            _is_number(self.layer_norm_eps) and 0 < self.layer_norm_eps < 1,
            "a number in (0, 1)",
        )
        _require(
            "warmup_fraction",
            self.warmup_fraction,
            _is_number(self.warmup_fraction) and 0 <= self.warmup_fraction < 1,
            "a number in [0, 1)",
        )
        _require(
            "freeze_layers",
            self.freeze_layers,
            _is_int(self.freeze_layers) and 0 <= self.freeze_layers <= self.num_layers,
            f"an integer in [0, num_layers={self.num_layers}]",
        )
        _require(
            "layer_decay",
            self.layer_decay,
            isinstance(self.layer_decay, (int, float))
            and not isinstance(self.layer_decay, bool)
            and 0 < self.layer_decay <= 1,
            "a number in (0, 1]",
        )
        _require("sampler", self.sampler, self.sampler in SAMPLERS, f"one of {SAMPLERS}")
        _require("monitor", self.monitor, self.monitor in MONITORS, f"one of {MONITORS}")
        _require(
            "ema_decay",
            self.ema_decay,
            self.ema_decay is None
            or (
                isinstance(self.ema_decay, (int, float))
                and not isinstance(self.ema_decay, bool)
                and 0 < self.ema_decay < 1
            ),
            "None or a number in (0, 1), e.g. 0.999",
        )
        if self.multi_label:
            self._validate_multi_label()
        self._validate_per_class("class_weights", self.class_weights)
        if isinstance(self.focal_alpha, (list, tuple)):
            self._validate_per_class("focal_alpha", self.focal_alpha)
        elif self.focal_alpha is not None:
            _require(
                "focal_alpha",
                self.focal_alpha,
                _is_number(self.focal_alpha) and 0 <= self.focal_alpha < math.inf,
                "a finite number >= 0",
            )
        self._validate_names()

    def _validate_multi_label(self) -> None:
        """The options a multi-label run cannot use (they are defined for one class a post)."""
        single_only = {
            "sampler": self.sampler != "shuffle",
            "class_weights": self.class_weights is not None,
            "focal_alpha": self.focal_alpha is not None,
            "label_smoothing": self.label_smoothing != 0,
            "loss": self.loss_name not in ("cross_entropy", "focal"),
        }
        for name, used in single_only.items():
            if used:
                accepted = "'cross_entropy' or 'focal'" if name == "loss" else "its default"
                raise ValueError(
                    f"ModelConfig.{name}={getattr(self, name)!r} is a single-label option, "
                    f"invalid with multi_label; expected {accepted}"
                )

    def _validate_per_class(self, name: str, values: Optional[list[float]]) -> None:
        if values is None:
            return
        _require(
            name,
            values,
            len(values) == self.num_classes
            and all(isinstance(v, (int, float)) and 0 <= v < math.inf for v in values),
            f"num_classes={self.num_classes} finite numbers >= 0",
        )

    def _validate_names(self) -> None:
        _require_name("optimizer_type", self.optimizer_type, OPTIMIZER_NAMES)
        if self.scheduler_type is not None:
            _require_name(
                "scheduler_type", self.scheduler_type, SCHEDULER_NAMES, "or none (a constant rate)"
            )
        # Only the losses a classifier can train with (criterion(logits, labels)), not all LOSSES.
        _require_name("loss", self.loss, CLASSIFICATION_LOSS_NAMES)
        if self.init is not None:
            _require_name("init", self.init, INITIALIZER_NAMES)

    @property
    def loss_name(self) -> str:
        """The loss the trainer uses: the design's use_focal_loss switch wins over `loss`."""
        return "focal" if self.use_focal_loss else self.loss

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig field(s) {unknown}; fields are: {sorted(known)}")
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def as_integer(value: Any) -> Optional[int]:
    """`value` as an int when it is an integer argument of the public API (predict's batch
    size, the tokenizer's max_length, a label), else None: Python's int and numpy's integers
    (anything with __index__), never a bool (True is not a batch size) nor a float (1.5 is no
    length, and 2.0 is a float someone computed). ModelConfig's own fields stay plain ints
    (_is_int): they are written to config.json."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _require(name: str, value: Any, ok: bool, accepted: str) -> None:
    if not ok:
        raise ValueError(f"ModelConfig.{name}={value!r} is invalid; expected {accepted}")


def _require_name(name: str, value: str, registry: Collection[str], also: str = "") -> None:
    if value not in registry:
        accepted = ", ".join(sorted(registry)) + (f" {also}" if also else "")
        raise ValueError(f"ModelConfig.{name}={value!r} is not known; accepted: {accepted}")
