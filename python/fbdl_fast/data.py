"""Posts in, batches out: loading, label maps, splits, length bucketing and dynamic padding.

The pipeline, top to bottom:

    posts = load_posts("posts.csv", text_column="text", label_column="label")
    label_map = LabelMap.from_labels(posts.labels)
    train, val = split_posts(posts, val_fraction=0.1, seed=42)
    train_loader, val_loader = build_dataloaders(train, val, tokenizer, label_map, config)

`iter_posts` reads the same files one post at a time (prediction on a file of any size streams
through it). Each corpus is tokenised once, up front (`tokenize_texts`): a batch then only pads
the ids it holds, to its own longest post (`collate`). `BucketBatchSampler` puts posts of
similar length in the same batch, so little padding is computed at all. Its order is a pure
function of (seed, epoch): resuming a run at epoch k replays exactly the batches an
uninterrupted run sees.

The embedded synthetic dataset lives in fbdl_fast.synthetic; it returns the same `Posts`.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import logging
import math
import os
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NamedTuple, Optional, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from fbdl_fast.files import write_atomic

if TYPE_CHECKING:
    from fbdl_fast.config import ModelConfig
    from fbdl_fast.tokenizer import Tokenizer

Label = Union[str, int]
LabelSet = tuple[Label, ...]  # a multi-label post's labels (iter_posts(label_separator=...))

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
_INT_LABEL = re.compile(r"-?(0|[1-9][0-9]*)")
ENCODING_ERRORS = ("strict", "replace", "ignore")  # what to do with invalid UTF-8 bytes
_SURROGATE = re.compile("[\ud800-\udfff]")  # only JSON escapes can put these in a str
logger = logging.getLogger(__name__)

# ====================
# Posts and loading
# ====================


@dataclass
class Posts:
    """Texts with their labels (None when the file has no label column) and source lines."""

    texts: list[str]
    labels: Optional[list[Label]]
    lines: list[int]  # 1-based line of each post in `source`, for error messages
    source: str = "<memory>"

    def __post_init__(self) -> None:
        if len(self.lines) != len(self.texts):
            raise ValueError(
                f"Posts.lines has {len(self.lines)} entries for "
                f"{len(self.texts)} texts; expected one line per text"
            )
        if self.labels is not None and len(self.labels) != len(self.texts):
            raise ValueError(
                f"Posts.labels has {len(self.labels)} entries for "
                f"{len(self.texts)} texts; expected one label per text"
            )

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: Sequence[int]) -> Posts:
        """The posts at `indices`, in that order."""
        return Posts(
            texts=[self.texts[i] for i in indices],
            labels=None if self.labels is None else [self.labels[i] for i in indices],
            lines=[self.lines[i] for i in indices],
            source=self.source,
        )


class Post(NamedTuple):
    """One post as read from a file: its 1-based line, text and label (None: no label column),
    and the values of the columns asked for with `keep` (in that order)."""

    line: int
    text: str
    label: Optional[Label]
    kept: tuple[Any, ...] = ()


def load_posts(
    path: Union[str, os.PathLike[str]],
    text_column: str = "text",
    label_column: Optional[str] = "label",
    *,
    require_labels: bool = True,
    format: Optional[str] = None,
    errors: str = "strict",
    label_separator: Optional[str] = None,
) -> Posts:
    """Read posts from a CSV, TSV or JSON-lines file (all of it; `iter_posts` streams).

    Args:
        path: the file; its extension picks the format unless `format` is given.
        text_column: column (CSV) or key (JSONL) holding the post text.
        label_column: column or key holding the label; None to read texts only.
        require_labels: if False, a file without the label column loads with `labels=None`
            (prediction input); a present column must still be filled on every line.
        format: "csv", "tsv" or "jsonl" to override the extension.
        errors: invalid UTF-8 bytes (and, in JSONL, unpaired surrogate escapes such as
            "\\ud800") are an error naming the line ("strict"), or replaced by U+FFFD
            ("replace") or dropped ("ignore").
        label_separator: multi-label posts: each label value is a set of labels (a LabelSet
            tuple), written "spam|negative" with this separator, or a JSON list in JSONL;
            an empty value is a post with no label (see `label_set`).

    Labels are strings or integers; strings that spell an integer ("3") become that integer, so
    the same labels load identically from CSV and JSONL. Surrounding spaces are dropped (" spam"
    is "spam", with a warning naming the merge); case is kept ("Spam" and "spam" are two classes;
    `label_warnings` says so). Empty and whitespace-only texts are kept
    (the tokenizer turns them into [CLS] [SEP]); their count is logged at INFO level.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: empty file, missing column, missing text/label value, invalid UTF-8 or JSON;
            the message names the file, the line and what is accepted.
    """
    texts: list[str] = []
    labels: list[Label] = []
    lines: list[int] = []
    for post in iter_posts(
        path,
        text_column,
        label_column,
        require_labels=require_labels,
        format=format,
        errors=errors,
        label_separator=label_separator,
    ):
        texts.append(post.text)
        lines.append(post.line)
        if post.label is not None:
            labels.append(post.label)
    has_labels = bool(labels)  # a label column is filled on every line or absent
    return Posts(texts, labels if has_labels else None, lines, str(path))


def iter_posts(
    path: Union[str, os.PathLike[str]],
    text_column: str = "text",
    label_column: Optional[str] = "label",
    *,
    require_labels: bool = True,
    format: Optional[str] = None,
    errors: str = "strict",
    keep: Sequence[str] = (),
    label_separator: Optional[str] = None,
) -> Iterator[Post]:
    """The posts of a file one at a time, read incrementally (memory does not grow with the file).

    Same arguments, checks and errors as `load_posts`; an error on line k comes after the posts
    before it were yielded. Each line is decoded on its own, so an invalid byte is reported with
    its line number. `keep` names other columns whose values each Post carries (`Post.kept`).
    """
    path = Path(path)
    fmt = format or FORMATS.get(path.suffix.lower())
    if fmt not in ("csv", "tsv", "jsonl"):
        raise ValueError(
            f"cannot tell the format of {path}: extension {path.suffix!r} "
            f"(format={format!r}); accepted: {', '.join(sorted(FORMATS))} "
            "or format='csv'|'tsv'|'jsonl'"
        )
    if errors not in ENCODING_ERRORS:
        raise ValueError(
            f"errors={errors!r} is not supported; accepted: {', '.join(ENCODING_ERRORS)}"
        )
    if not path.exists():
        raise FileNotFoundError(f"posts file {path} does not exist")
    if path.is_dir():
        raise ValueError(f"posts file {path} is a directory; expected a CSV or JSONL file")
    count = 0
    blank: list[int] = []
    spaced: dict[str, int] = {}  # labels written with surrounding spaces -> first line
    with open(path, "rb") as f:
        nul_lines: list[int] = []
        lines = _decoded_lines(f, path, errors, nul_lines)
        records = (
            _read_jsonl(lines, path)
            if fmt == "jsonl"
            else _read_csv(lines, path, delimiter="," if fmt == "csv" else "\t")
        )
        has_labels = label_column is not None
        for line, record in records:
            if count == 0:  # columns are checked once, on the first record
                has_labels = _check_columns(
                    record, path, line, text_column, label_column, require_labels
                )
                missing = [name for name in keep if name not in record]
                if missing:
                    raise ValueError(
                        f"column(s) {', '.join(map(repr, missing))} not found in {path} (line "
                        f"{line}); columns are: {', '.join(map(str, record))}"
                    )
            text = _text_value(record, text_column, path, line)
            if fmt == "jsonl" and _SURROGATE.search(text):  # a "\ud800" escape, unpaired
                text = _surrogates(text, errors, path, line)
            label: Any = None
            if has_labels and label_separator is not None:
                assert label_column is not None
                value = record.get(label_column)
                try:
                    label = label_set(value, label_separator)
                except ValueError as err:
                    raise ValueError(
                        f"{err} (column {label_column!r}, line {line} of {path})"
                    ) from None
            elif has_labels:
                assert label_column is not None
                label = _label_value(record.get(label_column), label_column, path, line)
                raw = record.get(label_column)
                if isinstance(raw, str) and raw != raw.strip() and len(spaced) < 100:
                    spaced.setdefault(raw, line)
            if not text.strip():
                blank.append(line)
            count += 1
            yield Post(line, text, label, tuple(record.get(name) for name in keep))
        if count == 0:
            if f.tell() == 0 or _only_whitespace(path):
                raise ValueError(f"posts file {path} is empty; expected a header line and posts")
            raise ValueError(f"posts file {path} has a header but no posts")
    if nul_lines:
        shown = ", ".join(map(str, nul_lines[:5])) + (", ..." if len(nul_lines) > 5 else "")
        logger.warning(
            "%s: %d line(s) held NUL bytes (\\0), which were removed (line %s)",
            path,
            len(nul_lines),
            shown,
        )
    if spaced:
        logger.warning(
            "%s: labels are read without surrounding spaces, so these are merged with the "
            "label they spell: %s",
            path,
            ", ".join(f"{raw!r} -> {raw.strip()!r} (line {n})" for raw, n in spaced.items()),
        )
    if blank:
        shown = ", ".join(map(str, blank[:5])) + (", ..." if len(blank) > 5 else "")
        logger.info(
            "%s: %d of %d posts are empty or whitespace-only (line %s); they are kept and "
            "read as empty posts ([CLS] [SEP])",
            path,
            len(blank),
            count,
            shown,
        )


def _surrogates(text: str, errors: str, path: Path, line: int) -> str:
    """A JSON text holding unpaired surrogates (not text: no encoding can write them)."""
    if errors == "strict":
        char = _SURROGATE.search(text)
        assert char is not None
        raise ValueError(
            f"text on line {line} of {path} holds an unpaired surrogate "
            f"(\\u{ord(char.group()):04x}), which is not text; fix the JSON escape, or "
            "replace such characters with U+FFFD (errors='replace', --encoding-errors replace)"
        )
    return _SURROGATE.sub("\ufffd" if errors == "replace" else "", text)


def _only_whitespace(path: Path) -> bool:
    with open(path, "rb") as f:
        return all(not chunk.strip() for chunk in iter(lambda: f.read(1 << 16), b""))


def _looks_utf16(first_line: bytes) -> bool:
    """A UTF-16 byte-order mark, or text with a zero byte in every other position."""
    if first_line.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return True
    body = first_line.rstrip(b"\r\n\0")
    half = len(body) // 2
    return half > 0 and max(body[0::2].count(0), body[1::2].count(0)) * 2 >= half


def _decoded_lines(
    f: IO[bytes], path: Path, errors: str, nul_lines: Optional[list[int]] = None
) -> Iterator[tuple[int, str]]:
    """(1-based line number, text) of each physical line, decoded on its own.

    Lines are split on b"\\n", which never occurs inside a multi-byte UTF-8 sequence, so the
    number of a bad byte's line is exact (and JSON strings holding U+2028 stay in one line,
    which str.splitlines would cut).
    """
    for number, raw in enumerate(f, start=1):
        if number == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8) :]
        if number == 1 and _looks_utf16(raw):
            raise ValueError(
                f"posts file {path} looks like UTF-16 (a byte-order mark or a zero byte in every "
                "other position); convert it to UTF-8 (e.g. `iconv -f UTF-16 -t UTF-8`, or "
                "'Save as CSV UTF-8')"
            )
        if b"\0" in raw:  # NUL is no text: a binary or mis-encoded line. Removed, reported.
            raw = raw.replace(b"\0", b"")
            if nul_lines is not None:
                nul_lines.append(number)
        try:
            yield number, raw.decode("utf-8", errors)
        except UnicodeDecodeError as err:
            raise ValueError(
                f"posts file {path} is not valid UTF-8: byte 0x{raw[err.start]:02x} on "
                f"line {number} ({err.reason}); save the file as UTF-8, or replace bad "
                "bytes with U+FFFD (errors='replace', --encoding-errors replace)"
            ) from None


def _read_csv(
    lines: Iterator[tuple[int, str]], path: Path, delimiter: str
) -> Iterator[tuple[int, dict[str, Any]]]:
    consumed = 0  # physical lines the csv reader has pulled so far

    def pieces() -> Iterator[str]:
        nonlocal consumed
        for number, line in lines:
            consumed = number
            if "\r" in line.rstrip("\r\n"):  # old Mac line ends: split as newline="" would
                yield from io.StringIO(line, newline="")
            else:
                yield line

    # A post is one field, read whole whatever its size (as a JSONL line is), then truncated to
    # max_length tokens by the tokenizer; the csv module's default cap is 128 KiB. An unclosed
    # quote then reads to the end of the file and is reported with the line where it opened.
    if csv.field_size_limit() < sys.maxsize:
        csv.field_size_limit(sys.maxsize)
    reader = csv.reader(pieces(), delimiter=delimiter, strict=True)
    header: Optional[list[str]] = None
    start: Optional[int] = None
    try:
        header = next(reader, None)
        while header is not None and not any(field.strip() for field in header):
            header = next(reader, None)  # blank lines before the header
        if header is None:
            return
        _check_header(header, path, consumed)
        while True:
            start = consumed + 1  # a record starts on the line after the previous one ended
            row = next(reader, None)
            if row is None:
                return
            if not any(field.strip() for field in row):
                continue  # blank line
            if len(row) > len(header):  # the overflow would silently become the next column
                sep = "comma" if delimiter == "," else "tab"
                raise ValueError(
                    f"line {start} of {path} has {len(row)} fields but the header has "
                    f"{len(header)} ({', '.join(header)}): an unquoted {sep} in the text? "
                    f'Quote the field ("hello{delimiter} world"), and check that '
                    "--text-column/--label-column name the columns you mean"
                )
            # Short rows read as missing (None) values, which the checks below report.
            yield start, {name: (row[i] if i < len(row) else None) for i, name in enumerate(header)}
    except csv.Error as err:
        if header is None or start is None:  # the header itself
            raise ValueError(
                f"posts file {path} is not valid CSV in its header (line {consumed}): {err}"
            ) from None
        if "unexpected end of data" in str(err):
            raise ValueError(
                f"posts file {path}: the quoted field on line {start} is never closed (the file "
                f'ends inside it, on line {consumed}); close or escape ("") its quote'
            ) from None
        raise ValueError(
            f"posts file {path} is not valid CSV in the record that starts on line {start} "
            f"(read to line {consumed}): {err}; an unbalanced quote on line {start}?"
        ) from None


def _check_header(header: list[str], path: Path, line: int) -> None:
    seen: set[str] = set()
    for name in header:
        if name.strip() and name in seen:  # unnamed columns (trailing separators) may repeat
            raise ValueError(
                f"posts file {path}: column name {name!r} appears twice in the header (line "
                f"{line}: {', '.join(header)}); give each column its own name"
            )
        seen.add(name)


def _read_jsonl(
    lines: Iterator[tuple[int, str]], path: Path
) -> Iterator[tuple[int, dict[str, Any]]]:
    for line, raw in lines:
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"line {line} of {path} is not valid JSON ({err.msg}); expected one "
                "JSON object per line"
            ) from None
        if not isinstance(record, dict):
            raise ValueError(
                f"line {line} of {path} holds a JSON {type(record).__name__}; "
                "expected one JSON object per line"
            )
        yield line, record


def _check_columns(
    record: dict[str, Any],
    path: Path,
    line: int,
    text_column: str,
    label_column: Optional[str],
    require_labels: bool,
) -> bool:
    columns = ", ".join(str(c) for c in record)
    if text_column not in record:
        raise ValueError(
            f"text column {text_column!r} not found in {path} (line {line}); columns are: {columns}"
        )
    if label_column is None:
        return False
    if label_column not in record:
        if require_labels:
            raise ValueError(
                f"label column {label_column!r} not found in {path} (line {line}); "
                f"columns are: {columns}"
            )
        return False
    return True


def _text_value(record: dict[str, Any], column: str, path: Path, line: int) -> str:
    value = record.get(column)
    if value is None:
        raise ValueError(f"missing text value (column {column!r}) on line {line} of {path}")
    if not isinstance(value, str):
        raise ValueError(
            f"text value {value!r} (column {column!r}) on line {line} of {path} is "
            f"a {type(value).__name__}; expected a string"
        )
    return value


def _label_value(value: Any, column: str, path: Path, line: int) -> Label:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ValueError(
            f"missing label value (column {column!r}) on line {line} of {path}; "
            "every post needs a label"
        )
    try:
        return canonical_label(value)
    except ValueError as err:
        raise ValueError(f"{err} (column {column!r}, line {line} of {path})") from None


def label_set(value: Any, separator: str = "|") -> LabelSet:
    """A multi-label post's labels: a JSON list, or a string cut at `separator` ("spam|negative"),
    each part a label as canonical_label reads it (spaces around it dropped), repeats dropped,
    in the order written. An empty string or list (or None) is a post with no label."""
    if not separator:
        raise ValueError("the label separator is empty; expected a character such as |")
    if value is None:
        return ()
    if isinstance(value, list):
        parts: list[Any] = value
    elif isinstance(value, str):
        parts = [part for part in value.split(separator) if part.strip()]
    else:
        parts = [value]
    labels = [canonical_label(part) for part in parts]
    return tuple(dict.fromkeys(labels))


def canonical_label(value: Any) -> Label:
    """A label as stored: ints stay ints, strings spelling an int become it, others stay str."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(
            f"label {value!r} is a {type(value).__name__}; labels are strings or integers"
        )
    if isinstance(value, str):
        value = value.strip()
        if _INT_LABEL.fullmatch(value):
            return int(value)
    return value


