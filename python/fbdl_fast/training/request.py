"""What a training run is asked to do beyond its ModelConfig: TrainRequest, checked before any
data is read, and `train_request`, which builds a request and its config from keyword fields with
the defaults of the model (what `fbdl-fast train` and `fbdl_fast.train` start from).

    request, config = train_request("cnn", data="posts.csv", output="runs/cnn", epochs=3)
    request.validate(config)            # TrainError naming the field, before the data is read

Messages name the Python fields (`val_fraction=1.0 is invalid ...`, a switch as `calibrate=True`);
the CLI turns them into its flags (cli.options.in_flag_terms). The CLI's own defaults are these:
a field left out here is left out there.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from fbdl_fast.config import ModelConfig
from fbdl_fast.training import devices, presets
from fbdl_fast.training.loading import DEFAULT_THREADS, MAX_THREADS

if TYPE_CHECKING:
    from fbdl_fast.data import Posts
    from fbdl_fast.training.distill import Distillation
    from fbdl_fast.training.losses import ClassWeights


# How config.json (and the CLI's --focal-alpha) spells focal_alpha_from_weights=True.
FOCAL_ALPHA_FROM_WEIGHTS = "class-weights"


DEFAULT_LABEL_SEPARATOR = "|"
# ModelConfig's focal_gamma: another value without loss=focal is an option that does nothing.
DEFAULT_FOCAL_GAMMA = next(
    f.default for f in dataclasses.fields(ModelConfig) if f.name == "focal_gamma"
)


class TrainError(ValueError):
    """A training request that cannot run as asked: the message names the field and its value."""


@dataclass
class TrainRequest:
    """A training run's data, run folder and settings: everything `fbdl-fast train` takes that is
    not a ModelConfig field. None means "the model's" where noted."""

    data: Union[str, os.PathLike[str], Posts]  # a posts file (.csv, .tsv, .jsonl) or Posts
    output: Optional[Union[str, os.PathLike[str]]] = None  # None: runs/MODEL-YYYYmmdd-HHMMSS
    model: str = "transformer"  # one of presets.TITLES; "minilm" fine-tunes a pretrained encoder
    text_column: str = "text"  # column / key of the post text (a file only)
    label_column: str = "label"  # column / key of the label (a file only)
    multi_label: bool = False  # posts carry any number of labels; sets ModelConfig.multi_label
    label_separator: str = DEFAULT_LABEL_SEPARATOR  # multi_label: between a post's labels
    tune_thresholds: bool = False  # multi_label: each class's threshold tuned on validation
    val_fraction: float = 0.1  # share of posts held out for validation, in (0, 1)
    overwrite: bool = False  # replace an existing run folder (only once training succeeds)
    resume: bool = False  # continue the run in `output` from its last.pt
    accumulate: int = 1  # batches per optimizer step
    compile: bool = False  # torch.compile the model
    max_nonfinite: int = 5  # steps in a row with a NaN/inf loss (each skipped) that stop training
    calibrate: bool = False  # fit a softmax temperature on the validation posts, stored in best.pt
    # "balanced" (n / (classes x posts of the class), from the training posts), "none", a JSON /
    # CSV file of label weights, or a mapping label -> weight (losses.loss_class_weights)
    class_weights: ClassWeights = "none"
    # The class weights become the focal loss's per-class alpha instead of the loss's weights.
    focal_alpha_from_weights: bool = False
    tokenizer_style: Optional[str] = None  # one of presets.TOKENIZER_STYLES; None: the model's
    vocab_size: Optional[int] = None  # the tokenizer's vocabulary to train; None: the model's
    spell_emoji: bool = True  # fine-tuned encoder: emoji spelled as their names, not [UNK]
    device: Optional[str] = None  # cpu, cuda, cuda:N, mps; None: cuda if available
    progress_every: Optional[float] = 30.0  # seconds between progress log lines; None: none
    encoding_errors: str = "strict"  # invalid UTF-8 in the data: strict, replace or ignore
    distillation: Optional[Distillation] = None  # a teacher's soft targets (training.distill)
    threads: int = DEFAULT_THREADS  # torch's intra-op CPU threads during the run (train_run)
    baseline: bool = True  # also fit the n-gram baseline on the same split (ngram_baseline)

    @property
    def data_file(self) -> Optional[Union[str, os.PathLike[str]]]:
        """The posts file `data` names; None when `data` is Posts."""
        return self.data if isinstance(self.data, (str, os.PathLike)) else None

    def validate(self, config: ModelConfig) -> ModelConfig:
        """Raise TrainError naming the first field no run can use, before any data is read;
        return `config` with what the request decides (multi_label). The labels of a class
        weights file or mapping are checked once the data is read."""
        self._check_model(config)
        _check_fraction(self.val_fraction)
        for name in ("accumulate", "max_nonfinite", "threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise TrainError(f"{name}={value!r} is invalid; expected a positive integer")
        if self.threads > MAX_THREADS:
            raise TrainError(
                f"threads={self.threads!r} is invalid; expected an integer in [1, {MAX_THREADS}]"
            )
        if self.progress_every is not None and not (
            isinstance(self.progress_every, (int, float)) and 0 <= self.progress_every < math.inf
        ):
            raise TrainError(
                f"progress_every={self.progress_every!r} is invalid; expected None or a finite "
                "number of seconds >= 0"
            )
        self._check_data()
        if self.output is not None and not os.fspath(self.output):
            raise TrainError(
                "output is empty; expected the run folder's path, or None for runs/MODEL-TIME"
            )
        # A post is [CLS], its tokens and [SEP]: fewer than 3 leaves room for no token.
        if config.max_seq_length < 3:
            raise TrainError(
                f"max_seq_length={config.max_seq_length} is too small; expected an integer >= 3 "
                "(room for [CLS], [SEP] and one token)"
            )
        check_device(self.device)
        try:
            config = dataclasses.replace(config, multi_label=self.multi_label)
        except ValueError as err:
            raise TrainError(str(err)) from None
        self._check_balance(config)
        self._check_tokenizer()
        if self.distillation is not None:
            check_distillable(self, config)
        self._check_memory(config)
        return config

    def _check_memory(self, config: ModelConfig) -> None:
        """TrainError, with the estimate, when the model and one batch surely cannot fit in the
        device's memory (training.memory: a rough estimate that errs low)."""
        from fbdl_fast.models import architecture
        from fbdl_fast.training import memory

        needed = memory.estimate(architecture(self.model), config)
        available = memory.available_bytes(self.device)
        if available is None or needed.total <= available:
            return
        raise TrainError(
            f"model={self.model} with these sizes needs about {memory.size(needed.total)}, "
            f"more than the {memory.size(available)} of memory available on "
            f"{self.device or 'this machine'}: {needed.parameters:,} parameters x 4 bytes x 3 "
            f"(weights and Adam's two moments) = {memory.size(needed.weights_and_state)}, and "
            f"{memory.size(needed.activations)} of activations for one batch of batch_size="
            f"{config.batch_size} posts of max_seq_length={config.max_seq_length} tokens; "
            "choose smaller sizes (input_dim, hidden_dim, num_layers, vocab_size, "
            "max_seq_length, batch_size)"
        )

    def _check_model(self, config: ModelConfig) -> None:
        """The model is known, and the options it cannot use are left at their defaults."""
        _check_model_name(self.model)
        defaults = ModelConfig()
        if self.model != "cnn" and tuple(config.kernel_sizes) != defaults.kernel_sizes:
            raise TrainError(
                f"kernel_sizes={','.join(map(str, config.kernel_sizes))}: the convolution widths "
                f"of model=cnn; model={self.model} has no convolutions"
            )
        if presets.is_fine_tuned(self.model):
            positions = _checkpoint(self.model)["max_seq_length"]
            if config.max_seq_length > positions:
                raise TrainError(
                    f"max_seq_length={config.max_seq_length} is beyond model={self.model}'s "
                    f"{positions} positions; accepted: 1 to {positions}"
                )
            return
        fine_tuned = ", ".join(presets.FINE_TUNED_TITLES)
        for name in ("freeze_layers", "layer_decay"):
            value = getattr(config, name)
            if value != getattr(defaults, name):
                raise TrainError(
                    f"{name}={value!r}: only a pretrained encoder (model={fine_tuned}) "
                    f"fine-tunes by layers, not model={self.model}"
                )
        if config.pooling != defaults.pooling:
            raise TrainError(
                f"pooling={config.pooling!r}: only a pretrained encoder (model={fine_tuned}) "
                f"pools its states for the head; model={self.model} has its own pooling"
            )
        if not self.spell_emoji:
            raise TrainError(
                f"spell_emoji=False: emoji are spelled out only for a pretrained vocabulary "
                f"(model={fine_tuned}); model={self.model} trains its own tokenizer, which "
                "learns emoji as tokens"
            )

    def _check_data(self) -> None:
        from fbdl_fast.data import ENCODING_ERRORS, Posts

        if isinstance(self.data, Posts):
            if self.data.labels is None:
                raise TrainError("data: the Posts have no labels; training needs one a post")
        elif not isinstance(self.data, (str, os.PathLike)):
            raise TrainError(
                f"data is a {type(self.data).__name__}; expected a posts file path or Posts"
            )
        if self.encoding_errors not in ENCODING_ERRORS:
            raise TrainError(
                f"encoding_errors={self.encoding_errors!r} is not supported; accepted: "
                f"{', '.join(ENCODING_ERRORS)}"
            )

    def _check_balance(self, config: ModelConfig) -> None:
        """class_weights, focal alpha, and the options of one label a post against multi_label;
        the labels of a weights file or mapping are checked once the data is read."""
        from fbdl_fast.training.losses import CLASS_WEIGHT_CHOICES

        if config.class_weights is not None:
            raise TrainError(
                f"ModelConfig.class_weights={config.class_weights!r}: a run's class weights come "
                "from the request's class_weights (balanced, none, a file or a mapping of label "
                "weights); leave the config's None"
            )
        choice = self.class_weights
        shown = _shown(choice)
        if self.multi_label and (isinstance(choice, Mapping) or choice != "none"):
            raise TrainError(f"class_weights={shown}: single-label runs only, not multi_label=True")
        if not self.multi_label and self.tune_thresholds:
            raise TrainError(
                "tune_thresholds=True tunes multi_label=True runs; add multi_label=True"
            )
        if self.multi_label and not self.label_separator:
            raise TrainError("label_separator is empty; expected a character such as |")
        if not self.multi_label and self.label_separator != DEFAULT_LABEL_SEPARATOR:
            raise TrainError(
                f"label_separator={self.label_separator!r} splits the labels of multi_label=True "
                "runs; add multi_label=True"
            )
        if self.multi_label and self.calibrate:
            raise TrainError(
                "calibrate=True fits a softmax temperature: single-label runs only, not "
                "multi_label=True (tune its thresholds with tune_thresholds=True)"
            )
        if isinstance(choice, Mapping):
            for label, weight in choice.items():
                if not _is_weight(weight):
                    raise TrainError(
                        f"class_weights: the weight of label {label!r} is {weight!r}; expected "
                        "a finite number >= 0"
                    )
        elif not isinstance(choice, (str, os.PathLike)) or (
            choice not in CLASS_WEIGHT_CHOICES and not Path(choice).is_file()
        ):
            raise TrainError(
                f"class_weights={_shown(choice, quote=True)} is neither balanced, none nor an "
                "existing file; accepted: balanced, none, or a JSON / CSV file of label weights"
            )
        loss = config.loss_name
        if config.focal_alpha is not None and loss != "focal":
            raise TrainError(
                f"focal_alpha={config.focal_alpha!r} needs loss=focal (the loss is {loss})"
            )
        if config.focal_gamma != DEFAULT_FOCAL_GAMMA and loss != "focal":
            raise TrainError(
                f"focal_gamma={config.focal_gamma!r} needs loss=focal (the loss is {loss})"
            )
        if self.focal_alpha_from_weights:
            if loss != "focal":
                raise TrainError(
                    f"focal_alpha_from_weights=True needs loss=focal (the loss is {loss})"
                )
            if not isinstance(choice, Mapping) and choice == "none":
                raise TrainError(
                    "focal_alpha_from_weights=True takes alpha from class_weights; set "
                    "class_weights=balanced or a file of weights"
                )
            if config.focal_alpha is not None:
                raise TrainError(
                    f"focal_alpha={config.focal_alpha!r} and focal_alpha_from_weights=True: "
                    "alpha is one or the other"
                )

    def _check_tokenizer(self) -> None:
        """tokenizer_style and vocab_size: a style and a size a tokenizer can be trained with,
        or for a fine-tuned encoder nothing (its checkpoint's)."""
        from fbdl_fast.tokenizer import Tokenizer

        if presets.is_fine_tuned(self.model):
            given = presets.CHECKPOINT_TOKENIZER_FIELDS
            check_not_chosen(self.model, [n for n in given if getattr(self, n) is not None])
            return
        style, vocab_size = presets.tokenizer_settings(
            self.model, self.tokenizer_style, self.vocab_size
        )
        if style not in presets.TOKENIZER_STYLES:
            raise TrainError(
                f"tokenizer_style={style!r} is not known; accepted: "
                f"{', '.join(sorted(presets.TOKENIZER_STYLES))}"
            )
        try:  # the tokenizer's own checks of its size (its special tokens need room)
            Tokenizer.train(["x"], vocab_size=vocab_size, **presets.TOKENIZER_STYLES[style])
        except ValueError as err:
            raise TrainError(str(err)) from None


