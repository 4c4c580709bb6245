"""Posts given as Python lists (fbdl_fast.train(texts=..., labels=...)), read as a file's are.

A label list gets what a label column gets: each label read as texts are (NFC, no format
characters, no surrounding spaces), with one warning for labels that merge ("spam" and "spam"
+ U+200B) or that spell a JSON list; an item that is not a text or a label is a ValueError
naming its index.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from fbdl_fast.data.label_text import LabelReport, canonical_label, label_set
from fbdl_fast.data.readers import Posts


def posts_from_lists(
    texts: Sequence[str],
    labels: Optional[Sequence[Any]],
    source: str,
    *,
    multi_label: bool = False,
    label_separator: str = "|",
) -> Posts:
    """Posts from texts and their labels (strings or integers; multi_label: a list of them, or a
    string cut at `label_separator`); their "lines" are the 1-based positions in the lists and
    `source` names them in warnings. ValueError naming the first item that is not one."""
    if isinstance(texts, str) or labels is None or isinstance(labels, str):
        raise ValueError("texts and labels are sequences, one label (or label set) a text")
    texts, labels = list(texts), list(labels)
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts and {len(labels)} labels; expected one a text")
    if not texts:
        raise ValueError("texts and labels are empty; expected at least one labelled post")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"texts[{i}] is a {type(text).__name__}; expected str")
    read = []
    report = LabelReport(label_separator if multi_label else None)
    for i, value in enumerate(labels):
        try:
            read.append(
                label_set(value, label_separator) if multi_label else canonical_label(value)
            )
        except ValueError as err:
            raise ValueError(f"labels[{i}]: {err}") from None
        report.note(value, i + 1)
    report.warn(Path(source))
    return Posts(texts, read, list(range(1, len(texts) + 1)), source)


__all__ = ["posts_from_lists"]
