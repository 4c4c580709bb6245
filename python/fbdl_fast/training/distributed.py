"""torch.distributed for the trainer: start-up from torchrun's environment, ranks, reductions.

    ctx = init_from_env()          # under torchrun: init_process_group (gloo on CPU, nccl on CUDA)
    ...                            # Trainer sees the process group and wraps the model in DDP
    teardown(ctx)                  # destroy the group this module started

Without torchrun (no WORLD_SIZE in the environment, or WORLD_SIZE=1) nothing is started and every
helper answers as a single process would: rank 0 of 1, reductions return their input. So the same
code path serves one process and many.

Reductions sum (never ReduceOp.AVG, which gloo lacks on older torch): callers reduce sums and
counts and divide afterwards, which is also what makes a mean over uneven shards exact.

teardown must free the group, not only unregister it. A gloo worker thread lets go of a finished
collective (and of the tensors it holds, some made in Python) just after it completes; in a group
left alive that can come after the main thread has begun to exit the interpreter. Letting go of a
tensor made in Python takes the GIL, which a finalizing interpreter answers by ending the thread,
and ending it there aborts the process: "terminate called without an active exception" after the
last epoch (a rank's core dump: ~AsyncBarrierWork -> ~AsyncAllreduceWork ->
TensorImpl::decref_pyobject -> take_gil -> pthread_exit -> std::terminate). Freeing the group joins
those threads while the interpreter is alive. What kept the group alive was
torch.distributed.nn.functional, whose functions take `group=group.WORLD` as a default argument,
evaluated when the module is imported: DistributedDataParallel imports it (through torch._dynamo)
the first time a model is wrapped, after the group exists, and the defaults then held the group
to the end. init_from_env imports it before it creates the group, while WORLD is still None. A
DistributedDataParallel wrapper holds the group too: drop it before teardown. Measured on a
2-core machine with a CPU-bound job beside it: two gloo ranks that train through DDP, all-reduce
a tensor they keep and exit (rank 0 a second after rank 1) aborted 1 time in 40 with the group
kept alive by the module and 0 in 40 with it imported first; with the DDP wrapper still alive at
teardown, 5 in about 50.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: rank, world size, device, and who started the group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: Optional[torch.device] = None  # None: the caller's choice (single process)
    started_here: bool = False  # True when init_from_env created the process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(
            f"environment variable {name}={value!r} is not an integer; torchrun sets it to one"
        ) from None


def init_from_env(
    device: Optional[str] = None, timeout_s: float = 600.0, backend: Optional[str] = None
) -> DistContext:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).

    device: "cpu", "cuda" ... as the user asked; None picks cuda:LOCAL_RANK when CUDA is there.
    The backend follows the device: nccl for CUDA, gloo for the CPU (override with `backend`).
    A single process (no WORLD_SIZE, or 1) starts nothing and gets DistContext(device=None).
    """
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size <= 1:
        return DistContext()
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if use_cuda:
        if device is not None and ":" in device:
            raise ValueError(
                f"--device {device!r} names one GPU, but under torchrun each process takes "
                f"cuda:LOCAL_RANK; pass --device cuda"
            )
        torch.cuda.set_device(local_rank)
        chosen = torch.device("cuda", local_rank)
    else:
        chosen = torch.device("cpu")
    backend = backend or ("nccl" if use_cuda else "gloo")
    started = False
    if not dist.is_initialized():
        _import_group_defaults()
        dist.init_process_group(
            backend=backend,
            init_method="env://",
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
        started = True
    return DistContext(rank, world_size, local_rank, chosen, started)


def _import_group_defaults() -> None:
    """Import, before the default group exists, the torch modules that capture it at import time
    (as default arguments), so that they capture None and destroy_process_group frees the group.

    torch.distributed.nn.functional is the one found (torch 2.15: `group=group.WORLD` in each
    function's signature); DistributedDataParallel imports it on first use, through
    torch._dynamo, so this moves that import earlier rather than adding one.
    """
    import torch.distributed.nn.functional  # noqa: F401


def teardown(ctx: DistContext) -> None:
    """Destroy the process group if init_from_env started it (others own theirs). Call it once
    the Trainer that wrapped its model in DistributedDataParallel is gone: the wrapper holds the
    group, which then outlives this call (see the module's docstring)."""
    if ctx.started_here and dist.is_initialized():
        # No rank tears down while another is still in a collective with it.
        dist.barrier()
        dist.destroy_process_group()


def world_size() -> int:
    """Processes in the default group; 1 when torch.distributed is not running."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank in the default group; 0 when torch.distributed is not running."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """True on the process that writes files and logs (rank 0, or the only process)."""
    return rank() == 0


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over all ranks in place (every rank gets the same result); returns it."""
    if world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier() -> None:
    """Wait for every rank (no-op for a single process)."""
    if world_size() > 1:
        dist.barrier()


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank ([obj] for a single process)."""
    if world_size() <= 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s `obj` on every rank (picklable objects; no-op for a single process)."""
    if world_size() <= 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


__all__ = [
    "DistContext",
    "all_gather_object",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "init_from_env",
    "is_main",
    "rank",
    "teardown",
    "world_size",
]