def check_distillable(request: TrainRequest, config: ModelConfig) -> None:
    """TrainError for what distillation cannot do: several labels a post (its targets are a
    softmax), balanced sampling, several processes."""
    if request.multi_label:
        raise TrainError("multi_label=True: distill trains single-label students only")
    if config.sampler != "shuffle":
        raise TrainError(f"sampler={config.sampler}: distill draws its posts with shuffle only")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise TrainError("distill runs in one process; start it without torchrun")


def check_device(name: Optional[str]) -> None:
    """TrainError unless `name` is a device this machine has (None: the default): the rule
    load_run follows too (training.devices)."""
    try:
        devices.check_device(name)
    except ValueError as err:
        raise TrainError(str(err)) from None


# Keyword aliases train_request takes for the ModelConfig fields people name otherwise.
ALIASES = {"epochs": "max_epochs", "lr": "learning_rate"}
# ModelConfig fields the data decides (train_run fills them in); "vocab_size" is the request's.
DATA_FIELDS = ("num_classes", "pad_token_id")


def train_request(model: str = "transformer", **fields: Any) -> tuple[TrainRequest, ModelConfig]:
    """A TrainRequest and its ModelConfig template from keyword fields, with `model`'s defaults
    (presets.config_defaults) where a ModelConfig field is left out. Each keyword is a
    TrainRequest field (`vocab_size`, `class_weights` and `multi_label` are the request's) or a
    ModelConfig field (`epochs` and `lr` name max_epochs and learning_rate). TrainError for an
    unknown field, a field the data decides, or a size a fine-tuned encoder's checkpoint sets;
    ValueError from ModelConfig for a value it refuses.

        request, config = train_request("cnn", data="posts.csv", epochs=3, lr=2e-3)
    """
    request_names = {f.name for f in dataclasses.fields(TrainRequest)}
    config_names = {f.name for f in dataclasses.fields(ModelConfig)} - request_names
    given = {ALIASES.get(name, name): value for name, value in fields.items()}
    unknown = sorted(set(given) - request_names - config_names)
    if unknown:
        raise TrainError(
            f"unknown field(s) {', '.join(unknown)}; accepted: the fields of TrainRequest and "
            f"of ModelConfig (and {', '.join(ALIASES)})"
        )
    decided = [name for name in DATA_FIELDS if name in given]
    if decided:
        raise TrainError(f"{', '.join(decided)}: decided by the data; leave it out")
    _check_model_name(model)
    fixed = (*presets.CHECKPOINT_FIELDS, *presets.CHECKPOINT_TOKENIZER_FIELDS)
    check_not_chosen(model, [name for name in fixed if given.get(name) is not None])
    chosen = {name: value for name, value in given.items() if name in config_names}
    multi_label = bool(given.get("multi_label", False))
    if presets.is_convex_ngram(model, chosen.get("extra"), multi_label):
        unused = [name for name in presets.NGRAM_CONVEX_UNUSED if chosen.get(name) is not None]
        if unused:
            raise TrainError(
                f"{', '.join(unused)}: not used by the n-gram model's convex fit (C is chosen "
                "on validation); leave them out, or fit it over epochs from Python with "
                "extra={'ngram_fit': 'gradient', ...}"
            )
    defaults = _config_defaults(model, multi_label, chosen.get("extra"))
    values = {**defaults, **chosen, "multi_label": multi_label}
    config = ModelConfig(**values)
    if presets.is_convex_ngram(model, config.extra, multi_label):
        problem = presets.convex_ngram_problem(config)
        if problem is not None:
            raise TrainError(problem)
    request = TrainRequest(
        model=model, **{name: value for name, value in given.items() if name in request_names}
    )
    return request, config


