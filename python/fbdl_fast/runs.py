"""The run folder as one unit: create, lock, publish, read, verify, resume.

A run folder holds everything `evaluate` and `predict` need: config.json (model name, ModelConfig,
data settings), tokenizer.json, label_map.json, best.pt / last.pt and metrics.jsonl. Its life:

- lock: one writer per run. `locked(out)` holds `.NAME.lock` beside the run with fcntl.flock; the
  OS drops the lock when its process ends however it ends, so a lock file left by a killed run
  never blocks, and a second writer is told the live one's PID.
- create: the run is built under a fixed temporary name beside its final one, `.NAME.partial`,
  so a folder with the final name is always complete. A partial folder with no last.pt (a run
  killed before its first epoch ended) holds nothing to resume: a plain train replaces it.
- resume: an interrupted run continues in its partial folder; a finished one in a copy (of
  everything in the folder, the user's own files and folders too), made under a scratch name
  and renamed into place, so a failed copy (a full disk) never leaves a
  partial folder that looks resumable.
- publish: the partial folder is renamed to the final name. An existing folder is replaced only
  with --overwrite, and only when it is a run (config.json and a checkpoint) or empty.
- verify: --resume refuses a folder holding a symlink (writing through it would write outside
  the run) and a command whose options or data (config.json keeps the data's SHA-256) differ.
- integrity: manifest.json records the SHA-256 of every artifact as it is written (started by
  `create`, kept by fbdl_fast.manifest), and every read here checks the bytes it parses against
  it; the tokenizer's fingerprint covers its settings, not only its vocabulary.
- read: config.json, tokenizer.json and label_map.json (`read_run_files`), and the checks that
  tie them to a checkpoint or an exported file before any model is built (`check_unit`):
  config.json's sizes within SIZE_LIMITS and equal to the checkpoint's config, the label map and
  the tokenizer's vocabulary fingerprint equal to the checkpoint's. Building the model and
  loading the weights is fbdl_fast.training.loading's (`load_run`), which reads through here.

Every error here is a RunError (a ValueError): the CLI prints it as one line with exit status 2.
Torch-free at import time (the CLI imports this module for --help).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from fbdl_fast.config import SIZE_LIMITS
from fbdl_fast.files import copy_file, write_atomic
from fbdl_fast.manifest import MANIFEST, IntegrityError, read_verified, start_manifest

if TYPE_CHECKING:
    from fbdl_fast.config import ModelConfig
    from fbdl_fast.data import LabelMap
    from fbdl_fast.tokenizer import Tokenizer

PROG = "fbdl-fast"
RUN_CONFIG = "config.json"
RUN_TOKENIZER = "tokenizer.json"
RUN_LABELS = "label_map.json"
BEST_CHECKPOINT = "best.pt"  # written by fbdl_fast.training.trainer.Trainer
LAST_CHECKPOINT = "last.pt"
METRICS_LOG = "metrics.jsonl"
CHECKPOINT_CHOICES = ("best", "last")  # --checkpoint: one of these, or a path
# Every --checkpoint a run reads, as its refusals list them (the exports: training.loading).
CHECKPOINTS_ACCEPTED = "best, last, int8, onnx, onnx-int8 or the path of a checkpoint file"
EVALUATION_DIR = "evaluation"  # evaluate --report RUN writes here, beside training's report.md


class RunError(ValueError):
    """A run folder cannot be created, resumed, replaced or loaded as asked."""


def resolve_output(out: Path) -> Path:
    """`out` with a real last component: `.` and `..` name the folder, so `.NAME.partial` and
    `.NAME.lock` land beside it and not inside it."""
    if out.name in ("", ".", ".."):
        out = Path(os.path.abspath(out))
    if out.name == "":
        raise RunError(f"--output {out} is the filesystem root; pick a folder for the run")
    return out


def partial_dir(out: Path) -> Path:
    """Where the run folder `out` is built, under a fixed name so --resume can find it."""
    return out.parent / f".{out.name}.partial"


def _copy_dir(out: Path) -> Path:
    """Scratch name of a finished run being copied to continue it (renamed to partial_dir)."""
    return out.parent / f".{out.name}.copy"


def lock_path(out: Path) -> Path:
    return out.parent / f".{out.name}.lock"


# ====================
# Lock
# ====================

# The lock files this process holds: `locked` inside `locked` of the same run (export_onnx
# called by `fbdl-fast export`, which locked the run before loading it) goes on without a
# second flock, which would wait on the first.
_HELD: set[str] = set()


@contextmanager
def locked(out: Path) -> Iterator[None]:
    """Hold the exclusive lock of run `out` for the `with` block; RunError naming the live
    writer's PID if another process holds it. The lock file goes when the block ends. A block
    inside one that already holds this lock in this process just runs."""
    path = lock_path(out)
    key = os.path.abspath(path)
    if key in _HELD:
        yield
        return
    _HELD.add(key)
    try:
        with _flocked(out, path):
            yield
    finally:
        _HELD.discard(key)


@contextmanager
def _flocked(out: Path, path: Path) -> Iterator[None]:
    import fcntl  # POSIX; imported here so that the CLI's --help works everywhere

    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise RunError(
                f"run {out} is being written by another process (PID {holder}; lock "
                f"{path}); wait for it to finish, stop it, or choose another --output"
            ) from None
        # The previous holder may have unlinked the file between our open and our lock: then
        # we hold a lock nobody else can see. Lock the file that is there now instead.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        path.unlink(missing_ok=True)  # before the unlock: a waiter then re-opens a new file
        os.close(fd)


# ====================
# Create, resume, publish
# ====================


def is_run(folder: Path) -> bool:
    """A run folder: config.json and at least one checkpoint."""
    return (folder / RUN_CONFIG).is_file() and any(
        (folder / name).is_file() for name in (BEST_CHECKPOINT, LAST_CHECKPOINT)
    )


def check_no_links(folder: Path) -> None:
    """RunError if the folder or a file in it is a symlink: a run folder holds regular files,
    and writing through a link (say metrics.jsonl -> elsewhere) would write outside the run."""
    links = [p for p in [folder, *folder.iterdir()] if p.is_symlink()]
    if links:
        raise RunError(
            f"{links[0]} is a symbolic link (to {os.readlink(links[0])}); a run folder holds "
            "regular files only, and fbdl_fast does not write through links: replace the link "
            "with the file it points to, or remove it"
        )


def check_target(out: Path, overwrite: bool) -> None:
    """RunError unless the run may be published at `out`: a new name, an empty folder, or (with
    --overwrite) a run folder. Anything else is the user's and is never deleted."""
    if out.exists() and not out.is_dir():
        raise RunError(f"--output {out} exists and is not a folder; pick a new folder name")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not overwrite:
        raise RunError(
            f"run folder {out} already exists and is not empty; pass --overwrite to "
            "replace it or choose another --output"
        )
    if not is_run(out):
        shown = sorted(p.name for p in out.iterdir())
        listing = ", ".join(shown[:5]) + (", ..." if len(shown) > 5 else "")
        raise RunError(
            f"--overwrite replaces only a run folder ({RUN_CONFIG} and a checkpoint) or an "
            f"empty folder, and {out} is neither (it holds {listing}); choose another "
            "--output, or remove the folder yourself"
        )


