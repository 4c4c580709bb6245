"""A rough estimate of the memory a training run needs, checked before anything is allocated.

A model far too large for the machine (`--hidden-dim 1000000`, `--max-length 100000000`) would
otherwise fail in an allocation deep inside torch, with a traceback. The estimate is deliberately
rough and errs low, so that only a run that surely cannot fit is refused:

- parameters: counted exactly by building the model on torch's "meta" device (no storage);
- weights and optimizer state: parameters x 4 bytes (fp32) x (1 + 2), Adam's two moments per
  weight (gradients and temporaries come on top, and are not counted);
- activations of one batch of the longest posts: batch_size x max_seq_length x the widest layer
  x num_layers x ACTIVATIONS_PER_LAYER x 4 bytes, plus, for a model with attention, one
  batch_size x num_heads x max_seq_length^2 score matrix of 4 bytes per layer.

It is compared with the memory available to the device: on a CPU the host's (MemAvailable of
/proc/meminfo, else the free physical pages os.sysconf reports), on a GPU the card's memory.
Where neither can be read the run is not checked.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from fbdl_fast.config import ModelConfig

BYTES_PER_VALUE = 4  # fp32 weights and activations
OPTIMIZER_STATES = 2  # Adam's (and AdamW's) first and second moments, one value each per weight
ACTIVATIONS_PER_LAYER = 4  # tensors of one (batch, length, width) kept for backward, at least
ATTENTION_MODELS = ("transformer", "bert")  # architectures with (length x length) scores


@dataclass(frozen=True)
class MemoryEstimate:
    """The estimate's parts, in bytes (see the module docstring)."""

    parameters: int
    weights_and_state: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights_and_state + self.activations


def estimate(architecture: str, config: ModelConfig) -> MemoryEstimate:
    """The memory training `architecture` (a models.create_model name) with `config` needs, at
    least; builds the model on the meta device only (nothing allocated)."""
    import torch

    from fbdl_fast.models import create_model

    with torch.device("meta"):
        model = create_model(architecture, config)
    parameters = sum(p.numel() for p in model.parameters())
    width = max(config.input_dim, config.hidden_dim)
    tokens = config.batch_size * config.max_seq_length
    activations = tokens * width * config.num_layers * ACTIVATIONS_PER_LAYER
    if architecture in ATTENTION_MODELS:
        scores = config.batch_size * config.num_heads * config.max_seq_length**2
        activations += scores * config.num_layers
    return MemoryEstimate(
        parameters=parameters,
        weights_and_state=parameters * BYTES_PER_VALUE * (1 + OPTIMIZER_STATES),
        activations=activations * BYTES_PER_VALUE,
    )


def available_bytes(device: Optional[str]) -> Optional[int]:
    """Memory free for a run on `device` (None: cuda if available, else cpu); None if unknown."""
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            return None  # the device check says why
        index = int(device.partition(":")[2] or 0)
        # The card's whole memory, not mem_get_info's free share: reading that would create a
        # CUDA context on the card, in every process of a torchrun run before it picks its own.
        return int(torch.cuda.get_device_properties(index).total_memory)
    if device == "cpu":
        return host_available_bytes()
    return None  # mps: memory shared with the host, and no reading of it here


def host_available_bytes() -> Optional[int]:
    """The host's available memory: /proc/meminfo's MemAvailable, else the free physical pages."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the file counts kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def size(n: float) -> str:
    """Bytes for people: 1.5 GB, 3.2 TB (powers of 1000)."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if n < 1000:
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} EB"