# ====================
# Label map
# ====================


class LabelMap:
    """Labels (strings or ints) <-> class ids 0..n-1, saved as JSON beside the model.

    Ids follow the sorted labels (integers numerically), so the same label set always gets the
    same ids whatever order the posts come in.
    """

    def __init__(self, labels: Sequence[Label]) -> None:
        canon = [canonical_label(label) for label in labels]
        if len(set(canon)) != len(canon):
            raise ValueError(
                f"LabelMap labels {list(labels)!r} contain duplicates; each label must appear once"
            )
        if not canon:
            raise ValueError("LabelMap needs at least one label")
        self._labels: list[Label] = canon
        self._ids = {label: i for i, label in enumerate(canon)}

    @classmethod
    def from_labels(cls, labels: Sequence[Label]) -> LabelMap:
        """The map over the distinct labels seen, in sorted order."""
        distinct = {canonical_label(label) for label in labels}
        # ints before strings, each sorted, so mixed label sets still have a fixed order
        return cls(sorted(distinct, key=lambda v: (isinstance(v, str), v)))

    @property
    def labels(self) -> list[Label]:
        return list(self._labels)

    def __len__(self) -> int:
        return len(self._labels)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LabelMap) and self._labels == other._labels

    def __repr__(self) -> str:
        return f"LabelMap({self._labels!r})"

    def encode(self, label: Label) -> int:
        """The id of `label`; ValueError naming the label and the known ones if it is new."""
        key = canonical_label(label)
        if key not in self._ids:
            raise ValueError(
                f"unknown label {label!r}; the model knows: "
                f"{', '.join(repr(v) for v in self._labels)}"
            )
        return self._ids[key]

    def encode_all(self, posts: Posts) -> list[int]:
        """Ids of every post's label, with the file and line in the error for an unknown one."""
        if posts.labels is None:
            raise ValueError(
                f"posts from {posts.source} have no labels; pass a file with a label column"
            )
        ids = []
        for label, line in zip(posts.labels, posts.lines):
            try:
                ids.append(self.encode(label))
            except ValueError as err:
                raise ValueError(f"{err} (line {line} of {posts.source})") from None
        return ids

    @classmethod
    def from_label_sets(cls, label_sets: Sequence[LabelSet]) -> LabelMap:
        """The map over every label of multi-label posts, in sorted order."""
        return cls.from_labels([label for labels in label_sets for label in labels])

    def multi_hot(self, posts: Posts) -> np.ndarray:
        """(posts, classes) float32 targets of multi-label posts: 1 where a post carries the
        class; an unknown label is an error naming it and its line."""
        if posts.labels is None:
            raise ValueError(
                f"posts from {posts.source} have no labels; pass a file with a label column"
            )
        out = np.zeros((len(posts), len(self)), dtype=np.float32)
        for row, (labels, line) in enumerate(zip(posts.labels, posts.lines)):
            if not isinstance(labels, tuple):
                raise ValueError(
                    f"post on line {line} of {posts.source} has the single label {labels!r}; "
                    "multi-label posts are read with load_posts(label_separator=...)"
                )
            for label in labels:
                try:
                    out[row, self.encode(label)] = 1.0
                except ValueError as err:
                    raise ValueError(f"{err} (line {line} of {posts.source})") from None
        return out

    def decode(self, index: int) -> Label:
        if not 0 <= index < len(self._labels):
            raise ValueError(f"class id {index} is out of range; expected 0..{len(self) - 1}")
        return self._labels[index]

    def to_dict(self) -> dict[str, Any]:
        return {"labels": list(self._labels)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LabelMap:
        if not isinstance(values, dict) or not isinstance(values.get("labels"), list):
            raise ValueError(f"label map {values!r} is invalid; expected {{'labels': [...]}}")
        return cls(values["labels"])

    def save(self, path: Union[str, os.PathLike[str]]) -> None:
        """Write the map as JSON, atomically (temporary file in the same folder, then rename)."""
        write_atomic(path, json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, path: Union[str, os.PathLike[str]]) -> LabelMap:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"label map {path} does not exist")
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"label map {path} is not valid JSON: {err}") from None
        return cls.from_dict(values)


