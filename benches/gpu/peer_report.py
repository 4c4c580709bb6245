"""The report's peer tables: for each op, ours beside every peer a user would pick instead
(torch eager, torch.compile, Liger-Kernel, SDPA's backends, Hugging Face transformers), one line
a variant, a peer that could not run saying why. Standard library only, as gpu_report."""

from __future__ import annotations

from typing import Any, Optional

Row = dict[str, Any]

# op: (title, the fields that name a problem)
PEER_OPS = {
    "training_peers": (
        "Training step vs Hugging Face transformers (bf16 autocast, same weights)",
        ("model", "batch", "real_tokens"),
    ),
    "layer_norm_peers": ("LayerNorm vs its peers", ("rows", "hidden", "precision")),
    "focal_loss_peers": ("Focal loss vs its peers", ("rows", "classes", "gamma", "precision")),
    "attention_peers": (
        "Padded attention vs its peers",
        ("batch", "heads", "length", "head_dim", "dtype"),
    ),
}


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    if isinstance(value, list):
        return "x".join(map(str, value))
    return str(value).replace("|", "/")


def _ratio(slower: Optional[float], faster: Optional[float]) -> Optional[float]:
    return slower / faster if slower and faster else None


def variant_lines(row: Row) -> list[list[str]]:
    """One line a variant: name, ms (p20-p80), per s, peak MiB, first call s, error, its time
    over ours; 'not measured: why' in place of the figures for one that did not run."""
    ours_ms = row.get("variants", {}).get(row.get("ours") or "", {}).get("ms")
    lines = []
    for name, v in row.get("variants", {}).items():
        label = f"**{name}**" if name == row.get("ours") else name
        if "not_measured" in v:
            lines.append([label, v["not_measured"], "-", "-", "-", "-", "-"])
            continue
        timing = f"{_fmt(v.get('ms'))} ({_fmt(v.get('p20_ms'))}-{_fmt(v.get('p80_ms'))})"
        vs = _ratio(v.get("ms"), ours_ms)
        lines.append([
            label, timing, _fmt(v.get("per_s"), 4), _fmt(v.get("peak_mib"), 4),
            _fmt(v.get("first_call_s")), _fmt(v.get("error"), 2),
            f"{vs:.2f}x" if vs else "-",
        ])  # fmt: skip
    return lines


def section(op: str, rows: list[Row]) -> list[str]:
    """The markdown of one op's peer rows: a heading, then a table a problem and pass."""
    if not rows:
        return []
    title, keys = PEER_OPS[op]
    lines = [
        f"## {title}",
        "",
        "Each variant timed in turns with ours (median, p20-p80 ms); 'first call s' is its first "
        "call, compile included; 'error' is relative to float64 (the training step: its first "
        "loss against its family's fp32 loss); 'vs ours' is its time over ours (above 1: ours "
        "is faster). Ours in bold.",
        "",
    ]
    headers = ["variant", "ms (p20-p80)", "per s", "peak MiB", "first call s", "error", "vs ours"]
    for row in rows:
        problem = ", ".join(f"{k} {_fmt(row.get(k))}" for k in keys if k in row)
        mode = f", {row['mode']}" if "mode" in row else ""
        best = row.get("best_peer") or "none measured"
        lines += [
            f"**{problem}{mode}**: best peer {best}; ours / {row.get('eager')} "
            f"{_fmt(row.get('speedup_vs_eager'))}x, ours / best peer "
            f"{_fmt(row.get('speedup_vs_best_peer'))}x, peak memory ours / best peer "
            f"{_fmt(row.get('memory_vs_best_peer'))}"
            + (f"; encoder errors {_fmt_errors(row['encoder_errors'])}"
               if row.get("encoder_errors") else ""),
            "",
            "| " + " | ".join(headers) + " |",
            "|" + "---|" * len(headers),
            *("| " + " | ".join(line) + " |" for line in variant_lines(row)),
            "",
        ]  # fmt: skip
    return lines


