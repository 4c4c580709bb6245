"""A run folder's integrity manifest: the SHA-256 of every artifact, checked on every load.

RUN/manifest.json records each artifact of the run (config.json, tokenizer.json,
label_map.json, best.pt, last.pt, model.int8.pt, model.onnx, model.int8.onnx; the calibration
and the tuned thresholds live inside best.pt) with the SHA-256 of the bytes fbdl_fast wrote. A
load hashes the bytes it parses, in the same pass: a small file is read once, hashed and parsed
(`read_verified`); a checkpoint is mapped once and hashed in a second thread while torch reads
that same open file (`parse_verified`). A file whose bytes differ from the record (8 bytes
flipped in a checkpoint, an edited tokenizer setting) is refused with one line naming it,
instead of serving a silently different model.

Writing (`write_recorded`) keeps the manifest true across a crash at any point: the new hash is
first recorded as pending beside the old one (the manifest rewritten atomically), then the file
is renamed into place, then the old hash is dropped. A crash before the rename leaves the old
file, which matches the old hash; one after it leaves the new file, which matches the pending
one. So "changed since it was written" is said only when the bytes match neither. The writers
hold the run's lock (train, export), so two never update one manifest at once.

A folder without a manifest (runs written by fbdl_fast 0.1.0, or files outside a run) is read
without verification, as before; a file the manifest does not list is read unverified too.
Torch-free.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional, TypeVar, Union

from fbdl_fast.files import write_atomic

PathLike = Union[str, "os.PathLike[str]"]
T = TypeVar("T")

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
# The files a run's manifest records, by name.
ARTIFACTS = (
    "config.json",
    "tokenizer.json",
    "label_map.json",
    "best.pt",
    "last.pt",
    "model.int8.pt",
    "model.onnx",
    "model.int8.onnx",
)
CHANGED_ADVICE = "changed since it was written; retrain or re-export"


class IntegrityError(ValueError):
    """A run's file does not hold the bytes its manifest recorded, or the manifest is damaged."""


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of `data`."""
    return hashlib.sha256(data).hexdigest()


def _manifest_path(folder: Path) -> Path:
    return folder / MANIFEST


def read_manifest(folder: Path) -> Optional[dict[str, dict[str, Any]]]:
    """The manifest's files ({name: {"sha256": hex, "bytes": size}}, plus "pending" and
    "pending_bytes" while a write is under way) of the run folder
    `folder`, None when it has none; IntegrityError naming the manifest when it is damaged."""
    path = _manifest_path(folder)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        document = json.loads(raw.decode("utf-8"))
        files = document["files"]
        if not isinstance(files, dict) or not all(isinstance(v, dict) for v in files.values()):
            raise TypeError("'files' is not an object of objects")
    except (ValueError, KeyError, TypeError) as err:
        raise IntegrityError(
            f"{path} is damaged ({type(err).__name__}: {err}); retrain the run"
        ) from None
    return files


def _write_manifest(folder: Path, files: dict[str, dict[str, Any]]) -> None:
    document = {"format_version": MANIFEST_VERSION, "files": dict(sorted(files.items()))}
    write_atomic(_manifest_path(folder), json.dumps(document, indent=2) + "\n")


def start_manifest(folder: Path) -> None:
    """Record the artifacts already in the new run folder `folder` (config.json,
    tokenizer.json, label_map.json) in a new manifest: from now on every write is recorded and
    every load verified. Called once, while the run folder is made, under the run's lock."""
    files = {}
    for name in ARTIFACTS:
        path = folder / name
        if path.is_file():
            data = path.read_bytes()
            files[name] = {"sha256": sha256_bytes(data), "bytes": len(data)}
    _write_manifest(folder, files)


def check_bytes(path: Path, data: bytes) -> str:
    """The SHA-256 of `data`, the bytes just read from `path`; IntegrityError naming the file
    when its folder's manifest recorded other bytes for it."""
    digest = sha256_bytes(data)
    _check_digest(path, len(data), digest)
    return digest


