"""Magnitude pruning of a trained run's Linear layers: its accuracy and CPU
speed cost, measured; the project keeps no pruning option (docs/results.md, "Pruning").

    python benches/studies/pruning.py --run runs/debian/minilm --data data/debian/test.csv

For each amount (default 30%, 50%, 70%), every nn.Linear weight of the run's model gets
torch.nn.utils.prune.l1_unstructured (the smallest |w| of each layer set to zero), made permanent
with prune.remove. Each pruned model is scored on --data (macro-F1, accuracy) and timed on its
first --posts posts, tokenized once, as forward passes over the same padded batches (one torch
thread, the variants timed in turns, median of --repeats): dense (zeros stored as zeros, what a
pruned checkpoint runs as) and with each pruned Linear's weight as a sparse CSR matrix
(torch.sparse.mm), the one way plain torch can skip the zeros on a CPU. Prints a markdown table;
--json FILE also writes the figures.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from fbdl_fast.data import PostsDataset, load_posts, make_loader
from fbdl_fast.files import write_atomic
from fbdl_fast.reports.speed import interleaved_medians
from fbdl_fast.training.loading import load_run


class CsrLinear(nn.Module):
    """A Linear whose weight is stored as sparse CSR; the same outputs as the dense layer."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
            warnings.simplefilter("ignore", UserWarning)
            self.weight = linear.weight.detach().to_sparse_csr()
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        out = torch.sparse.mm(self.weight, flat.t()).t()  # (N, out)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], out.shape[-1])


def pruned(model: nn.Module, amount: float) -> nn.Module:
    """A copy of `model` with `amount` of every Linear weight (smallest magnitudes) zeroed."""
    copied = copy.deepcopy(model)
    for module in copied.modules():
        if isinstance(module, nn.Linear):
            prune.l1_unstructured(module, "weight", amount=amount)
            prune.remove(module, "weight")
    return copied


def with_csr(model: nn.Module) -> nn.Module:
    """A copy of `model` whose Linear layers (not MultiheadAttention's own) run as CsrLinear."""
    copied = copy.deepcopy(model)
    for module in list(copied.modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is nn.Linear:
                setattr(module, child_name, CsrLinear(child))
    return copied


def linear_sparsity(model: nn.Module) -> float:
    """The fraction of zeros over every Linear weight of `model`."""
    weights = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
    zeros = sum(int((w == 0).sum()) for w in weights)
    return zeros / max(sum(w.numel() for w in weights), 1)


def measure(
    run_path: Path, data: Path, amounts: Sequence[float], posts: int, repeats: int
) -> dict[str, Any]:
    """Scores and forward times of the run's model, unpruned and at each amount."""
    from sklearn.metrics import accuracy_score, f1_score

    torch.set_num_threads(1)
    run = load_run(run_path, device="cpu")
    found = load_posts(data, run.meta.get("data", {}).get("text_column", "text"))
    assert found.labels is not None
    truth = run.label_map.encode_all(found)
    dataset = PostsDataset.from_texts(
        run.tokenizer, found.texts, truth, max_length=run.config.max_seq_length
    )
    loader = make_loader(
        dataset, run.config.batch_size, shuffle=False, pad_token_id=run.config.pad_token_id
    )
    timed = PostsDataset.from_texts(
        run.tokenizer, found.texts[:posts], None, max_length=run.config.max_seq_length
    )
    batches = list(
        make_loader(
            timed, run.config.batch_size, shuffle=False, pad_token_id=run.config.pad_token_id
        )
    )
    base = run.trainer.model.eval()
    models = {"0%": base, **{f"{a:.0%}": pruned(base, a) for a in amounts}}
    rows: dict[str, dict[str, float]] = {}
    for name, model in models.items():
        gold, guess = [], []
        with torch.inference_mode():
            for batch in loader:
                logits = model(batch["input_ids"], batch["attention_mask"])
                guess += logits.argmax(-1).tolist()
                gold += batch["labels"].tolist()
        rows[name] = {
            "sparsity": linear_sparsity(model),
            "macro_f1": float(f1_score(gold, guess, average="macro")),
            "accuracy": float(accuracy_score(gold, guess)),
        }

    def forward(model: nn.Module) -> Any:
        def step() -> None:
            with torch.inference_mode():
                for batch in batches:
                    model(batch["input_ids"], batch["attention_mask"])

        return step

    steps = {f"dense {name}": forward(m) for name, m in models.items()}
    steps |= {f"csr {name}": forward(with_csr(m)) for name, m in models.items()}
    seconds = interleaved_medians(steps, repeats=repeats, warmup=1)
    for name, row in rows.items():
        row["dense_posts_per_s"] = posts / seconds[f"dense {name}"]
        row["csr_posts_per_s"] = posts / seconds[f"csr {name}"]
    return {"run": str(run_path), "model": run.meta["model"], "posts": posts, "rows": rows}


def table(result: dict[str, Any]) -> str:
    base = result["rows"]["0%"]
    lines = [
        f"{result['model']} ({result['run']}); forward passes over {result['posts']} posts, "
        "one thread; speed relative to the unpruned dense model",
        "",
        "| pruned | Linear zeros | macro-F1 | accuracy | dense posts/s | CSR posts/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in result["rows"].items():
        dense = row["dense_posts_per_s"] / base["dense_posts_per_s"]
        csr = row["csr_posts_per_s"] / base["dense_posts_per_s"]
        lines.append(
            f"| {name} | {row['sparsity']:.1%} | {row['macro_f1']:.3f} | {row['accuracy']:.3f} "
            f"| {row['dense_posts_per_s']:,.0f} ({dense:.2f}x) "
            f"| {row['csr_posts_per_s']:,.0f} ({csr:.2f}x) |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="trained run folder")
    parser.add_argument("--data", type=Path, required=True, help="labelled posts to score on")
    parser.add_argument("--amounts", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    parser.add_argument("--posts", type=int, default=500, help="posts per timed pass")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    if any(not 0 < a < 1 for a in args.amounts):
        parser.error(f"--amounts {args.amounts}: expected fractions strictly between 0 and 1")
    if args.posts < 1 or args.repeats < 1:
        parser.error("--posts and --repeats: expected 1 or more")
    result = measure(args.run, args.data, args.amounts, args.posts, args.repeats)
    if args.json is not None:
        write_atomic(args.json, json.dumps(result, indent=2) + "\n")
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
