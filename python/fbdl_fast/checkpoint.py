"""Checkpoint files: written atomically, read back with errors that name the file.

A checkpoint is a plain dict saved with torch.save and read with `weights_only=True` (no arbitrary
pickles are executed when loading). The trainer decides what goes in it (see Trainer.state_dict);
this module owns the file format: the `format_version` key, the atomic write, the RNG snapshot
and the checks on load.

A checkpoint may also hold `calibration` (written after training by `fbdl-fast train
--calibrate`, see fbdl_fast.calibration): a dict whose "temperature" divides the logits of these
weights before the softmax. `temperature_of` reads it; checkpoints without it have T = 1.
"""

from __future__ import annotations

import io
import os
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any, Callable, TypeVar, Union

import numpy as np
import torch

from fbdl_fast.manifest import parse_verified, write_recorded

FORMAT_VERSION = 1
PathLike = Union[str, "os.PathLike[str]"]
T = TypeVar("T")


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, corrupt, or not one of ours."""


def save_checkpoint(state: dict[str, Any], path: PathLike) -> Path:
    """Write `state` (plus format_version) to `path` atomically; in a run folder with a
    manifest, its SHA-256 is recorded there (fbdl_fast.manifest.write_recorded)."""
    payload = {"format_version": FORMAT_VERSION, **state}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_recorded(path, buffer.getvalue())  # the bytes hashed are the bytes written
    return Path(path)


# torch.save writes a zip archive; anything else (text, a legacy pickle, random bytes) is not ours.
_ZIP_MAGIC = b"PK\x03\x04"


def load_checkpoint(path: PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by save_checkpoint; CheckpointError names the file on failure,
    fbdl_fast.manifest.IntegrityError when its bytes are not those its run's manifest recorded."""
    return read_checkpoint(path, map_location)[0]


def read_checkpoint(path: PathLike, map_location: Any = "cpu") -> tuple[dict[str, Any], str]:
    """(the checkpoint at `path`, the SHA-256 of the bytes it was read from): the file is read
    once, hashed and checked against its run's manifest while torch.load reads that same open
    file (fbdl_fast.manifest.parse_verified), so the hash is that of the weights returned
    (export stamps it). Errors as load_checkpoint."""
    state, digest, _ = read_checkpoint_using(path, lambda state: None, map_location)
    return state, digest


def read_checkpoint_using(
    path: PathLike, use: Callable[[dict[str, Any]], T], map_location: Any = "cpu"
) -> tuple[dict[str, Any], str, T]:
    """read_checkpoint, with use(state) run while the file's SHA-256 is still being computed:
    the work a loader does with a checkpoint anyway (build the model, copy the weights in)
    hides the hash's time where a second core is free. (state, digest, use's result) are
    returned only once the bytes are verified; when use() fails on a file that changed, the
    IntegrityError is raised instead of use's error."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist or is not a file")

    def parse_and_use(source: str, data: memoryview) -> tuple[dict[str, Any], T]:
        state = _parse(path, source, data, map_location)
        return state, use(state)

    (state, used), digest = parse_verified(path, parse_and_use)
    return state, digest, used


def _parse(path: Path, source: str, data: memoryview, map_location: Any) -> dict[str, Any]:
    """The checkpoint in `source`, the open file `path` whose bytes `data` maps; CheckpointError
    naming it. torch.load maps the file too (mmap=True): the tensors are read from the page
    cache when used, and the records a caller never touches (the optimizer's state, to
    predict) are never copied."""
    head = bytes(data[: len(_ZIP_MAGIC)])
    if not head:
        raise CheckpointError(f"checkpoint {str(path)!r} is empty (0 bytes): truncated")
    if head != _ZIP_MAGIC:
        raise CheckpointError(
            f"{str(path)!r} is not an fbdl_fast checkpoint (not a torch.save archive)"
        )
    try:
        state = torch.load(source, map_location=map_location, weights_only=True, mmap=True)
    except pickle.UnpicklingError:
        # weights_only refused an object that is not a tensor or plain data. torch's message
        # suggests weights_only=False, i.e. running the file's code: not advice to pass on.
        raise CheckpointError(
            f"{str(path)!r} is not an fbdl_fast checkpoint: it holds Python objects other "
            "than tensors and plain data, which are not loaded (they could run code)"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError) as exc:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is truncated or corrupt and cannot be read "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc
    if not isinstance(state, dict) or "format_version" not in state:
        raise CheckpointError(
            f"{str(path)!r} is not an fbdl_fast checkpoint (no 'format_version' key)"
        )
    version = state["format_version"]
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has format_version={version!r}; this "
            f"fbdl_fast reads format_version <= {FORMAT_VERSION}: upgrade it"
        )
    return state


def require_keys(state: dict[str, Any], keys: tuple[str, ...], path: PathLike) -> None:
    """CheckpointError naming the file and the missing keys, if any of `keys` is absent."""
    missing = [k for k in keys if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {str(path)!r} lacks {missing}; it holds {sorted(state)}")


CALIBRATION_KEY = "calibration"


def temperature_of(state: dict[str, Any], path: PathLike = "<memory>") -> float:
    """The calibration temperature a checkpoint holds, 1.0 when it holds none; CheckpointError
    naming the file if the value is not a finite positive number."""
    calibration = state.get(CALIBRATION_KEY)
    if calibration is None:
        return 1.0
    value = calibration.get("temperature") if isinstance(calibration, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e30:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has a damaged calibration ({calibration!r}); expected a "
            "dict whose 'temperature' is a positive number: retrain with --calibrate"
        )
    return float(value)


def add_calibration(path: PathLike, calibration: dict[str, Any]) -> None:
    """Store `calibration` (its "temperature" > 0, plus what the fit measured) in the checkpoint
    at `path`, rewritten atomically."""
    state = load_checkpoint(path)
    state[CALIBRATION_KEY] = dict(calibration)
    temperature_of(state, path)  # refuse to write what could not be read back
    state.pop("format_version")
    save_checkpoint(state, path)


def rng_state() -> dict[str, Any]:
    """Snapshot of every random generator training draws from: torch (CPU and CUDA), numpy,
    Python's random. Stored as tensors and tuples so weights_only loading accepts it."""
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore a snapshot taken by rng_state()."""
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["kind"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    cuda = state.get("cuda")
    # A checkpoint from a GPU run resumed on another machine: restore what lines up.
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


__all__ = [
    "CALIBRATION_KEY",
    "FORMAT_VERSION",
    "CheckpointError",
    "add_calibration",
    "load_checkpoint",
    "read_checkpoint",
    "require_keys",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
    "temperature_of",
]