def _check_digest(path: Path, size: int, digest: str) -> None:
    if path.name not in ARTIFACTS:
        return
    files = read_manifest(path.parent)
    entry = None if files is None else files.get(path.name)
    if entry is None:  # no manifest (a 0.1.0 run), or a file it does not list
        return
    if digest not in (entry.get("sha256"), entry.get("pending")):
        recorded = str(entry.get("sha256") or entry.get("pending"))
        sizes = [entry.get(key) for key in ("bytes", "pending_bytes") if key in entry]
        cut = sizes and all(isinstance(n, int) and size < n for n in sizes)
        damage = f"is truncated or corrupt ({size} bytes of {sizes[0]} written): " if cut else ""
        raise IntegrityError(
            f"{path} {damage}{CHANGED_ADVICE} (SHA-256 {digest[:12]}... now, {recorded[:12]}... "
            f"recorded in {MANIFEST})"
        )


def parse_verified(path: PathLike, parse: Callable[[str, memoryview], T]) -> tuple[T, str]:
    """(parse(source, data), the SHA-256 of `data`): the file `path` is opened once and mapped
    into memory (`data`, no copy); a second thread hashes the mapped bytes (hashlib releases
    the GIL) while `parse` reads the same file through `source`, a path naming the very file
    that was opened (/proc/self/fd/N on Linux, so a file renamed over `path` meanwhile is not
    read instead), e.g. torch.load(source, mmap=True) that reads only the records it needs.
    The digest is checked against the folder's manifest (`check_bytes`) before the result is
    returned; IntegrityError when the bytes are not those recorded, also when `parse` failed
    on them (a truncated file is named as such). Measured on a MiniLM run's 269 MB best.pt:
    docs/results.md, "Integrity manifest"."""
    path = Path(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        source = _same_file_path(path, f.fileno())
        if size == 0:  # mmap refuses an empty file
            return _parse_and_check(path, source, memoryview(b""), parse)
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            data = memoryview(mapped)
            try:
                return _parse_and_check(path, source, data, parse)
            finally:
                data.release()


def _same_file_path(path: Path, fd: int) -> str:
    """A path that opens the file behind `fd` (Linux's /proc/self/fd), else `path` itself."""
    by_fd = f"/proc/self/fd/{fd}"
    return by_fd if os.path.exists(by_fd) else str(path)


def _parse_and_check(
    path: Path, source: str, data: memoryview, parse: Callable[[str, memoryview], T]
) -> tuple[T, str]:
    with ThreadPoolExecutor(max_workers=1) as pool:
        hashing = pool.submit(_sha256_view, data)
        try:
            result = parse(source, data)
        except BaseException:
            _check_digest(path, len(data), hashing.result())  # a changed file: say that
            raise
        digest = hashing.result()
    _check_digest(path, len(data), digest)
    return result, digest


def _sha256_view(data: memoryview) -> str:
    # In 1 MiB pieces: the same digest, and measured faster here than one call on 269 MB.
    digest = hashlib.sha256()
    for start in range(0, len(data), 1 << 20):
        digest.update(data[start : start + (1 << 20)])
    return digest.hexdigest()


def read_verified(path: PathLike) -> tuple[bytes, str]:
    """(the bytes of `path`, their SHA-256), read once and checked against the manifest of the
    file's folder (`check_bytes`): the caller parses these bytes, not the file again."""
    path = Path(path)
    with open(path, "rb") as f:
        data = f.read()
    return data, check_bytes(path, data)


def write_recorded(path: PathLike, data: bytes) -> str:
    """Write `data` to `path` atomically and record its SHA-256 in the folder's manifest, if the
    folder has one and `path` is an artifact; returns the SHA-256. Crash-safe (module doc):
    the new hash is recorded as pending before the rename and made the hash after it."""
    path = Path(path)
    digest = sha256_bytes(data)
    files = read_manifest(path.parent) if path.name in ARTIFACTS else None
    if files is None:
        write_atomic(path, data)
        return digest
    entry = dict(files.get(path.name, {}))
    entry.update(pending=digest, pending_bytes=len(data))
    _write_manifest(path.parent, {**files, path.name: entry})
    write_atomic(path, data)
    _write_manifest(path.parent, {**files, path.name: {"sha256": digest, "bytes": len(data)}})
    return digest


__all__ = [
    "ARTIFACTS",
    "CHANGED_ADVICE",
    "MANIFEST",
    "IntegrityError",
    "check_bytes",
    "parse_verified",
    "read_manifest",
    "read_verified",
    "sha256_bytes",
    "start_manifest",
    "write_recorded",
]
