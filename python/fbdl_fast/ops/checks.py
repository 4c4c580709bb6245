"""Checks of op arguments that are plain numbers, written once for every layer that takes them.

No torch here: config.py calls these when it validates a ModelConfig, and `import
fbdl_fast.config` stays light (it imports this module inside the function that needs it).
"""

from __future__ import annotations

import math
import numbers
from typing import cast


def check_gamma(value: object, name: str = "gamma") -> float:
    """The focal loss's focusing parameter as a float: a real number (not a bool), finite and
    >= 0 (0 makes the focal loss cross-entropy).

    Raises ValueError "`name`=value is invalid; expected a number >= 0 (finite)": `name` is how
    the caller's user knows the value (``"ModelConfig.focal_gamma"``, ``"FocalLoss.gamma"``).
    The focal loss op, nn.FocalLoss and ModelConfig all check gamma here.
    """
    if type(value) is float and 0.0 <= value < math.inf:  # the common case, answered first
        return value
    if (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and cast(float, value) >= 0  # numbers.Real's stub has < and <= but no >=
    ):
        return float(value)
    raise ValueError(f"{name}={value!r} is invalid; expected a number >= 0 (finite)")


__all__ = ["check_gamma"]
