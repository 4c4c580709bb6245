"""Call counters that prove a test ran the Triton path, not the reference beside it.

Each op's Triton path is one autograd.Function (ops/layer_norm.py's LayerNormFunction, ops/
attention.py's AttentionFunction, ops/focal_loss.py's FocalLossFunction); dispatch calls its
`apply` only when it chose the kernel, so counting `apply` counts kernel launches.
"""

from __future__ import annotations

from typing import Any

import pytest


def count_calls(monkeypatch: pytest.MonkeyPatch, function: type) -> list[int]:
    """A list that grows by one on each `function.apply(...)` for the rest of the test."""
    calls: list[int] = []
    original = function.apply

    def counted(*args: Any) -> Any:
        calls.append(1)
        return original(*args)

    monkeypatch.setattr(function, "apply", counted)
    return calls
