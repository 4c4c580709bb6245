"""Writing files atomically: the one way fbdl_fast writes anything a user keeps.

A file is written under a temporary name in its own folder, flushed to disk, given the usual
permissions, then renamed over the target (or, when the target must not be replaced, linked
to its name, which fails if the name is taken). os.replace is atomic on POSIX and Windows within
one folder, so a reader sees the old file or the new one, never half of one, and a crash or an
exception leaves the old file as it was and no temporary file behind. A writer killed midway
(SIGKILL) cannot clean up: `remove_stale_temps` removes its file before the next write.
Torch-free: the tokenizer, the data layer, the trainer and the CLI all use it.

A full disk is reported the same way wherever it happens: DiskFullError ("no space left on
device while writing FILE"), also when the writer (torch.save) wrapped the OSError in its own
exception. Appending (`append_line`) and copying (`copy_file`) never follow a symlink at the
target, so a link planted in a run folder cannot make fbdl_fast write outside it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any, Optional, Union

PathLike = Union[str, "os.PathLike[str]"]


class DiskFullError(OSError):
    """No space left on the device while writing a file (errno ENOSPC), naming the file."""

    def __init__(self, path: PathLike) -> None:
        super().__init__(errno.ENOSPC, "No space left on device", str(path))

    def __str__(self) -> str:
        return f"no space left on device while writing {self.filename}; free some space and retry"


def disk_full(exc: BaseException) -> Optional[OSError]:
    """The ENOSPC error behind `exc` (itself, or its cause/context), else None."""
    seen: set[int] = set()
    current: Optional[BaseException] = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno == errno.ENOSPC:
            return current
        current = current.__cause__ or current.__context__
    return None


@contextlib.contextmanager
def open_atomic(path: PathLike, mode: str = "w", replace: bool = True) -> Iterator[IO[Any]]:
    """Open a temporary file that replaces `path` when the `with` block ends without error.

    mode is "w" (UTF-8 text, newlines written as given) or "wb". The folder is created if needed.
    With replace=False the file is created exclusively: FileExistsError (the temporary file
    removed) if `path` exists when the block ends, also when another writer created it while
    this one was writing, so of two writers started at once one wins and the other is told.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"open_atomic: mode={mode!r} is not supported; use 'w' or 'wb'")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        _lock_temp(fd)  # held until the temp file has its name: it is live, not stale
        text: dict[str, Any] = {"encoding": "utf-8", "newline": ""} if mode == "w" else {}
        with os.fdopen(fd, mode, **text) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual permissions
            if replace:
                os.replace(tmp, path)
            else:
                _rename_exclusive(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if disk_full(exc) and not isinstance(exc, DiskFullError):
            raise DiskFullError(path) from exc  # torch.save: a RuntimeError around the OSError
        raise


# open_atomic's temporary files: `.NAME.` + mkstemp's 8 random characters + TEMP_SUFFIX.
TEMP_SUFFIX = ".tmp"
_TEMP_RANDOM = re.compile(r"[a-z0-9_]{8}")


def _lock_temp(fd: int) -> None:
    """Hold an exclusive flock on a temporary file while it is written: `remove_stale_temps`
    then tells a live writer's file (locked) from a killed one's (the OS dropped the lock)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no stale files are removed there
        return
    with contextlib.suppress(OSError):  # a filesystem without locks: the write goes on
        fcntl.flock(fd, fcntl.LOCK_EX)


def remove_stale_temps(path: PathLike) -> list[Path]:
    """Remove the temporary files that writers of `path` killed midway left beside it
    (open_atomic's names for `path` only, regular files no live process holds); returns the
    paths removed.

    A file another process is writing now is locked and kept. Without fcntl (not POSIX) nothing
    is removed, as a live writer's file could not be told from a stale one."""
    try:
        import fcntl
    except ImportError:
        return []
    path = Path(path)
    prefix = f".{path.name}."
    removed = []
    try:
        candidates = list(path.parent.iterdir())
    except FileNotFoundError:
        return []
    for candidate in candidates:
        name = candidate.name
        middle = name[len(prefix) : -len(TEMP_SUFFIX)]
        if not (
            name.startswith(prefix)
            and name.endswith(TEMP_SUFFIX)
            and _TEMP_RANDOM.fullmatch(middle)
        ):
            continue
        try:
            fd = os.open(candidate, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:  # a link (never ours), or gone meanwhile
            continue
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # a live writer's (EWOULDBLOCK), or no locks here to tell by
                continue
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
        finally:
            os.close(fd)
    return removed


def _rename_exclusive(tmp: str, path: Path) -> None:
    """Give the complete file `tmp` the name `path` unless `path` exists (FileExistsError).

    os.rename would replace a file that appeared meanwhile; a hard link is created only if the
    name is free, atomically. A filesystem without hard links gets the name reserved with
    O_EXCL and then replaced: the same exclusion, though a reader may see an empty file."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, "File exists", str(path)) from None
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666))
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def write_atomic(path: PathLike, data: Union[str, bytes]) -> Path:
    """Write `data` (text as UTF-8, or bytes) to `path` atomically; returns the path."""
    with open_atomic(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)
    return Path(path)


@contextlib.contextmanager
def folder_atomic(path: PathLike, names: Iterable[str]) -> Iterator[Path]:
    """A temporary folder beside `path` that becomes `path`, whole, when the block ends.

    The block writes the files `names` into the folder it is given. `path` may be new, empty or
    hold only such files (an older set): it is then replaced by the new set in two renames, so a
    reader sees the old set or the new one, never a mix, and an error (a full disk midway)
    leaves the old folder as it was and no temporary folder behind. A `path` holding anything
    else is the user's and is never replaced: FileExistsError naming it, before the block runs.
    """
    path = Path(path)
    if path.is_symlink():  # a link to the report folder: its target is the folder replaced
        path = path.resolve()
    allowed = set(names)
    if path.exists() and not path.is_dir():
        raise FileExistsError(errno.EEXIST, "exists and is not a folder", str(path))
    if path.is_dir():
        others = sorted(p.name for p in path.iterdir() if p.name not in allowed or p.is_dir())
        if others:
            raise FileExistsError(
                errno.EEXIST, f"holds files of its own ({', '.join(others[:5])})", str(path)
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    old = path.with_name(f"{tmp.name[: -len('.tmp')]}.old")
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700; give the usual permissions
        if path.is_dir():
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.is_dir() and not path.exists():
            os.replace(old, path)  # the second rename failed: the old set goes back
        if disk_full(exc) and not isinstance(exc, DiskFullError):
            raise DiskFullError(path) from exc
        raise
    shutil.rmtree(old, ignore_errors=True)


def append_line(path: PathLike, line: str) -> None:
    """Append `line` (UTF-8) to `path` and flush it to disk; a symlink at `path` is an error."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise OSError(
                errno.ELOOP, f"{path} is a symlink; fbdl_fast does not write through links"
            ) from None
        raise
    try:
        with os.fdopen(fd, "a", encoding="utf-8", newline="") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise DiskFullError(path) from err
        raise


def copy_file(source: PathLike, target: PathLike) -> None:
    """Copy a file's bytes and times to `target` (which must not exist); DiskFullError on ENOSPC."""
    try:
        with open(source, "rb") as src:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
            with os.fdopen(fd, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
                dst.flush()
                os.fsync(dst.fileno())
        shutil.copystat(source, target)
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise DiskFullError(target) from err
        raise


def sha256_of(path: PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it; put it straight back
    os.umask(mask)
    return mask
