"""Which layers of a run's model cost most in dynamic int8: the candidates for
`fbdl-fast export --format int8 --keep-fp32 NAMES`.

    python benches/studies/int8_sensitivity.py --run runs/debian/minilm
        [--data train.csv] [--time NAMES]

The run's validation split is rebuilt as train made it (data.split_posts with the run's
val_fraction and seed, stratified; the posts file is config.json's data.source unless --data
names it), and its size is checked against config.json's data.val_posts. On it, the fp32 model,
the all-int8 model (int8.quantize_int8) and, for each quantizable layer, the int8 model with
that one layer kept in fp32 are scored (macro-F1 and loss). Prints the layers ranked by how much
keeping them in fp32 recovers of int8's macro-F1 cost. Ranking on the validation posts, not the
test posts, keeps the choice of --keep-fp32 out of the test score.

--time NAMES also times the model alone (forward passes over the validation batches, tokenized
once, one torch thread, CPU time by time.process_time so that other processes on a shared
machine count less; fp32, all int8 and int8 with NAMES kept timed in turns, best of --repeats).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fbdl_fast.data import PostsDataset, load_posts, make_loader, split_posts
from fbdl_fast.serving import int8
from fbdl_fast.training.loading import load_run
from fbdl_fast.training.trainer import Trainer


def validation_loader(run: Any, data: Path | None) -> tuple[Any, int]:
    """The run's validation posts as train split them, in padded batches of the run's size."""
    meta = run.meta.get("data", {})
    source = Path(data or meta["source"])
    posts = load_posts(source, meta.get("text_column", "text"), meta.get("label_column", "label"))
    _, val = split_posts(posts, meta["val_fraction"], run.config.seed, stratify=True)
    expected = meta.get("val_posts")
    if expected is not None and len(val) != expected:
        raise SystemExit(
            f"{source}: the split gives {len(val)} validation posts, config.json's data.val_posts "
            f"is {expected}; pass the posts file the run was trained on with --data"
        )
    assert val.labels is not None
    dataset = PostsDataset.from_texts(
        run.tokenizer, val.texts, run.label_map.encode_all(val), run.config.max_seq_length
    )
    loader = make_loader(
        dataset, run.config.batch_size, shuffle=False, pad_token_id=run.config.pad_token_id
    )
    return loader, len(val)


def score(run: Any, model: nn.Module, loader: Any) -> dict[str, float]:
    trainer = Trainer(model, run.config, device="cpu", label_map=run.label_map, progress=False)
    return trainer.evaluate(loader)


def ranking(run: Any, loader: Any) -> list[dict[str, Any]]:
    """fp32, all int8, then each quantizable layer kept in fp32, most macro-F1 recovered first."""
    fp32 = run.trainer.model.eval()
    rows = [{"model": "fp32", **score(run, fp32, loader)}]
    rows.append({"model": "int8 (all)", **score(run, int8.quantize_int8(fp32), loader)})
    kept = []
    for name in int8.quantizable(fp32):
        found = score(run, int8.quantize_int8(fp32, [name]), loader)
        kept.append({"model": f"int8, {name} fp32", **found})
        print(f"  {name}: macro-F1 {found['macro_f1']:.4f}", file=sys.stderr, flush=True)
    return rows + sorted(kept, key=lambda row: -row["macro_f1"])


def cpu_times(models: dict[str, nn.Module], loader: Any, repeats: int) -> dict[str, float]:
    """Best CPU seconds of one pass over `loader`'s batches per model, timed in turns."""
    batches = [(b["input_ids"], b["attention_mask"]) for b in loader]
    best = {name: float("inf") for name in models}
    with torch.no_grad():
        for turn in range(repeats + 1):  # the first turn warms up, untimed
            for name, model in models.items():
                started = time.process_time()
                for ids, mask in batches:
                    model(ids, mask)
                if turn:
                    best[name] = min(best[name], time.process_time() - started)
    return best


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a trained run folder")
    parser.add_argument("--data", type=Path, help="posts the run was trained on")
    parser.add_argument("--time", metavar="NAMES", help="also time int8 with NAMES kept")
    parser.add_argument("--repeats", type=int, default=3, help="timed turns (default 3)")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore", UserWarning)
    torch.set_num_threads(1)
    run = load_run(args.run, device="cpu")
    loader, count = validation_loader(run, args.data)
    rows = ranking(run, loader)
    full, all_int8 = rows[0]["macro_f1"], rows[1]["macro_f1"]
    print(f"{count} validation posts of {args.run}; macro-F1 cost against fp32 in points\n")
    print("| model | macro-F1 | cost | loss |\n|---|---|---|---|")
    for row in rows:
        cost = 100 * (full - row["macro_f1"])
        print(f"| {row['model']} | {row['macro_f1']:.4f} | {cost:.2f} | {row['loss']:.4f} |")
    print(f"\nint8 (all) costs {100 * (full - all_int8):.2f} points")
    if args.time:
        keep = [n.strip() for n in args.time.split(",") if n.strip()]
        fp32 = run.trainer.model.eval()
        models = {
            "fp32": fp32,
            "int8 (all)": int8.quantize_int8(fp32),
            f"int8, {', '.join(keep)} fp32": int8.quantize_int8(fp32, keep),
        }
        seconds = cpu_times(models, loader, args.repeats)
        print(f"\nmodel alone, 1 thread, best CPU s of {args.repeats} over {count} posts:")
        for name, value in seconds.items():
            print(
                f"  {name}: {value:.2f} s, {count / value:,.0f} posts/s, "
                f"{seconds['fp32'] / value:.2f}x fp32"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
