"""`fbdl-fast export`: write a run's model as ONNX, dynamic int8 or int8 ONNX for CPU serving."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from fbdl_fast.cli.common import HelpFormatter, UsageError, add_threads_option, say
from fbdl_fast.runs import PROG, locked, resolve_output
from fbdl_fast.training.loading import SERVED_FORMATS, load_run


def cmd_export(args: argparse.Namespace) -> int:
    from fbdl_fast.serving import provenance

    target = provenance.output_path(Path(args.run), args.format)  # an unknown format: error first
    if args.checkpoint in SERVED_FORMATS:
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
    # The run's lock from before the load to after the stamp: a train of this folder cannot
    # replace its checkpoint meanwhile (and the export checks the bytes it loaded are still there).
    with locked(resolve_output(Path(args.run))):
        return _export(args, target, keep)


def _export(args: argparse.Namespace, target: Path, keep: list[str]) -> int:
    started = time.perf_counter()

    def stage(message: str) -> None:
        """A stage as it starts, after the seconds since the export began."""
        say(args, f"[{time.perf_counter() - started:5.1f}s] {message}")

    stage(f"loading the run {args.run} ...")  # the exporters' imports (torch.onnx) count here
    from fbdl_fast.serving import int8, onnx

    run = load_run(Path(args.run), checkpoint=args.checkpoint, device="cpu", threads=args.threads)
    if args.format in ("onnx", "onnx-int8"):
        stage(f"exporting {run.checkpoint} to {target}")
        int8_weights = args.format == "onnx-int8"
        done = onnx.export_onnx(run, target, say=stage, int8=int8_weights)
        checked = (
            f"int8 weights (onnxruntime's quantize_dynamic), its logits within "
            f"{done['int8_max_abs_diff']:.2g} of torch's fp32 ones on a padded batch; use it "
            f"with `{PROG} predict --run {args.run} --checkpoint onnx-int8`"
            if int8_weights
            else f"onnxruntime's logits within {done['max_abs_diff']:.2g} of torch's on a "
            "padded batch"
        )
        print(
            f"wrote {target} ({done['bytes'] / 1e6:.1f} MB, {done['exporter']} exporter) in "
            f"{time.perf_counter() - started:.1f}s: {checked}"
        )
    else:
        stage(f"exporting {run.checkpoint} to {target} ...")
        done = int8.export_int8(run, target, keep)
        kept = f"; kept in fp32: {', '.join(done['kept_fp32'])}" if done["kept_fp32"] else ""
        print(
            f"wrote {target} ({done['bytes'] / 1e6:.1f} MB; fp32 weights "
            f"{done['fp32_bytes'] / 1e6:.1f} MB): dynamic int8 "
            f"{', '.join(done['quantized']) or 'nothing (no Linear or LSTM)'}{kept}; use it with "
            f"`{PROG} predict --run {args.run} --checkpoint int8`"
        )
    return 0


def add_parser(subparsers: Any) -> None:
    """Add `export` and its options to the `fbdl-fast` parser."""
    p = subparsers.add_parser(
        "export",
        formatter_class=HelpFormatter,
        help="write a run's model as ONNX, dynamic int8 or int8 ONNX for CPU serving",
        description="Write the run's model into its folder: onnx -> model.onnx (inputs input_ids "
        "and attention_mask, int64 (batch, length), the mask 1 on real tokens; output logits; "
        "dynamic batch and sequence axes; checked in onnxruntime against torch before it is "
        "written; needs onnx and onnxruntime), int8 -> model.int8.pt (Linear and LSTM layers "
        "in dynamic int8), onnx-int8 -> model.int8.onnx (the ONNX file with its weights in int8 "
        "per output channel, embeddings included, by onnxruntime's quantize_dynamic); "
        "`predict` and `evaluate` run each with --checkpoint onnx|int8|onnx-int8, on a CPU.",
    )
    p.add_argument("--run", required=True, help="run folder written by `fbdl-fast train`")
    p.add_argument("--format", required=True, metavar="onnx|int8|onnx-int8", help="what to write")
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
    add_threads_option(p)
    p.add_argument("--quiet", action="store_true", help="no progress messages on stderr")
    p.set_defaults(func=cmd_export)
