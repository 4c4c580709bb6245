"""What torch.compile costs the GPU check's training stage, measured on the CPU: the first call
(compile included, empty inductor cache) of one bf16 training step of HF's
BertForSequenceClassification and of fbdl_fast's patched BERT, at a tiny width and 2, 6 and 12
layers (MiniLM's and bert-base's depth), each in a fresh process. docs/gpu-budget.md plans the
stages from these figures.

    .venv/bin/python benches/gpu/compile_cost.py [--layers 2 6 12]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def first_call_seconds(variant: str, layers: int) -> float:
    """In this process: build `variant` ("HF" or "ours") at `layers` and time its first step."""
    sys.path[:0] = [str(HERE), str(HERE.parent)]  # peers, bench_hf_training; measure
    import torch

    import bench_hf_training as hf_bench
    import peers
    from fbdl_fast import patch
    from fbdl_fast.reports.speed import training_step

    shape = (32, layers, 2, 64)
    ids, mask, labels = hf_bench.real_post_batch(4)
    hf = hf_bench.hf_model(shape)
    if variant == "HF":
        model = hf_bench.HfLogits(hf)
    else:
        model = hf_bench.ours_model(shape, hf)
        patch(model)
    step = training_step(peers.compiled(model), ids, mask, labels, amp_dtype=torch.bfloat16)
    started = time.perf_counter()
    step()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[2, 6, 12])
    parser.add_argument("--one", nargs=2, metavar=("VARIANT", "LAYERS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:  # the child: one measurement, printed as JSON
        print(json.dumps(first_call_seconds(args.one[0], int(args.one[1]))))
        return
    for layers in args.layers:
        for variant in ("HF", "ours"):
            with tempfile.TemporaryDirectory() as cache:
                env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache, "OMP_NUM_THREADS": "1"}
                done = subprocess.run(
                    [sys.executable, __file__, "--one", variant, str(layers)],
                    env=env, capture_output=True, text=True, check=True,
                )  # fmt: skip
            seconds = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{variant:5s} {layers:3d} layers: first call {seconds:6.1f} s", flush=True)


if __name__ == "__main__":
    main()