def _fmt_errors(errors: dict[str, float]) -> str:
    return ", ".join(f"{name} {_fmt(value, 2)}" for name, value in errors.items())


def sections(rows: dict[str, list[Row]]) -> list[str]:
    """Every peer op's section, in the stages' order of value."""
    lines: list[str] = []
    for op in PEER_OPS:
        lines += section(op, rows.get(op, []))
    return lines


# ---------------------------------------------------------------------------------------------
# The goals against the best peer: a goal of gpu_report.GOALS is met only if it also holds here
# ---------------------------------------------------------------------------------------------


def _select(rows: list[Row], **wanted: Any) -> list[Row]:
    return [
        r for r in rows
        if all(r.get(k) in v if isinstance(v, tuple) else r.get(k) == v for k, v in wanted.items())
    ]  # fmt: skip


def _speedups(op_rows: list[Row], **wanted: Any) -> list[tuple[float, str]]:
    return [
        (r["speedup_vs_best_peer"], r["best_peer"])
        for r in _select(op_rows, **wanted)
        if r.get("speedup_vs_best_peer") is not None
    ]


def _memory(op_rows: list[Row], **wanted: Any) -> list[tuple[float, str]]:
    return [
        (r["memory_vs_best_peer"], r["best_peer"])
        for r in _select(op_rows, **wanted)
        if r.get("memory_vs_best_peer") is not None
    ]


FWD_BWD = "forward+backward"
# gpu_report goal name: (peer op, its values against the best peer with that peer's name, sense,
# threshold). The project's goals against the peers; where it gives none, the goal's own threshold.
PEER_GOALS: dict[str, tuple[str, Any, str, float]] = {
    "LayerNorm fwd+bwd vs torch, bf16 autocast, N 768/1024": (
        "layer_norm_peers", lambda r: _speedups(r, mode=FWD_BWD, hidden=(768, 1024)), ">=", 1.3,
    ),
    "LayerNorm fwd+bwd vs torch, bf16 autocast, N 4096/8192": (
        "layer_norm_peers", lambda r: _speedups(r, mode=FWD_BWD, hidden=(4096, 8192)), ">=", 1.2,
    ),
    "Focal loss fwd+bwd vs the composition, C 32000/50257": (
        "focal_loss_peers",
        lambda r: _speedups(r, mode=FWD_BWD, classes=(32000, 50257), gamma=2.0), ">=", 1.5,
    ),
    "Focal loss fwd+bwd peak memory / the composition's, C 32000/50257": (
        "focal_loss_peers",
        lambda r: _memory(r, mode=FWD_BWD, classes=(32000, 50257), gamma=2.0), "<=", 0.5,
    ),
    "Attention fwd+bwd vs SDPA's best, padded, L 512/2048, D 64/128": (
        "attention_peers", lambda r: _speedups(r, mode=FWD_BWD, length=(512, 2048)), ">=", 1.2,
    ),
    "MiniLM fine-tuning step vs HF transformers (bf16 autocast)": (
        "training_peers", lambda r: _speedups(r, model="minilm"), ">=", 1.3,
    ),
}  # fmt: skip


def peer_verdict(goal: str, rows: dict[str, list[Row]]) -> Optional[Row]:
    """The worst value of `goal` against the best peer, the peer it was, how many rows and
    whether it holds; None for a goal that has no peer rows to hold against."""
    if goal not in PEER_GOALS:
        return None
    op, values_of, sense, threshold = PEER_GOALS[goal]
    values = values_of(rows.get(op, []))
    if not values:
        return {"worst": None, "peer": None, "count": 0, "met": None, "threshold": threshold,
                "sense": sense}  # fmt: skip
    pick = min if sense == ">=" else max
    worst, peer = pick(values, key=lambda pair: pair[0])
    met = worst >= threshold if sense == ">=" else worst <= threshold
    return {"worst": worst, "peer": peer, "count": len(values), "met": met,
            "threshold": threshold, "sense": sense}  # fmt: skip
