"""Writing files atomically: the one way fbdl_fast writes anything a user keeps.

A file is written under a temporary name in its own folder, flushed to disk, given the usual
permissions, then renamed over the target. os.replace is atomic on POSIX and Windows within one
folder, so a reader sees the old file or the new one, never half of one, and a crash or an
exception leaves the old file as it was and no temporary file behind. Torch-free: the tokenizer,
the data layer, the trainer and the CLI all use it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Union

PathLike = Union[str, "os.PathLike[str]"]


@contextlib.contextmanager
def open_atomic(path: PathLike, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file that replaces `path` when the `with` block ends without error.

    mode is "w" (UTF-8 text, newlines written as given) or "wb". The folder is created if needed.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"open_atomic: mode={mode!r} is not supported; use 'w' or 'wb'")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        text = {"encoding": "utf-8", "newline": ""} if mode == "w" else {}
        with os.fdopen(fd, mode, **text) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: PathLike, data: Union[str, bytes]) -> Path:
    """Write `data` (text as UTF-8, or bytes) to `path` atomically; returns the path."""
    with open_atomic(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)
    return Path(path)


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it; put it straight back
    os.umask(mask)
    return mask