# ====================
# Class balance
# ====================


def class_counts(label_ids: Sequence[int], num_classes: int) -> list[int]:
    """Posts per class id, for ids in [0, num_classes)."""
    return np.bincount(np.asarray(label_ids, dtype=np.int64), minlength=num_classes).tolist()


def balanced_sample_weights(label_ids: Sequence[int]) -> np.ndarray:
    """Per-post sampling weights 1 / (posts of its class): each class present is drawn equally
    often (BucketBatchSampler(weights=...), the trainer's `--sampler balanced`)."""
    ids = np.asarray(label_ids, dtype=np.int64)
    if ids.size == 0:
        raise ValueError("balanced sampling needs labelled posts; got none")
    return 1.0 / np.bincount(ids)[ids]


def read_class_weights(path: Union[str, os.PathLike[str]], label_map: LabelMap) -> list[float]:
    """Per-class loss weights from a file naming labels, in label_map's class order.

    JSON: an object {"label": weight, ...}. CSV/TSV: rows `label,weight`, an optional header
    line first. Every label of the map needs a weight and every label named must be one of
    the map's: either mistake is a ValueError naming the labels. Weights are finite and >= 0.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"class weights file {path} cannot be read: {err}") from None
    pairs: list[tuple[Any, Any, str]] = []  # (label, weight, where)
    if path.suffix.lower() == ".json":
        try:
            values = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"class weights file {path} is not valid JSON: {err}") from None
        if not isinstance(values, dict):
            raise ValueError(
                f"class weights file {path} holds a {type(values).__name__}; expected a JSON "
                'object {"label": weight, ...}'
            )
        pairs = [(k, v, f"key {k!r}") for k, v in values.items()]
    else:
        delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
        rows = [r for r in csv.reader(io.StringIO(text), delimiter=delimiter) if r]
        for number, row in enumerate(rows, start=1):
            if len(row) != 2:
                raise ValueError(
                    f"line {number} of class weights file {path} has {len(row)} fields; "
                    "expected 2: label, weight"
                )
            pairs.append((row[0], row[1].strip(), f"line {number}"))
        if pairs and not _is_number(pairs[0][1]):  # a header line
            pairs = pairs[1:]
    weights: dict[Label, float] = {}
    for label, value, where in pairs:
        key = canonical_label(label)
        number = float(value) if _is_number(value) else math.nan
        if not 0 <= number < math.inf:
            raise ValueError(
                f"class weights file {path}: the weight of label {label!r} ({where}) is "
                f"{value!r}; expected a finite number >= 0"
            )
        if key in weights:
            raise ValueError(f"class weights file {path} gives label {label!r} twice ({where})")
        weights[key] = number
    known = set(label_map.labels)
    unknown = [label for label in weights if label not in known]
    missing = [label for label in label_map.labels if label not in weights]
    if unknown or missing:
        problems = []
        if unknown:
            problems.append(f"unknown label(s) {', '.join(repr(v) for v in unknown)}")
        if missing:
            problems.append(f"no weight for {', '.join(repr(v) for v in missing)}")
        raise ValueError(
            f"class weights file {path}: {'; '.join(problems)}; the data's labels are "
            f"{', '.join(repr(v) for v in label_map.labels)}"
        )
    return [weights[label] for label in label_map.labels]


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def label_warnings(train: Posts, val: Posts) -> list[str]:
    """What looks wrong in a split's labels: labels that differ only by case (kept apart as
    different classes), classes with fewer than 2 posts, classes found only in validation."""
    assert train.labels is not None and val.labels is not None
    counts: dict[Label, int] = {}
    for label in [*train.labels, *val.labels]:
        counts[label] = counts.get(label, 0) + 1
    warnings = []
    by_case: dict[str, list[Label]] = {}
    for label in counts:
        if isinstance(label, str):
            by_case.setdefault(label.casefold(), []).append(label)
    for group in by_case.values():
        if len(group) > 1:
            warnings.append(
                f"labels {' and '.join(repr(v) for v in sorted(group))} differ only by case; "
                "they are kept apart as different classes (edit the file to merge them)"
            )
    rare = sorted((k for k, n in counts.items() if n < 2), key=lambda v: (isinstance(v, str), v))
    if rare:
        warnings.append(
            f"{len(rare)} class(es) have fewer than 2 posts, too few to learn and to "
            f"validate: {describe_labels(rare)}"
        )
    unseen = set(val.labels) - set(train.labels)
    if unseen:
        ordered = sorted(unseen, key=lambda v: (isinstance(v, str), v))
        warnings.append(
            f"{len(unseen)} class(es) are only in the validation posts, never trained on: "
            f"{describe_labels(ordered)}"
        )
    return warnings


def describe_labels(labels: Sequence[Label], limit: int = 20) -> str:
    """The labels, comma-separated, at most `limit` of them and a count of the rest."""
    shown = ", ".join(map(str, labels[:limit]))
    return shown + (f" and {len(labels) - limit} more" if len(labels) > limit else "")


# ====================
# Splitting
# ====================


def train_val_split(
    labels: Union[int, Sequence[Label]],
    val_fraction: float = 0.1,
    seed: int = 42,
    stratify: bool = True,
) -> tuple[list[int], list[int]]:
    """Seeded, disjoint train/validation indices, each sorted.

    `labels` is the label list (stratified: each class keeps its share in both parts, and a class
    with two or more posts has at least one in each) or just a count (plain random split).
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction!r} is invalid; expected a value in (0, 1)")
    n = labels if isinstance(labels, int) else len(labels)
    if n < 2:
        raise ValueError(f"cannot split {n} post(s) into train and validation; need at least 2")
    rng = np.random.default_rng(seed)
    if isinstance(labels, int) or not stratify:
        perm = rng.permutation(n)
        n_val = min(max(1, round(n * val_fraction)), n - 1)
        return sorted(perm[n_val:].tolist()), sorted(perm[:n_val].tolist())
    groups: dict[Label, list[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(label, []).append(i)
    keys = sorted(groups, key=lambda v: (isinstance(v, str), v))  # a fixed order: seeded
    # Largest-remainder quotas: each class gives its share, and the total is round(n * fraction).
    shares = [len(groups[k]) * val_fraction for k in keys]
    quotas = [math.floor(s) for s in shares]
    by_remainder = sorted(range(len(keys)), key=lambda j: quotas[j] - shares[j])
    for j in by_remainder[: max(0, round(n * val_fraction) - sum(quotas))]:
        quotas[j] += 1
    train: list[int] = []
    val: list[int] = []
    for key, n_val in zip(keys, quotas):
        members = rng.permutation(groups[key]).tolist()
        if len(members) >= 2:  # a class with two posts is seen in both parts
            n_val = min(max(1, n_val), len(members) - 1)
        val += members[:n_val]
        train += members[n_val:]
    if not val or not train:
        raise ValueError(
            f"val_fraction={val_fraction} leaves an empty part for {n} posts; "
            "use more posts or another fraction"
        )
    return sorted(train), sorted(val)


def split_posts(
    posts: Posts, val_fraction: float = 0.1, seed: int = 42, stratify: bool = True
) -> tuple[Posts, Posts]:
    """`train_val_split` applied to `posts` (stratified by label when it has labels)."""
    keys: Union[int, list[Label]] = len(posts) if posts.labels is None else posts.labels
    train, val = train_val_split(keys, val_fraction, seed, stratify)
    return posts.subset(train), posts.subset(val)


# ====================
# Tokenising, dataset, sampler, collate
# ====================


def tokenize_texts(
    tokenizer: Tokenizer, texts: Sequence[str], max_length: int, chunk_size: int = 4096
) -> list[np.ndarray]:
    """Every text's ids (special tokens included, truncated to `max_length`), unpadded.

    The tokenizer pads each chunk to its longest row; the attention mask says where the real
    tokens end, so rows are cut back to their own length (padding is always on the right).
    """
    out: list[np.ndarray] = []
    for start in range(0, len(texts), chunk_size):
        enc = tokenizer.encode_batch(
            list(texts[start : start + chunk_size]),
            max_length=max_length,
            padding="longest",
            truncation=True,
        )
        ids = np.asarray(enc.input_ids, dtype=np.int64)
        lengths = np.asarray(enc.attention_mask).astype(bool).sum(axis=1)
        out.extend(ids[row, :length].copy() for row, length in enumerate(lengths))
    return out


class PostsDataset(Dataset):
    """Pre-tokenised posts: item i is {"input_ids": int64 array, "label": int (if labelled)}.

    Multi-label posts: `labels` is a (posts, classes) array of 0/1 (LabelMap.multi_hot) and
    "label" is the post's float32 row."""

    def __init__(
        self,
        input_ids: Sequence[np.ndarray],
        labels: Optional[Union[Sequence[int], np.ndarray]] = None,
    ):
        if labels is not None and len(labels) != len(input_ids):
            raise ValueError(
                f"PostsDataset got {len(labels)} labels for {len(input_ids)} posts; "
                "expected one label per post"
            )
        for i, ids in enumerate(input_ids):
            if len(ids) == 0:
                raise ValueError(f"post {i} has no tokens; every post needs at least one token")
        self.input_ids = [np.asarray(ids, dtype=np.int64) for ids in input_ids]
        self.labels: Any = None
        if isinstance(labels, np.ndarray) and labels.ndim == 2:
            self.labels = labels.astype(np.float32)
        elif labels is not None:
            self.labels = [int(v) for v in labels]

    @classmethod
    def from_texts(
        cls,
        tokenizer: Tokenizer,
        texts: Sequence[str],
        labels: Optional[Union[Sequence[int], np.ndarray]] = None,
        max_length: int = 512,
    ) -> PostsDataset:
        return cls(tokenize_texts(tokenizer, texts, max_length), labels)

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item: dict[str, Any] = {"input_ids": self.input_ids[index]}
        if self.labels is not None:
            item["label"] = self.labels[index]
        return item

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.input_ids]


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of indices whose lengths are alike, so padding to the batch's longest is cheap.

    With shuffle: the indices are permuted, cut into pools of `pool_batches` batches, each pool is
    sorted by length and cut into batches, and the batches are shuffled. Without: one sort by
    length, batches in order (evaluation). The generator is seeded with seed + epoch, so an
    epoch's batches depend on nothing else: `set_epoch(k)` after a resume replays epoch k.

    Every index appears exactly once per epoch; only the last batch can be short, and
    drop_last=True drops it.

    weights (one per post, shuffle only): the epoch's posts are len(lengths) draws with
    replacement, post i with probability weights[i] / sum(weights), from the same seed + epoch
    generator, in place of the permutation; pools, batches and the cut between ranks follow as
    above. So each rank still gets its own positions of one global draw, and an epoch's draw
    depends on (seed, epoch) alone (balanced_sample_weights: every class equally likely).

    Sharded for torch.distributed (num_replicas > 1, rank in [0, num_replicas)): the batches are
    built exactly as a single process with batch_size * num_replicas builds them (same seed, same
    epoch), and each is cut into num_replicas near-equal parts; rank r takes part r. So R ranks
    with batch B see together what one process with batch R*B sees, and a test can compare them.
    With shuffle (training) every rank yields the same number of batches, as DDP needs: a final
    batch with fewer posts than ranks repeats its posts so no rank's part is empty. Without
    shuffle (evaluation) nothing is repeated, every post is seen once, and a rank whose part of
    the final batch is empty yields one batch fewer.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        pool_batches: int = 50,
        num_replicas: int = 1,
        rank: int = 0,
        weights: Optional[Sequence[float]] = None,
    ) -> None:
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} is invalid; expected a positive integer")
        if pool_batches < 1:
            raise ValueError(f"pool_batches={pool_batches!r} is invalid; expected >= 1")
        if not isinstance(num_replicas, int) or num_replicas < 1:
            raise ValueError(f"num_replicas={num_replicas!r} is invalid; expected an integer >= 1")
        if not isinstance(rank, int) or not 0 <= rank < num_replicas:
            raise ValueError(
                f"rank={rank!r} is invalid for num_replicas={num_replicas}; expected "
                f"0..{num_replicas - 1}"
            )
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.pool_batches = pool_batches
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.probabilities: Optional[np.ndarray] = None
        if weights is not None:
            w = np.asarray(weights, dtype=np.float64)
            if not shuffle:
                raise ValueError("weights= draws a training order; it needs shuffle=True")
            if w.shape != self.lengths.shape or not np.all(np.isfinite(w)) or np.any(w < 0):
                raise ValueError(
                    f"weights must be {len(self.lengths)} finite numbers >= 0, one per post; "
                    f"got shape {w.shape}"
                )
            if w.sum() <= 0:
                raise ValueError("weights are all 0; at least one post must be drawable")
            self.probabilities = w / w.sum()

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration yields."""
        self.epoch = epoch

    def __len__(self) -> int:
        n, bs = len(self.lengths), self.batch_size * self.num_replicas
        batches = n // bs if self.drop_last else math.ceil(n / bs)
        if not self.shuffle and not self.drop_last and n % bs and n % bs <= self.rank:
            batches -= 1  # this rank's part of the short final batch is empty
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        if self.num_replicas == 1:
            yield from self._global_batches()
            return
        for batch in self._global_batches():
            if self.shuffle and len(batch) < self.num_replicas:
                batch = [batch[i % len(batch)] for i in range(self.num_replicas)]
            part = np.array_split(np.asarray(batch, dtype=np.int64), self.num_replicas)[self.rank]
            if len(part):
                yield part.tolist()

    def _global_batches(self) -> Iterator[list[int]]:
        """The batches of batch_size * num_replicas posts, before the cut between ranks."""
        n, bs = len(self.lengths), self.batch_size * self.num_replicas
        if not self.shuffle:
            order = np.argsort(self.lengths, kind="stable")
            batches = [order[i : i + bs] for i in range(0, n, bs)]
        else:
            rng = np.random.default_rng(self.seed + self.epoch)
            if self.probabilities is None:
                perm = rng.permutation(n)
            else:
                perm = rng.choice(n, size=n, replace=True, p=self.probabilities)
            pool = bs * self.pool_batches  # a multiple of bs: only the final batch can be short
            batches = []
            for start in range(0, n, pool):
                members = perm[start : start + pool]
                members = members[np.argsort(self.lengths[members], kind="stable")]
                batches += [members[i : i + bs] for i in range(0, len(members), bs)]
            if self.drop_last and batches and len(batches[-1]) < bs:
                batches.pop()
            rng.shuffle(batches)  # the short batch, if kept, lands anywhere
        for batch in batches:
            if len(batch) == bs or not self.drop_last:
                yield batch.tolist()


def collate(samples: Sequence[dict[str, Any]], pad_token_id: int = 0) -> dict[str, torch.Tensor]:
    """Pad a list of dataset items to their longest: the batch dict every model takes.

    Returns input_ids (B, L) int64 padded with `pad_token_id`, attention_mask (B, L) bool, True on
    real tokens, and labels (B,) int64 when the items carry labels ((B, C) float32 multi-hot
    rows for multi-label items).
    """
    if not samples:
        raise ValueError("collate got an empty batch; expected at least one sample")
    lengths = [len(s["input_ids"]) for s in samples]
    input_ids = torch.full((len(samples), max(lengths)), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(samples), max(lengths)), dtype=torch.bool)
    for row, (sample, length) in enumerate(zip(samples, lengths)):
        input_ids[row, :length] = torch.as_tensor(sample["input_ids"], dtype=torch.long)
        attention_mask[row, :length] = True
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if "label" in samples[0] and isinstance(samples[0]["label"], np.ndarray):  # multi-hot rows
        batch["labels"] = torch.from_numpy(np.stack([s["label"] for s in samples]))
    elif "label" in samples[0]:
        batch["labels"] = torch.tensor([s["label"] for s in samples], dtype=torch.long)
    return batch


def make_loader(
    dataset: PostsDataset,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    pad_token_id: int = 0,
    drop_last: bool = False,
    num_replicas: int = 1,
    rank: int = 0,
    weights: Optional[Sequence[float]] = None,
) -> DataLoader:
    """A DataLoader over `dataset` with a BucketBatchSampler and padding `collate`.

    num_replicas / rank shard it for torch.distributed; weights draw the posts with replacement
    (see BucketBatchSampler)."""
    sampler = BucketBatchSampler(
        dataset.lengths,
        batch_size,
        shuffle=shuffle,
        seed=seed,
        drop_last=drop_last,
        num_replicas=num_replicas,
        rank=rank,
        weights=weights,
    )
    return DataLoader(
        dataset, batch_sampler=sampler, collate_fn=partial(collate, pad_token_id=pad_token_id)
    )


def build_dataloaders(
    train: Posts,
    val: Posts,
    tokenizer: Tokenizer,
    label_map: LabelMap,
    config: ModelConfig,
    num_replicas: int = 1,
    rank: int = 0,
) -> tuple[DataLoader, DataLoader]:
    """Train and validation loaders: tokenised once, bucketed, padded with config.pad_token_id.

    The training order is seeded by config.seed (+ epoch, via set_epoch); with
    config.sampler="balanced" its posts are drawn with replacement, every class equally likely
    (balanced_sample_weights). Validation runs in length order, unshuffled. num_replicas / rank
    give this rank's shard of both (config.batch_size posts per rank and batch; see
    BucketBatchSampler).
    """
    vocab_size = getattr(tokenizer, "vocab_size", None)
    if vocab_size is not None and vocab_size > config.vocab_size:
        # ids >= config.vocab_size would index past the model's embedding table
        raise ValueError(
            f"tokenizer vocab_size={vocab_size} is larger than the model's "
            f"config.vocab_size={config.vocab_size}; build the ModelConfig with "
            "vocab_size=tokenizer.vocab_size"
        )
    max_length = config.max_seq_length
    loaders = []
    for posts, shuffle in ((train, True), (val, False)):
        label_ids: Any = (
            label_map.multi_hot(posts) if config.multi_label else label_map.encode_all(posts)
        )
        dataset = PostsDataset.from_texts(tokenizer, posts.texts, label_ids, max_length=max_length)
        balanced = shuffle and config.sampler == "balanced"
        loaders.append(
            make_loader(
                dataset,
                config.batch_size,
                shuffle=shuffle,
                seed=config.seed,
                pad_token_id=config.pad_token_id,
                num_replicas=num_replicas,
                rank=rank,
                weights=balanced_sample_weights(label_ids) if balanced else None,
            )
        )
    return loaders[0], loaders[1]


def loader_order(loader: DataLoader) -> list[int]:
    """The dataset indices in the order `loader` yields them (to put predictions back in order)."""
    sampler = loader.batch_sampler
    if sampler is None:
        raise ValueError("loader_order needs a DataLoader built with a batch_sampler")
    return [i for batch in sampler for i in batch]
