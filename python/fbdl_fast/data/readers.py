"""Posts in: CSV, TSV and JSON-lines files read into `Posts`, checked line by line.

    posts = load_posts("posts.csv", text_column="text", label_column="label")

`iter_posts` reads the same files one post at a time (prediction on a file of any size streams
through it). Every problem names the file, the line and what is accepted: a missing column, an
empty text, invalid UTF-8 (or `errors="replace"|"ignore"`), a UTF-16 file, a label that is
neither a string nor an integer. Multi-label files hold a set of labels per post
(`label_separator`).

A .csv file is read with commas, unless its header does not split on commas into the columns
asked for: then the delimiter is sniffed on the header line among ; tab | (spreadsheets in many
locales save CSV with semicolons), and the log says which one was used; a missing column's error
names the delimiter the header was split on. A .tsv file is read with tabs.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import json
import logging
import os
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NamedTuple, Optional, Union

from fbdl_fast.data.label_text import Label, LabelReport, LabelSet, canonical_label, label_set

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
ENCODING_ERRORS = ("strict", "replace", "ignore")  # what to do with invalid UTF-8 bytes
# The delimiters a .csv file's header is sniffed for, and their names in messages.
DELIMITER_NAMES = {",": "comma", ";": "semicolon", "\t": "tab", "|": "vertical bar"}
_SURROGATE = re.compile("[\ud800-\udfff]")  # only JSON escapes can put these in a str
logger = logging.getLogger(__name__)


# ====================
# Posts and loading
# ====================


@dataclass
class Posts:
    """Texts with their labels (None when the file has no label column) and source lines."""

    texts: list[str]
    labels: Optional[list[Union[Label, LabelSet]]]  # LabelSets: multi-label posts
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
    label: Optional[Union[Label, LabelSet]]  # a LabelSet when read with a label_separator
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
    is "spam", with a warning naming the merge); string labels are read as texts are, in Unicode
    NFC without format characters ("spam" + U+200B is "spam"; a warning names each label so
    changed, and the label it merged with); case is kept ("Spam" and "spam" are two classes;
    `label_warnings` says so). A label spelling a JSON list ('["spam", "urgent"]') is read as
    one label, with a warning naming the option meant (label_separator, or JSONL lists). Empty
    and whitespace-only texts are kept (the tokenizer turns them into [CLS] [SEP]); their count
    is logged at INFO level.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: empty file, missing column, missing text/label value, invalid UTF-8 or JSON;
            the message names the file, the line and what is accepted.
    """
    texts: list[str] = []
    labels: list[Union[Label, LabelSet]] = []
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
    if require_labels and label_column is not None and label_column == text_column:
        # Each post's label would be its own text: a model scores well on it and learns nothing.
        raise ValueError(
            f"the text column and the label column are both {text_column!r}; name two "
            "different columns"
        )
    fmt = _checked_format(path, format, errors)
    wanted = [text_column, *([label_column] if label_column and require_labels else [])]
    count = 0
    blank: list[int] = []
    spaced: dict[str, int] = {}  # labels written with surrounding spaces -> first line
    report = LabelReport(label_separator)  # labels changed by normalisation, JSON lists
    with open(path, "rb") as f:
        nul_lines: list[int] = []
        records, delimiter = _records(f, path, fmt, errors, wanted, nul_lines)
        has_labels = label_column is not None
        for line, record in records:
            if count == 0:  # columns are checked once, on the first record
                has_labels = _check_columns(
                    record, path, line, text_column, label_column, require_labels, delimiter
                )
                missing = [name for name in keep if name not in record]
                if missing:
                    raise ValueError(
                        f"column(s) {', '.join(map(repr, missing))} not found in {path} (line "
                        f"{line}); columns are: {', '.join(map(str, record))}"
                        f"{_split_note(record, delimiter)}"
                    )
            text = _text_value(record, text_column, path, line)
            if fmt == "jsonl" and _SURROGATE.search(text):  # a "\ud800" escape, unpaired
                text = _surrogates(text, errors, path, line)
            label: Any = None
            if has_labels:
                assert label_column is not None
                report.note(record.get(label_column), line)
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
    report.warn(path)
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


def file_columns(
    path: Union[str, os.PathLike[str]],
    text_column: str = "text",
    *,
    format: Optional[str] = None,
    errors: str = "strict",
) -> list[str]:
    """The columns of a posts file as `iter_posts` reads them: its CSV/TSV header (the delimiter
    chosen as iter_posts chooses it for `text_column`), or the keys of its first JSON line; []
    when it holds no post. Errors as iter_posts's."""
    path = Path(path)
    fmt = _checked_format(path, format, errors)
    with open(path, "rb") as f:
        records, _ = _records(f, path, fmt, errors, [text_column], None, say=False)
        first = next(records, None)
    return [] if first is None else [str(name) for name in first[1]]


