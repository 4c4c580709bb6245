"""The report of benches/gpu/gpu_check.py: results.json as given, report.md as tables.

report.md: the machine and its checks, the stages, the goals (met, missed or not measured), then
one side-by-side table per op (ours against the reference, ratios from the same run) and one for
the training steps. It depends on nothing but the standard library, so a failed install of the
package under test still gets its report.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Optional

import bytes_moved  # beside this file; its import needs only the standard library
import peer_report  # beside this file, standard library only too

Row = dict[str, Any]


def write(out: Path, results: dict[str, Any]) -> None:
    """Write results.json and report.md into `out`, each atomically."""
    _write_atomic(out / "results.json", json.dumps(results, indent=1, default=str))
    _write_atomic(out / "report.md", markdown(results))


def _write_atomic(path: Path, text: str) -> None:
    # Not fbdl_fast.files: the report is written even when the package under test is broken.
    scratch = path.with_name(f".{path.name}.tmp")
    scratch.write_text(text, encoding="utf-8")
    os.replace(scratch, path)


# ---------------------------------------------------------------------------------------------
# Goals (judged on a GPU, an H100 or an H200): each is a test over the rows of one op
# ---------------------------------------------------------------------------------------------


def _select(items: list[Row], **wanted: Any) -> list[Row]:
    """The rows whose fields equal `wanted` (a tuple value: any of its members)."""

    def matches(row: Row) -> bool:
        return all(
            row.get(key) in value if isinstance(value, tuple) else row.get(key) == value
            for key, value in wanted.items()
        )

    return [row for row in items if matches(row)]


def _dropout_cost(rows: list[Row]) -> list[float]:
    """ours(dropout 0.1) / ours(dropout 0) for each problem measured both ways."""
    plain = {
        (r["length"], r["head_dim"], r["padded"], r["mode"]): r["ours_ms"]
        for r in rows
        if r["dropout"] == 0
    }
    return [
        r["ours_ms"] / plain[key]
        for r in rows
        if r["dropout"] and (key := (r["length"], r["head_dim"], r["padded"], r["mode"])) in plain
    ]


GOALS: list[tuple[str, str, Callable[[list[Row]], list[float]], str, float]] = [
    # (goal, op, the measured values, "min >=" or "max <=", threshold)
    (
        "LayerNorm fwd+bwd vs torch, bf16 autocast, N 768/1024",
        "layer_norm",
        lambda rows: [
            r["speedup"]
            for r in _select(
                rows, mode="forward+backward", precision="bf16-autocast", hidden=(768, 1024)
            )
        ],
        ">=",
        1.5,
    ),
    (
        "LayerNorm fwd+bwd vs torch, bf16 autocast, N 4096/8192",
        "layer_norm",
        lambda rows: [
            r["speedup"]
            for r in _select(
                rows, mode="forward+backward", precision="bf16-autocast", hidden=(4096, 8192)
            )
        ],
        ">=",
        1.2,
    ),
    (
        "LayerNorm forward, % of the device copy's GB/s (M 16384/65536)",
        "layer_norm",
        lambda rows: [
            r["ours_pct_of_copy"]
            for r in _select(rows, mode="forward", rows=(16384, 65536))
            if "ours_pct_of_copy" in r
        ],
        ">=",
        85.0,
    ),
    (
        "Focal loss fwd+bwd vs the composition, C 32000/50257",
        "focal_loss",
        lambda rows: [
            r["speedup"] for r in _select(rows, mode="forward+backward", classes=(32000, 50257))
        ],
        ">=",
        2.5,
    ),
    (
        "Focal loss fwd+bwd peak memory / the composition's, C 32000/50257",
        "focal_loss",
        lambda rows: [
            r["memory_ratio"]
            for r in _select(rows, mode="forward+backward", classes=(32000, 50257))
            if r.get("memory_ratio") is not None
        ],
        "<=",
        0.25,
    ),
    (
        "Focal loss fp16 x GradScaler: gradient entries lost to underflow",
        "focal_loss",
        lambda rows: [
            r["errors"]["underflow"]
            for r in _select(rows, precision="fp16-scaled", mode="forward+backward")
        ],
        "<=",
        0,
    ),
    (
        "Attention fwd+bwd vs SDPA's best, padded, L 512/2048, D 64/128",
        "attention",
        lambda rows: [
            r["speedup"]
            for r in _select(
                rows,
                mode="forward+backward",
                padded=True,
                dropout=0.0,
                length=(512, 2048),
                head_dim=(64, 128),
            )
        ],
        ">=",
        1.3,
    ),
    (
        "Attention fwd+bwd vs SDPA's best, dense",
        "attention",
        lambda rows: [
            r["speedup"] for r in _select(rows, mode="forward+backward", padded=False, dropout=0.0)
        ],
        ">=",
        1.0,
    ),
    (
        "Attention: time with dropout 0.1 / without",
        "attention",
        _dropout_cost,
        "<=",
        1.2,
    ),
    (
        "MiniLM fine-tuning step vs HF transformers (bf16 autocast)",
        "training_peers",
        lambda rows: [
            r["speedup_vs_eager"]
            for r in _select(rows, model="minilm")
            if r.get("speedup_vs_eager") is not None
        ],
        ">=",
        1.3,
    ),
]


def goals(results: dict[str, Any]) -> list[Row]:
    """Each goal with the worst measured value against torch eager (or the op's own yardstick)
    and, where peer rows exist for it, against the best peer (named): a goal is met only if it
    holds against both."""
    verdicts = []
    rows = results.get("rows", {})
    for goal, op, values_of, sense, threshold in GOALS:
        peer = peer_report.peer_verdict(goal, rows)
        named = f"{goal} {sense} {threshold:g}"
        if peer is not None:
            named += f" (vs the best peer {peer['sense']} {peer['threshold']:g})"
        try:
            values = values_of(rows.get(op, []))
        except (KeyError, TypeError) as error:  # a row without a figure: say so, keep the report
            verdicts.append({"goal": goal, "worst": None, "verdict": f"error: {error!r}"})
            continue
        verdict = {"goal": named, "worst": None, "count": len(values), "peer": peer}
        if values:
            verdict["worst"] = min(values) if sense == ">=" else max(values)
        verdict["verdict"] = _verdict(verdict["worst"], sense, threshold, peer)
        if results.get("mode") == "cpu-smoke" and verdict["verdict"] != "not measured":
            verdict["verdict"] = "not judged on a CPU"  # the goals are for a GPU
        verdicts.append(verdict)
    return verdicts


def _verdict(worst: Optional[float], sense: str, threshold: float, peer: Optional[Row]) -> str:
    if worst is None and not (peer and peer["count"]):
        return "not measured"
    if worst is not None and not (worst >= threshold if sense == ">=" else worst <= threshold):
        return "missed"
    if peer is None:
        return "met"
    if not peer["count"]:
        return "not measured against the peers"
    return "met" if peer["met"] else f"missed against {peer['peer']}"


# ---------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _table(headers: list[str], lines: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(_fmt(cell) for cell in line) + " |" for line in lines]
    return [*out, ""]


def _pair(row: Row, a: str, b: str, digits: int = 3) -> str:
    return f"{_fmt(row.get(a), digits)} / {_fmt(row.get(b), digits)}"


def _max_error(errors: Optional[dict[str, Any]], names: tuple[str, ...]) -> Optional[float]:
    values = [errors[name] for name in names if errors and errors.get(name) is not None]
    return max(values) if values else None


def _machine(results: dict[str, Any]) -> list[str]:
    c = results.get("checks", {})
    ceilings = c.get("ceilings") or {}
    lines = [
        "# fbdl_fast GPU check",
        "",
        f"Mode **{results.get('mode')}**, started {results.get('started')}, "
        f"finished {results.get('finished')}, {_fmt(results.get('elapsed_s'))} s in all.",
        "",
        f"- GPU: {c.get('gpu') or 'none'} (capability {c.get('capability')}, "
        f"{c.get('multiprocessors')} SMs, {c.get('memory_gib')} GiB); CUDA {c.get('cuda_version')}",
        f"- nvidia-smi: {c.get('nvidia_smi')}",
        f"- measured ceilings: device copy {_fmt(ceilings.get('copy_gbps'), 4)} GB/s, "
        f"bf16 matmul {_fmt(ceilings.get('bf16_matmul_tflops'), 4)} TFLOP/s"
        + (f" ({ceilings['error']})" if "error" in ceilings else ""),
        f"- Python {c.get('python')}, torch {c.get('torch')}, triton {c.get('triton')}, "
        f"numpy {c.get('numpy')}, fbdl_fast {c.get('fbdl_fast')} "
        f"from {c.get('fbdl_fast_location')}",
        "- peers: "
        + (", ".join(f"{k} {v}" for k, v in (c.get("peer_packages") or {}).items()) or "-"),
        f"- C compiler {c.get('c_compiler')}, Python.h {c.get('python_h')}, "
        f"environment {c.get('environment')}",
        f"- Triton kernels compiled: {results.get('compiled_kernels', '-')}",
        "",
    ]
    if results.get("mode") == "cpu-smoke":
        lines += [
            "CPU smoke run: the cuda tests skip and each bench times PyTorch's fallbacks once on "
            "tiny shapes. Its figures prove the pipeline and the report, not any speed.",
            "",
        ]
    for problem in results.get("problems", []):
        lines.append(f"**Cannot run:** {problem}")
    return lines


def markdown(results: dict[str, Any]) -> str:
    """The whole report: summary() then one table per op and the training steps."""
    lines = [summary(results)]
    rows = results.get("rows", {})
    lines += peer_report.sections(rows)
    lines += _layer_norm(rows.get("layer_norm", []))
    lines += _focal_loss(rows.get("focal_loss", []))
    lines += _attention(rows.get("attention", []))
    lines += _models(rows.get("models", []))
    lines += _autotune(rows)
    lines += bytes_moved.report_section(results.get("bytes_moved"))
    return "\n".join(lines) + "\n"


def summary(results: dict[str, Any]) -> str:
    """The machine, the stages, each failed test and the goals: what gpu_check prints last."""
    lines = _machine(results)
    lines += ["## Stages", ""]
    lines += [
        "In the order of their figures' value: 1 correctness on CUDA, 2 the training step vs "
        "HF, 3 each op vs its best peer, 4 the rest (cut at its budget, rows kept). Planned: "
        f"{_fmt(results.get('planned_s'))} s.",
        "",
    ]
    lines += _table(
        ["rank", "stage", "status", "seconds (budget)", "tests"],
        [
            [
                s.get("rank"),
                s["name"],
                s["status"],
                f"{_fmt(s['elapsed_s'])} ({s['budget_s']:g})",
                ", ".join(f"{n} {k}" for k, n in s.get("tests", {}).items() if k != "junit"),
            ]
            for s in results.get("stages", [])
        ],
    )
    for stage, junit in results.get("junit", {}).items():
        for failed in (junit or {}).get("failed", []):
            lines.append(f"- {stage} FAILED `{failed['test']}`: {failed['message']}")
    if any((junit or {}).get("failed") for junit in results.get("junit", {}).values()):
        lines.append("")
    lines += ["## Goals", ""]
    lines += _table(
        ["goal", "ours / torch eager (worst)", "rows", "ours / best peer (worst)", "peer rows",
         "verdict"],
        [
            [g["goal"], g["worst"], g.get("count"), _peer_cell(g.get("peer")),
             (g.get("peer") or {}).get("count"), g["verdict"]]
            for g in goals(results)
        ],
    )  # fmt: skip
    return "\n".join(lines)


def _peer_cell(peer: Optional[Row]) -> str:
    if not peer:
        return "-"
    if peer["worst"] is None:
        return "not measured"
    return f"{_fmt(peer['worst'])} ({peer['peer']})"


def _layer_norm(rows: list[Row]) -> list[str]:
    if not rows:
        return []
    return [
        "## LayerNorm: fbdl_fast vs torch.nn.LayerNorm",
        "",
        *_table(
            [
                "M",
                "N",
                "precision",
                "pass",
                "ms ours / torch",
                "speedup",
                "GB/s ours / torch",
                "% of copy",
                "host us ours / torch",
                "peak MiB ours / torch",
                "max err (y,dx,dw,db)",
            ],
            [
                [
                    r["rows"],
                    r["hidden"],
                    r["precision"],
                    r["mode"],
                    _pair(r, "ours_ms", "torch_ms"),
                    f"{r['speedup']:.2f}x",
                    _pair(r, "ours_gbps", "torch_gbps", 4),
                    r.get("ours_pct_of_copy"),
                    _pair(r, "ours_host_us", "torch_host_us"),
                    _pair(r, "ours_peak_mib", "torch_peak_mib", 4),
                    _max_error(r.get("max_abs_error"), ("y", "dx", "dw", "db")),
                ]
                for r in rows
            ],
        ),
    ]


def _focal_loss(rows: list[Row]) -> list[str]:
    if not rows:
        return []
    return [
        "## Focal loss: fused vs the torch composition",
        "",
        *_table(
            [
                "N",
                "C",
                "precision",
                "pass",
                "ms ours / ref",
                "speedup",
                "GB/s ours",
                "host us ours / ref",
                "peak MiB ours / ref",
                "loss err",
                "grad err",
                "underflow",
            ],
            [
                [
                    r["rows"],
                    r["classes"],
                    r["precision"],
                    r["mode"],
                    _pair(r, "ours_ms", "reference_ms"),
                    f"{r['speedup']:.2f}x",
                    r.get("ours_gbps"),
                    _pair(r, "ours_host_us", "reference_host_us"),
                    _pair(r, "ours_peak_mib", "reference_peak_mib", 4),
                    r["errors"].get("loss"),
                    r["errors"].get("grad"),
                    r["errors"].get("underflow"),
                ]
                for r in rows
            ],
        ),
    ]


def _attention(rows: list[Row]) -> list[str]:
    if not rows:
        return []
    return [
        "## Attention: fused vs SDPA (best pinned backend)",
        "",
        "TFLOP/s count the nominal dense work (4·B·H·L²·D forward, 3.5x that forward+backward).",
        "",
        *_table(
            [
                "B",
                "L",
                "D",
                "mask",
                "dropout",
                "pass",
                "ms ours / SDPA",
                "SDPA backend",
                "speedup",
                "TFLOP/s ours",
                "host us ours / SDPA",
                "peak MiB ours / SDPA",
                "max err (out,dq,dk,dv)",
            ],
            [
                [
                    r["batch"],
                    r["length"],
                    r["head_dim"],
                    "padded" if r["padded"] else "dense",
                    r["dropout"],
                    r["mode"],
                    _pair(r, "ours_ms", "sdpa_ms"),
                    r["sdpa_best"],
                    f"{r['speedup']:.2f}x",
                    r.get("ours_tflops"),
                    _pair(r, "ours_host_us", "sdpa_host_us"),
                    _pair(r, "ours_peak_mib", "sdpa_peak_mib", 4),
                    _max_error(r.get("errors"), ("out", "dq", "dk", "dv")),
                ]
                for r in rows
            ],
        ),
    ]


# What identifies a problem in each op's rows, to set an autotuned row beside the rule's.
_PROBLEM_KEYS = {
    "layer_norm": ("rows", "hidden", "precision", "mode"),
    "attention": ("batch", "length", "head_dim", "padded", "dropout", "mode"),
}


def _autotune(rows: dict[str, list[Row]]) -> list[str]:
    """The autotune stage's rows (`op+autotune`) beside the rule's rows of the same problem."""
    lines = []
    for op, keys in _PROBLEM_KEYS.items():
        rule = {tuple(r.get(k) for k in keys): r for r in rows.get(op, [])}
        for tuned in rows.get(f"{op}+autotune", []):
            problem = tuple(tuned.get(k) for k in keys)
            rule_ms, tuned_ms = rule.get(problem, {}).get("ours_ms"), tuned.get("ours_ms")
            ratio = f"{rule_ms / tuned_ms:.2f}x" if rule_ms and tuned_ms else "n/a"
            named = " ".join(f"{k}={v}" for k, v in zip(keys, problem))
            speedup = f"{tuned.get('speedup', 0):.2f}x"
            lines.append([op, named, rule_ms, tuned_ms, ratio, speedup])
    if not lines:
        return []
    headers = ["op", "problem", "ms rule", "ms autotune", "rule / autotune", "vs reference"]
    return [
        "## Autotune vs the rule (FBDL_FAST_AUTOTUNE=1)",
        "",
        "The same benches with autotuned launches (the best candidate, the rule's first).",
        "",
        *_table(headers, lines),
    ]


def _models(rows: list[Row]) -> list[str]:
    if not rows:
        return []
    return [
        "## Training steps (forward, loss, backward, AdamW), vs the reference fp32 step",
        "",
        "Parity, checked before timing: the three models' patched logits against the reference's "
        "(max abs difference); the BERT encoders' loss and worst gradient against float64, each "
        "gradient's error relative to its largest entry.",
        "",
        *_table(
            ["model", "variant", "batch", "step ms (p20-p80)", "posts/s", "speedup", "parity"],
            [
                [
                    r["model"],
                    r["variant"],
                    "x".join(map(str, r["batch"])),
                    f"{r['step_ms']:.3g} ({r['step_p20_ms']:.3g}-{r['step_p80_ms']:.3g})",
                    r.get("posts_per_s"),
                    f"{r['speedup']:.2f}x",
                    _model_parity(r),
                ]
                for r in rows
            ],
        ),
    ]


def _model_parity(row: Row) -> str:
    if "errors" in row:  # the BERT rows: loss and gradients against float64
        return f"loss {_fmt(row['errors'].get('loss'))}, grad {_fmt(row['errors'].get('grad'))}"
    return f"logit diff {_fmt(row.get('max_logit_diff_patched_vs_reference'))}"
