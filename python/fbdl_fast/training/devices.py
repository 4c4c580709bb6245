"""Which device names a run may train or predict on: one check for `train`, `load_run` and the
command line, so that a name torch cannot parse, or a GPU this machine lacks, is one line
naming it instead of torch's own error from wherever the device is first used."""

from __future__ import annotations

from typing import Optional


def check_device(name: Optional[str]) -> None:
    """ValueError unless `name` is a device this machine has (None: the default), naming it
    and what is accepted."""
    if name is None:
        return
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device={name!r} is not supported; accepted: cpu, cuda, cuda:N, mps")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(
                f"device={name}: CUDA is not available on this machine (torch "
                f"{torch.__version__}); use device=cpu"
            )
        if device.index is not None and device.index >= count:
            raise ValueError(f"device={name}: this machine has {count} GPU(s), cuda:0 first")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={name}: MPS is not available on this machine; use device=cpu")


__all__ = ["check_device"]
