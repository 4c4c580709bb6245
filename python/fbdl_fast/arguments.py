"""What counts as an integer argument of the public API, one rule for every module that checks
one: Python's int and numpy's integers (anything with __index__), never a bool (True is not a
batch size) nor a float (1.5 is not a length, and 2.0 is a float someone computed)."""

from __future__ import annotations

import operator
from typing import Any, Optional


def as_integer(value: Any) -> Optional[int]:
    """`value` as an int when it is an integer by the rule above, else None."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


__all__ = ["as_integer"]