def _checked_format(path: Path, format: Optional[str], errors: str) -> str:
    """The format of the posts file `path` ("csv", "tsv" or "jsonl"); ValueError for an unknown
    format or `errors`, a folder; FileNotFoundError for a missing file."""
    if format is not None and format not in ("csv", "tsv", "jsonl"):
        raise ValueError(f"format={format!r} is not supported; accepted: 'csv', 'tsv', 'jsonl'")
    fmt = format or FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(
            f"cannot tell the format of {path} from its extension {path.suffix!r}; accepted: "
            f"{', '.join(sorted(FORMATS))} (in Python, format='csv', 'tsv' or 'jsonl' also "
            "names it)"
        )
    if errors not in ENCODING_ERRORS:
        raise ValueError(
            f"errors={errors!r} is not supported; accepted: {', '.join(ENCODING_ERRORS)}"
        )
    if not path.exists():
        raise FileNotFoundError(f"posts file {path} does not exist")
    if path.is_dir():
        raise ValueError(f"posts file {path} is a directory; expected a CSV or JSONL file")
    return fmt


def _records(
    f: IO[bytes],
    path: Path,
    fmt: str,
    errors: str,
    wanted: Sequence[str],
    nul_lines: Optional[list[int]],
    say: bool = True,
) -> tuple[Iterator[tuple[int, dict[str, Any]]], Optional[str]]:
    """The records of an open posts file, each with its line, and the CSV/TSV delimiter (None
    for JSON lines): a tab in TSV; in CSV a comma, or the one sniffed on the header when it does
    not split on commas into the `wanted` columns (logged if `say`)."""
    lines = _decoded_lines(f, path, errors, nul_lines)
    if fmt == "jsonl":
        return _read_jsonl(lines, path), None
    delimiter = "\t"
    if fmt == "csv":
        delimiter, lines = _csv_delimiter(lines, path, wanted, say)
    return _read_csv(lines, path, delimiter), delimiter


def _csv_delimiter(
    lines: Iterator[tuple[int, str]], path: Path, wanted: Sequence[str], say: bool = True
) -> tuple[str, Iterator[tuple[int, str]]]:
    """The delimiter of a CSV file, read from its header line, and the lines (the header put
    back). A comma when the header splits on commas into the `wanted` columns; else the one
    csv.Sniffer finds among DELIMITER_NAMES, if the header splits on it into those columns, else
    the first of them that does, else the first that gives the text column (`wanted[0]`;
    logged, if `say`, when it is not a comma); else a comma, and the missing column's error
    names the delimiter the header seems to use."""
    peeked: list[tuple[int, str]] = []
    for item in lines:  # the header: the first line that is not blank
        peeked.append(item)
        if item[1].strip():
            break
    rest = itertools.chain(peeked, lines)
    header = peeked[-1][1] if peeked else ""

    def splits_into(delimiter: str, names: Sequence[str]) -> bool:
        try:
            fields = next(csv.reader([header], delimiter=delimiter), [])
        except csv.Error:
            return False
        return all(name in fields for name in names)

    if not header.strip() or splits_into(",", wanted):
        return ",", rest
    try:
        sniffed = [csv.Sniffer().sniff(header, delimiters="".join(DELIMITER_NAMES)).delimiter]
    except csv.Error:  # no delimiter stands out
        sniffed = []
    # Every wanted column, else the text column alone (a missing label column is then named
    # with the delimiter): the sniffed delimiter first.
    tries = [(d, names) for names in (wanted, wanted[:1]) for d in [*sniffed, *DELIMITER_NAMES]]
    for delimiter, names in tries:
        # Only a delimiter the header holds: a one-column header "splits" on any other.
        if delimiter != "," and delimiter in header and splits_into(delimiter, names):
            if say:
                logger.info(
                    "%s: its header splits on %ss (%r), not commas: read with %r as the delimiter",
                    path,
                    DELIMITER_NAMES[delimiter],
                    delimiter,
                    delimiter,
                )
            return delimiter, rest
    return ",", rest


def _split_note(record: dict[str, Any], delimiter: Optional[str]) -> str:
    """What a missing column's error adds about the delimiter the header was split on: always
    for a delimiter other than a comma, and for a comma when the header read as one column that
    holds another delimiter (the file is likely delimited by it)."""
    if delimiter is None:  # JSON lines
        return ""
    name = DELIMITER_NAMES[delimiter]
    if delimiter != ",":
        return f" (the header was split on {name}s, {delimiter!r})"
    only = str(next(iter(record))) if len(record) == 1 else ""
    other = next((d for d in DELIMITER_NAMES if d != "," and d in only), None)
    if other is None:
        return ""
    split = next(csv.reader([only], delimiter=other), [])
    return (
        f" (one column when split on commas; split on {DELIMITER_NAMES[other]}s, {other!r}, "
        f"they would be: {', '.join(split)}; the file is read so when its header then holds the "
        "columns asked for: check --text-column/--label-column)"
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
                sep = DELIMITER_NAMES[delimiter]
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
    delimiter: Optional[str] = None,
) -> bool:
    """Whether the record has the label column; ValueError naming the columns (and the CSV
    delimiter they were split on, see _split_note) when the text column, or a required label
    column, is missing."""
    columns = ", ".join(str(c) for c in record) + _split_note(record, delimiter)
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
