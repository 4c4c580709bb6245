"""Labels: the label map (label <-> class id), class balance and warnings about the labels.

    label_map = LabelMap.from_labels(posts.labels)

`LabelMap` is saved beside a run (label_map.json) and checked against the checkpoint on load.
Class balance: the counts per class, the "balanced" weights (n / (classes x n_class)) and
per-post sampling weights, and a class-weights file (JSON object or CSV rows) read against a
label map.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Union, cast

import numpy as np

from fbdl_fast.data.label_text import Label, LabelSet, canonical_label
from fbdl_fast.data.readers import Posts
from fbdl_fast.files import write_atomic

# Below these counts train warns (not an error: a first try on a handful of posts may be what is
# wanted, but what it learns and its validation figures mean little): posts of one class, and
# posts in all (training and validation).
MIN_CLASS_POSTS = 10
MIN_POSTS = 50

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
                # a LabelSet (a multi-label post) is refused: ValueError naming it
                ids.append(self.encode(cast(Label, label)))
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
    the map's: either mistake is a ValueError naming the labels. Weights are finite and >= 0,
    not all 0; a label given twice (a repeated JSON key included) is an error.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"class weights file {path} cannot be read: {err}") from None
    pairs: list[tuple[Any, Any, str]] = []  # (label, weight, where)
    if path.suffix.lower() == ".json":
        try:
            # Every (key, value) pair as written: json.loads alone keeps the last of a repeated
            # key, so a repeated label would silently take its last weight.
            values = json.loads(text, object_pairs_hook=_JsonObject)
        except json.JSONDecodeError as err:
            raise ValueError(f"class weights file {path} is not valid JSON: {err}") from None
        if not isinstance(values, _JsonObject):
            raise ValueError(
                f"class weights file {path} holds a {type(values).__name__}; expected a JSON "
                'object {"label": weight, ...}'
            )
        pairs = [(k, v, f"key {k!r}") for k, v in values]
    else:
        delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
        rows = [r for r in csv.reader(io.StringIO(text), delimiter=delimiter) if r]
        for line, row in enumerate(rows, start=1):
            if len(row) != 2:
                raise ValueError(
                    f"line {line} of class weights file {path} has {len(row)} fields; "
                    "expected 2: label, weight"
                )
            pairs.append((row[0], row[1].strip(), f"line {line}"))
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
    return weights_in_label_order(weights, label_map, f"class weights file {path}")


class _JsonObject(list):  # type: ignore[type-arg]
    """A JSON object as its (key, value) pairs in the order written, repeats kept."""


def weights_in_label_order(
    weights: Mapping[Any, Any], label_map: LabelMap, source: str = "class weights"
) -> list[float]:
    """Per-class weights given as label -> weight, as a list in label_map's class order.

    Every label of the map needs a weight, every label named must be one of the map's, each
    weight is a finite number >= 0 and at least one is > 0 (all 0 would make the loss 0 on every
    post, so nothing is learnt): a ValueError starting with `source` names what is wrong.
    """
    ordered: dict[Label, float] = {}
    for label, value in weights.items():
        key = canonical_label(label)
        number = float(value) if _is_number(value) else math.nan
        if not 0 <= number < math.inf:
            raise ValueError(
                f"{source}: the weight of label {label!r} is {value!r}; expected a finite "
                "number >= 0"
            )
        if key in ordered:
            raise ValueError(f"{source} gives label {key!r} twice")
        ordered[key] = number
    known = set(label_map.labels)
    unknown = [label for label in ordered if label not in known]
    missing = [label for label in label_map.labels if label not in ordered]
    if unknown or missing:
        problems = []
        if unknown:
            problems.append(f"unknown label(s) {', '.join(repr(v) for v in unknown)}")
        if missing:
            problems.append(f"no weight for {', '.join(repr(v) for v in missing)}")
        raise ValueError(
            f"{source}: {'; '.join(problems)}; the data's labels are "
            f"{', '.join(repr(v) for v in label_map.labels)}"
        )
    if not any(ordered.values()):
        raise ValueError(
            f"{source}: every class weight is 0 ({describe_labels(label_map.labels)}), so the "
            "loss would be 0 on every post and nothing would be learnt; at least one must be > 0"
        )
    return [ordered[label] for label in label_map.labels]


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
    different classes), classes with fewer than 2 posts, classes with fewer than
    MIN_CLASS_POSTS, classes found only in validation, fewer than MIN_POSTS posts in all.
    Multi-label posts (a LabelSet each) count once for each of their labels."""
    assert train.labels is not None and val.labels is not None
    train_labels, val_labels = _each_label(train.labels), _each_label(val.labels)
    counts: dict[Label, int] = {}
    for label in [*train_labels, *val_labels]:
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
    few = sorted(
        (k for k, n in counts.items() if 2 <= n < MIN_CLASS_POSTS),
        key=lambda v: (isinstance(v, str), v),
    )
    if few:
        shown = describe_labels([f"{label} ({counts[label]})" for label in few])
        warnings.append(
            f"{len(few)} class(es) have fewer than {MIN_CLASS_POSTS} posts, too few to learn "
            f"reliably (posts of each in all): {shown}"
        )
    unseen = set(val_labels) - set(train_labels)
    if unseen:
        ordered = sorted(unseen, key=lambda v: (isinstance(v, str), v))
        warnings.append(
            f"{len(unseen)} class(es) are only in the validation posts, never trained on: "
            f"{describe_labels(ordered)}"
        )
    total = len(train) + len(val)
    if total < MIN_POSTS:
        warnings.append(
            f"only {total} posts ({len(train)} train / {len(val)} validation), fewer than "
            f"{MIN_POSTS}: the model can learn little from so few, and its validation figures "
            f"rest on {len(val)} post(s)"
        )
    return warnings


def _each_label(labels: Sequence[Any]) -> list[Label]:
    """The labels of single-label posts as they are; those of multi-label posts, flattened."""
    return [label for item in labels for label in (item if isinstance(item, tuple) else (item,))]


def describe_labels(labels: Sequence[Label], limit: int = 20) -> str:
    """The labels, comma-separated, at most `limit` of them and a count of the rest."""
    shown = ", ".join(map(str, labels[:limit]))
    return shown + (f" and {len(labels) - limit} more" if len(labels) > limit else "")