def prepare(out: Path, resume: bool, overwrite: bool) -> tuple[Path, list[str]]:
    """Rank 0's checks before training, under the run's lock: (folder to resume from, notices).

    Without --resume: the folder to build is cleared (a partial folder with nothing to resume
    goes with a notice); with it: the interrupted run's partial folder, else the finished run.
    """
    partial = partial_dir(out)
    notices: list[str] = []
    shutil.rmtree(_copy_dir(out), ignore_errors=True)  # a copy that failed (we hold the lock)
    if resume:
        if (partial / LAST_CHECKPOINT).is_file():  # an interrupted run: continue it in place
            check_no_links(partial)
            for stray in partial.glob(".*.tmp"):  # a write the kill cut short (never renamed)
                stray.unlink()
            return partial, notices
        if (out / LAST_CHECKPOINT).is_file():  # a finished run: continued in a copy, later
            check_no_links(out)
            return out, notices
        raise RunError(
            f"--resume: no checkpoint to continue; neither {partial / LAST_CHECKPOINT} "
            f"(an interrupted run) nor {out / LAST_CHECKPOINT} (a finished run) exists; "
            f"train without --resume first"
        )
    check_target(out, overwrite)  # fail before an hour of training, not after
    if partial.is_symlink() or (partial.exists() and not partial.is_dir()):
        raise RunError(f"{partial} is in the way of the run and is not a folder; remove it")
    if partial.exists():
        if (partial / LAST_CHECKPOINT).is_file() and not overwrite:
            raise RunError(
                f"an interrupted run of {out} is in {partial}; pass --resume to continue it "
                f"or --overwrite to start over"
            )
        if not (partial / LAST_CHECKPOINT).is_file():
            notices.append(
                f"{partial} holds a run that never finished an epoch (nothing to resume); "
                "starting over"
            )
        shutil.rmtree(partial)
    return partial, notices