def check_not_chosen(model: str, names: list[str]) -> None:
    """TrainError when fields a fine-tuned encoder takes from its checkpoint (presets'
    CHECKPOINT_FIELDS and CHECKPOINT_TOKENIZER_FIELDS) are chosen: `names`, those given."""
    if presets.is_fine_tuned(model) and names:
        raise TrainError(
            f"{', '.join(names)}: model={model} takes its sizes, vocabulary and tokenizer from "
            "its pretrained checkpoint; leave these out"
        )


def _check_model_name(model: str) -> None:
    if model not in presets.TITLES:
        raise TrainError(
            f"model={model!r} is not known; accepted: {', '.join(sorted(presets.TITLES))}"
        )


def _config_defaults(model: str, multi_label: bool, extra: Optional[dict]) -> dict[str, Any]:
    try:
        return presets.config_defaults(model, multi_label, extra)
    except (FileNotFoundError, ValueError) as err:
        raise TrainError(f"model={model}: {err}") from None


def _checkpoint(model: str) -> dict[str, Any]:
    try:
        return presets.checkpoint_sizes(model)
    except (FileNotFoundError, ValueError) as err:
        raise TrainError(f"model={model}: {err}") from None


def _check_fraction(value: Any) -> None:
    if not (isinstance(value, (int, float)) and 0.0 < value < 1.0):
        raise TrainError(f"val_fraction={value!r} is invalid; expected a value in (0, 1)")


def _is_weight(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < math.inf


def _shown(choice: Any, quote: bool = False) -> str:
    """A class_weights value in a message: the choice or path as given, or "a mapping"."""
    if isinstance(choice, Mapping):
        return "a mapping"
    text = os.fspath(choice) if isinstance(choice, (str, os.PathLike)) else choice
    return repr(text) if quote else str(text)


__all__ = [
    "ALIASES",
    "FOCAL_ALPHA_FROM_WEIGHTS",
    "TrainError",
    "TrainRequest",
    "check_device",
    "check_distillable",
    "check_not_chosen",
    "train_request",
]
