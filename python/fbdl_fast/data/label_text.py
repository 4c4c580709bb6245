"""Labels as read from a posts file or given in memory: strings or integers, read as texts are.

    canonical_label(" spam\u200b")   # "spam"
    label_set("spam|negative")        # ("spam", "negative")

A string label loses its surrounding spaces and is put in Unicode NFC without format characters
(zero-width spaces, soft hyphens...): labels that look alike are one class. `LabelReport` says
what reading a file changed in its labels, and which labels spell a JSON list.
"""

from __future__ import annotations

import json
import logging
import re
import unicodedata
from pathlib import Path
from typing import Any, Optional, Union

from fbdl_fast.config import as_integer

Label = Union[str, int]
LabelSet = tuple[Label, ...]  # a multi-label post's labels (iter_posts(label_separator=...))

# The spellings read as integers: one per integer, so that no two labels written differently
# become one ("01" and "-0" stay strings, as "1" and "0" are already taken).
_INT_LABEL = re.compile(r"0|-?[1-9][0-9]*")
# The warnings speak for the posts reader: train shows that logger's warnings with its prefix.
logger = logging.getLogger("fbdl_fast.data.readers")


def label_set(value: Any, separator: str = "|") -> LabelSet:
    """A multi-label post's labels: a JSON list, or a string cut at `separator` ("spam|negative"),
    each part a label as canonical_label reads it (spaces around it dropped), repeats dropped,
    in the order written. An empty string or list (or None) is a post with no label. A label of
    a list may not hold the separator: predict writes a post's labels joined by it, and "a|b"
    would read back as two labels the run does not have (ValueError)."""
    if not separator:
        raise ValueError("the label separator is empty; expected a character such as |")
    if value is None:
        return ()
    if isinstance(value, list):
        parts: list[Any] = value
        for part in parts:
            if isinstance(part, str) and separator in part:
                raise ValueError(
                    f"label {part!r} holds the label separator {separator!r}: written as "
                    "predict writes a post's labels it would read back as several labels; "
                    "choose another separator (--label-separator, label_separator=) or "
                    "remove it from the label"
                )
    elif isinstance(value, str):
        parts = [part for part in value.split(separator) if part.strip()]
    else:
        parts = [value]
    labels = [canonical_label(part) for part in parts]
    return tuple(dict.fromkeys(labels))


def canonical_label(value: Any) -> Label:
    """A label as stored: ints stay ints, strings spelling an int become it, others stay str,
    read as `normal_label_text` reads them (NFC, no format characters, no surrounding spaces)."""
    if not isinstance(value, str):
        number = as_integer(value)  # numpy's integers too (a label array's items)
        if number is None:
            raise ValueError(
                f"label {value!r} is a {type(value).__name__}; labels are strings or integers"
            )
        return number
    if isinstance(value, str):
        value = normal_label_text(value)
        if _INT_LABEL.fullmatch(value):
            return int(value)
    return value


def normal_label_text(value: str) -> str:
    """A label string as texts are read: Unicode NFC, without format characters (category Cf:
    zero-width spaces and joiners, soft hyphens, byte-order marks, direction marks), without
    surrounding spaces. "spam" + U+200B and "spam" look alike, so they are one label."""
    if value.isascii():  # the common case, and no ASCII character is Cf or changes under NFC
        return value.strip()
    text = unicodedata.normalize("NFC", value)
    return "".join(c for c in text if unicodedata.category(c) != "Cf").strip()


class LabelReport:
    """What reading a file did to its string labels, said in one warning each at its end:
    labels that normalisation changed (and the label each merged with) and labels that spell
    a JSON list. Bounded: at most `limit` labels of each kind are remembered."""

    def __init__(self, separator: Optional[str], limit: int = 100) -> None:
        self.separator = separator
        self.limit = limit
        self.changed: dict[str, tuple[int, Label]] = {}  # as written -> (first line, label)
        self.verbatim: dict[Label, tuple[int, str]] = {}  # label -> (first line, as written)
        self.json_lists: dict[str, tuple[int, list[Any]]] = {}

    def note(self, value: Any, line: int) -> None:
        """Remember what reading `value` (a label column's value on `line`) changes."""
        if isinstance(value, list):
            parts: list[Any] = value
        elif isinstance(value, str):
            self._json_list(value.strip(), line)
            parts = value.split(self.separator) if self.separator else [value]
        else:
            return
        for part in parts:
            if not isinstance(part, str) or not part.strip():
                continue
            written, label = part.strip(), canonical_label(part)
            if normal_label_text(written) != written:
                if len(self.changed) < self.limit:
                    self.changed.setdefault(written, (line, label))
            elif label not in self.verbatim and len(self.verbatim) < 100 * self.limit:
                self.verbatim[label] = (line, written)

    def _json_list(self, written: str, line: int) -> None:
        if not (written.startswith("[") and written.endswith("]")) or written in self.json_lists:
            return
        try:
            value = json.loads(written)
        except json.JSONDecodeError:
            return
        if isinstance(value, list) and len(self.json_lists) < self.limit:
            self.json_lists[written] = (line, value)

    def warn(self, path: Path) -> None:
        """Log the warnings, naming `path` and the lines."""
        if self.changed:
            groups: dict[Label, list[str]] = {}
            for written, (line, label) in self.changed.items():
                groups.setdefault(label, []).append(f"{written!r} (line {line})")
            said = []
            for label, forms in groups.items():
                if label in self.verbatim:
                    line, written = self.verbatim[label]
                    forms.append(f"{written!r} (line {line})")
                if len(forms) > 1:
                    said.append(f"{' and '.join(forms)} are read as one label, {label!r}")
                else:
                    said.append(f"{forms[0]} is read as {label!r}")
            logger.warning(
                "%s: labels are read as texts are, in Unicode NFC without format characters "
                "(zero-width spaces, soft hyphens, ...): %s",
                path,
                "; ".join(said),
            )
        for written, (line, value) in self.json_lists.items():
            joined = "|".join(map(str, value))
            if self.separator is None:
                advice = (
                    f"for several labels a post, train with --multi-label (label_separator=) "
                    f"and write them {joined!r}, or give a JSONL file whose label is a list"
                )
            else:
                joined = self.separator.join(map(str, value))
                advice = (
                    f"write a post's labels as {joined!r} (the separator), or give a JSONL file "
                    "whose label is a real list"
                )
            logger.warning(
                "%s: label %r (line %d) is written as a JSON list but is read as one label of "
                "its own; %s",
                path,
                written,
                line,
                advice,
            )