def continue_finished(out: Path) -> Path:
    """Copy the finished run `out` to its partial folder, to train on; all or nothing.

    Everything in the folder is copied, the user's own files and folders too (an evaluate
    --report folder, notes): publishing the continued run replaces the folder whole, so what
    is not copied here would be lost."""
    partial, scratch = partial_dir(out), _copy_dir(out)
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        scratch.mkdir()
        for source in out.iterdir():
            if source.is_dir() and not source.is_symlink():
                # links inside stay links: fbdl_fast never writes through them
                shutil.copytree(
                    source, scratch / source.name, symlinks=True, copy_function=copy_file
                )
            elif source.is_file() and not source.is_symlink():
                copy_file(source, scratch / source.name)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    shutil.rmtree(partial, ignore_errors=True)  # a start killed before its first epoch
    os.replace(scratch, partial)
    return partial


def create(partial: Path, meta: dict[str, Any], tokenizer: Tokenizer, label_map: LabelMap) -> None:
    """Start a new run in its partial folder: config.json, tokenizer.json, label_map.json."""
    partial.mkdir(parents=True)
    # Said in config.json, so that a run whose manifest.json went missing is refused, not read
    # unverified as a run written before the manifest is.
    meta = {**meta, "manifest": MANIFEST}
    write_atomic(partial / RUN_CONFIG, json.dumps(meta, indent=2) + "\n")
    tokenizer.save(str(partial / RUN_TOKENIZER))
    label_map.save(partial / RUN_LABELS)
    # from here on every artifact written is recorded, every load verified (fbdl_fast.manifest)
    start_manifest(partial)


def discard(partial: Path) -> bool:
    """After a failed training: drop the partial folder unless it holds a checkpoint to resume.
    Returns True when it was kept."""
    if (partial / LAST_CHECKPOINT).is_file():
        return True
    shutil.rmtree(partial, ignore_errors=True)
    return False


def discard_on_error(partial: Path) -> Callable[..., bool]:
    """An exit callback (ExitStack.push) that, when the block fails, drops the partial folder
    unless it holds a checkpoint to resume (`discard`): a refusal after the folder was made (the
    pretrained weights, the loaders, the device) leaves no .partial folder behind."""

    def on_exit(exc_type: Optional[type[BaseException]], *_: Any) -> bool:
        if exc_type is not None:
            discard(partial)
        return False  # the error goes on

    return on_exit


def publish(partial: Path, out: Path, overwrite: bool) -> None:
    """Move the finished partial folder to its final name (replacing only if allowed)."""
    check_target(out, overwrite)  # again: something may have appeared while training
    old = None
    if out.is_dir():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(partial, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_config(folder: Path) -> dict[str, Any]:
    """config.json of a run, as a dict; RunError naming the file if it cannot be read."""
    path = folder / RUN_CONFIG
    try:
        meta = json.loads(read_verified(path)[0].decode("utf-8"))
    except UnicodeDecodeError as err:
        raise RunError(
            f"{path} is not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset "
            f"{err.start}); the file is damaged: restore it or retrain the run"
        ) from None
    except json.JSONDecodeError as err:
        raise RunError(f"{path} is damaged ({err}); restore it or retrain the run") from None
    if not isinstance(meta, dict):
        raise RunError(f"{path} is damaged (a JSON {type(meta).__name__}, not an object)")
    if meta.get("manifest") == MANIFEST and not (folder / MANIFEST).is_file():
        raise IntegrityError(
            f"{folder / MANIFEST} is missing, so this run's files cannot be verified "
            f"({RUN_CONFIG} says the run was written with one); restore it or retrain the run"
        )
    return meta


# config.json "data" keys newer than some runs: a run without them is not checked on them.
ADDED_DATA_KEYS = ("sha256", "tokenizer_vocab_size", "spell_emoji")


def resume_mismatch(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The settings (dotted names) that differ between the run's config.json and this command."""
    from fbdl_fast.config import ModelConfig

    current = json.loads(json.dumps(current))  # as stored: tuples are lists in JSON
    # A ModelConfig field newer than the run, at its default now: the run trained with that.
    defaults = json.loads(json.dumps(ModelConfig().to_dict()))
    diffs = []
    for key in ("model", "training.accumulate"):
        head, _, tail = key.partition(".")
        a = stored.get(head, {}).get(tail) if tail else stored.get(head)
        b = current[head][tail] if tail else current[head]
        if a != b:
            diffs.append(f"{key} ({a!r} in the run, {b!r} now)")
    for section in ("model_config", "data"):
        saved = stored.get(section, {})
        for name, value in current[section].items():
            if name == "source" or (name in ADDED_DATA_KEYS and name not in saved):
                continue  # the path may move; runs from before the key cannot be checked on it
            if section == "model_config" and name not in saved and value == defaults.get(name):
                continue
            if name == "sha256" and saved[name] != value:
                diffs.append(
                    f"the data: {current['data']['source']} has other contents than "
                    f"{saved.get('source')!r} had when the run started (SHA-256 {value[:12]}... "
                    f"now, {str(saved[name])[:12]}... in the run)"
                )
            elif saved.get(name) != value:
                diffs.append(f"{section}.{name} ({saved.get(name)!r} in the run, {value!r} now)")
    return diffs


# ====================
# Read
# ====================


@dataclass
class RunFiles:
    """A run folder's config.json, tokenizer.json and label_map.json, read and checked: what
    every way of serving the run needs before its weights (a checkpoint, model.int8.pt or
    model.onnx) are read."""

    path: Path
    meta: dict[str, Any]
    config: ModelConfig
    tokenizer: Tokenizer
    label_map: LabelMap

    @property
    def model_name(self) -> str:
        """config.json's "model" (create_model's name); RunError when the file lacks it."""
        name = self.meta.get("model")
        if not isinstance(name, str):
            raise RunError(
                f"{self.path / RUN_CONFIG} is damaged (model {name!r}: a model name such as "
                "'cnn' expected); retrain the run"
            )
        return name


def checkpoint_path(folder: Path, which: Optional[str]) -> Path:
    """The checkpoint `--checkpoint which` names: best, last, a path, or None (best, else last)."""
    if which is None:
        found = next(
            (folder / n for n in (BEST_CHECKPOINT, LAST_CHECKPOINT) if (folder / n).is_file()),
            None,
        )
        if found is None:
            raise RunError(
                f"run folder {folder} has no checkpoint ({BEST_CHECKPOINT} or "
                f"{LAST_CHECKPOINT}); retrain the run"
            )
        return found
    path = folder / f"{which}.pt" if which in CHECKPOINT_CHOICES else Path(which)
    if path.is_dir():
        raise RunError(
            f"--checkpoint {which}: {path} is a folder, not a checkpoint file; accepted: "
            f"{CHECKPOINTS_ACCEPTED}"
        )
    if not path.is_file():
        inside = folder / which
        hint = (
            f" (a path is read as given, not from the run folder: pass {inside})"
            if inside.is_file() and not path.is_absolute()
            else ""
        )
        raise RunError(
            f"--checkpoint {which}: {path} does not exist; accepted: {CHECKPOINTS_ACCEPTED}{hint}"
        )
    return path


def _first(labels: list[Any], shown: int = 5) -> str:
    """A label list as a message shows it: its first `shown`, then how many more."""
    more = f" and {len(labels) - shown} more" if len(labels) > shown else ""
    return f"{labels[:shown]!r}{more}"


def check_sizes(values: dict[str, Any], path: Path) -> None:
    """RunError naming the field of a model_config whose size is beyond SIZE_LIMITS."""
    for name, limit in SIZE_LIMITS.items():
        value = values.get(name)
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v > limit:
                raise RunError(
                    f"{path}: model_config.{name}={value!r} is beyond any fbdl_fast model (at "
                    f"most {limit}); the file is damaged: restore it or retrain the run"
                )


# tokenizer_fingerprint's prefix: checkpoints written before it hold vocabulary_fingerprint.
FINGERPRINT_PREFIX = "tokenizer-v2:"


def vocabulary_fingerprint(tokenizer: Tokenizer) -> str:
    """SHA-256 of the vocabulary in id order: the fingerprint checkpoints of fbdl_fast 0.1.0
    hold (blind to the normaliser and pre-tokenizer settings)."""
    tokens = (tokenizer.id_to_token(i) or "" for i in range(tokenizer.vocab_size))
    return hashlib.sha256("\n".join(tokens).encode("utf-8", "surrogatepass")).hexdigest()


def tokenizer_fingerprint(tokenizer: Tokenizer) -> str:
    """FINGERPRINT_PREFIX + SHA-256 of the whole tokenizer as it loaded (its settings:
    lowercasing, URL replacement, the pre-tokenizer..., and its vocabulary in id order), in
    canonical JSON: equal for the same tokenizer whatever the file's layout."""
    settings = json.loads(tokenizer.to_str())
    canonical = json.dumps(settings, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()
    return FINGERPRINT_PREFIX + digest


def fingerprint_matches(stored: str, tokenizer: Tokenizer) -> bool:
    """Whether a checkpoint's fingerprint is `tokenizer`'s, compared as the kind it is: the
    whole tokenizer (tokenizer_fingerprint) or, in older checkpoints, its vocabulary only."""
    if stored.startswith(FINGERPRINT_PREFIX):
        return stored == tokenizer_fingerprint(tokenizer)
    return stored == vocabulary_fingerprint(tokenizer)


def read_run_config(path: Path) -> tuple[dict[str, Any], ModelConfig]:
    """config.json of the run folder `path`: as read, and its model's ModelConfig; RunError
    naming the folder or the file when it is missing or damaged. Reads no checkpoint."""
    from fbdl_fast.config import ModelConfig

    if path.is_file():
        raise RunError(f"{path} is a file, not a run folder; name the folder `{PROG} train` made")
    if not path.is_dir():
        raise RunError(f"run folder {path} does not exist; create one with `{PROG} train`")
    if not (path / RUN_CONFIG).is_file():
        raise RunError(
            f"{path} is not a {PROG} run folder: {RUN_CONFIG} is missing; create "
            f"one with `{PROG} train`"
        )
    meta = read_config(path)
    try:
        check_sizes(meta["model_config"], path / RUN_CONFIG)
        return meta, ModelConfig.from_dict(meta["model_config"])
    except (KeyError, TypeError, AttributeError) as err:
        raise RunError(f"{path / RUN_CONFIG} is damaged ({err!r}); retrain the run") from None
    except ValueError as err:
        raise RunError(f"{path / RUN_CONFIG} is damaged: {err}; retrain the run") from None


def read_run_files(path: Path) -> RunFiles:
    """config.json, tokenizer.json and label_map.json of the run folder `path`; RunError naming
    the folder or the file when one is missing or damaged. Reads no checkpoint."""
    from fbdl_fast.data import LabelMap
    from fbdl_fast.tokenizer import Tokenizer

    meta, config = read_run_config(path)
    # Each file is read once, checked against the run's manifest and parsed from those bytes.
    tokenizer_path = path / RUN_TOKENIZER
    try:
        tokenizer = Tokenizer.from_str(_verified_text(tokenizer_path, "tokenizer"))
    except ValueError as err:  # the reader names "<string>": name the file instead
        raise type(err)(str(err).replace("<string>", str(tokenizer_path), 1)) from None
    text = _verified_text(path / RUN_LABELS, "label map")
    try:
        labels = LabelMap.from_dict(json.loads(text))
    except json.JSONDecodeError as err:
        raise ValueError(f"label map {path / RUN_LABELS} is not valid JSON: {err}") from None
    return RunFiles(path, meta, config, tokenizer, labels)


def _verified_text(path: Path, what: str) -> str:
    """The UTF-8 text of the run file `path`, verified (fbdl_fast.manifest.read_verified)."""
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, f"{what} does not exist", str(path))
    try:
        return read_verified(path)[0].decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{what} {path} is not UTF-8 text ({err}); retrain the run") from None


def check_unit(
    path: Path,
    chosen: Path,
    state: dict[str, Any],
    config: ModelConfig,
    tokenizer: Tokenizer,
    label_map: LabelMap,
) -> None:
    """RunError naming the file of the run folder `path` that disagrees with `chosen`: a
    checkpoint, or an exported file whose metadata (`state`) holds the same keys (config,
    label_map, tokenizer_fingerprint).

    Checkpoints from before a key was saved are checked on what they hold."""
    from fbdl_fast.config import ModelConfig

    trained = state.get("config")
    if isinstance(trained, dict):
        ours = json.loads(json.dumps(config.to_dict()))  # tuples as lists, as in the file
        theirs = json.loads(json.dumps(ModelConfig.from_dict(trained).to_dict()))
        diffs = [
            f"{k}={ours.get(k)!r} (checkpoint: {v!r})"
            for k, v in theirs.items()
            if ours.get(k) != v
        ]
        if diffs:
            raise RunError(
                f"{path / RUN_CONFIG} does not match the checkpoint {chosen.name}: "
                f"{', '.join(diffs[:3])}{' ...' if len(diffs) > 3 else ''}; restore this run's "
                f"{RUN_CONFIG} or retrain"
            )
    labels = state.get("label_map")
    if isinstance(labels, dict) and labels.get("labels") != label_map.labels:
        raise RunError(
            f"{path / RUN_LABELS} does not match the checkpoint {chosen.name}: it lists "
            f"{_first(label_map.labels)}, the model was trained with "
            f"{_first(labels.get('labels', []))}; restore this run's {RUN_LABELS}"
        )
    if tokenizer.vocab_size != config.vocab_size:
        raise RunError(
            f"run folder {path}: {RUN_TOKENIZER} has vocab_size {tokenizer.vocab_size} but "
            f"the model in {RUN_CONFIG} was built for vocab_size {config.vocab_size}; the "
            f"tokenizer belongs to another run: restore this run's {RUN_TOKENIZER} or retrain"
        )
    fingerprint = state.get("tokenizer_fingerprint")
    if isinstance(fingerprint, str) and not fingerprint_matches(fingerprint, tokenizer):
        raise RunError(
            f"{path / RUN_TOKENIZER} is not the tokenizer the checkpoint {chosen.name} was "
            f"trained with (its settings or vocabulary differ); restore this "
            f"run's {RUN_TOKENIZER} or retrain"
        )
    if len(label_map) != config.num_classes:
        raise RunError(
            f"run folder {path}: {RUN_LABELS} has {len(label_map)} labels but the model in "
            f"{RUN_CONFIG} has num_classes {config.num_classes}; restore this run's "
            f"{RUN_LABELS} or retrain"
        )
