"""A transfer set made from the training posts, for `fbdl-fast distill --augment N`.

A student learns the teacher's function from the posts the teacher labels. With no unlabelled
posts (`--unlabelled`), the training posts alone show the student the teacher's outputs at a
few thousand points, where the teacher's soft targets are nearly one-hot. Variants of those
posts, labelled by the teacher (soft targets only), show it the teacher's outputs around them.

Each variant of a post is made from its words (split on whitespace), in this order:

1. masking: each word becomes `mask_token` ("[MASK]", which WordPiece tokenizers and this
   project's trained tokenizers keep as one special token) with probability `mask`;
2. replacement: each word not masked becomes a word drawn from the training posts' words (their
   unigram distribution: every word occurrence of the training posts is equally likely) with
   probability `replace`;
3. n-gram sampling: with probability `ngram`, only a random span of the words is kept, its
   length drawn uniformly in [ceil(n / 2), n - 1] for a post of n >= 2 words;
4. span shuffling: with probability `shuffle`, the words are cut at two random points into
   three spans, which are put back in a random order other than the original.

Steps 1-3 are the recipe of Tang et al. 2019, "Distilling Task-Specific Knowledge from BERT into
Simple Neural Networks" (masking p=0.1, POS-guided replacement p=0.1, n-gram sampling p=0.25);
the replacement here draws from the unigram distribution, with no part-of-speech tagger. TinyBERT
(Jiao et al. 2020, "TinyBERT: Distilling BERT for Natural Language Understanding") replaces words
with similar ones, likewise to grow a task's transfer set. Span shuffling is a cheap word-order
perturbation in the same spirit. The variants are drawn from `seed` alone: the same posts,
settings and seed give the same variants (numpy's PCG64, not the global random state).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

MASK_TOKEN = "[MASK]"
# `fbdl-fast distill`'s --augment when no --unlabelled is given: on a seeded sample of the Debian
# task (benches/studies/distill_students.py) 2 variants a post took a distilled CNN's test
# macro-F1 from 0.461 to 0.521 (its own embeddings) and, with MiniLM's embeddings, to 0.684.
DEFAULT_AUGMENT = 2


@dataclass(frozen=True)
class AugmentSettings:
    """How many variants a training post gets and the probabilities of each change."""

    variants: int = 0  # variants per training post; 0: no transfer set
    mask: float = 0.1  # per word: becomes mask_token
    replace: float = 0.1  # per word not masked: becomes a word of the training posts
    ngram: float = 0.25  # per variant: only a random span of the words is kept
    shuffle: float = 0.1  # per variant: three spans of words are reordered
    mask_token: str = MASK_TOKEN

    def __post_init__(self) -> None:
        check_variants(self.variants)
        for name in ("mask", "replace", "ngram", "shuffle"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
                raise ValueError(
                    f"augmentation {name}={value!r} is invalid; accepted: a probability in [0, 1]"
                )
        if not self.mask_token or any(c.isspace() for c in self.mask_token):
            raise ValueError(
                f"augmentation mask_token={self.mask_token!r} is invalid; accepted: one word "
                "with no whitespace, e.g. [MASK]"
            )

    def to_dict(self) -> dict[str, Any]:
        """The settings as config.json and the cache record them."""
        return dataclasses.asdict(self)


def check_variants(value: Any) -> None:
    """ValueError unless `value` is a number of variants per post (an integer >= 0)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(
            f"--augment {value!r} is invalid; accepted: an integer >= 0 (variants per training "
            "post; 0: none)"
        )


def settings_sha256(
    texts_sha256: str, teacher_sha256: str, settings: AugmentSettings, seed: int
) -> str:
    """The cache key of a transfer set: the training texts', the teacher checkpoint's SHA-256,
    the settings and the seed, hashed together."""
    record = {
        "texts_sha256": texts_sha256,
        "teacher_sha256": teacher_sha256,
        "settings": settings.to_dict(),
        "seed": int(seed),
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode("utf-8")).hexdigest()


def augment_texts(texts: Sequence[str], settings: AugmentSettings, seed: int) -> list[str]:
    """settings.variants variants of each text, in order: the variants of texts[0] first.

    A text with no words gets copies of itself (nothing to change)."""
    if settings.variants == 0:
        return []
    rng = np.random.Generator(np.random.PCG64(seed))
    words_of = [text.split() for text in texts]
    pool = [word for words in words_of for word in words]  # unigram distribution
    out: list[str] = []
    for words in words_of:
        for _ in range(settings.variants):
            out.append(" ".join(_variant(words, pool, settings, rng)) if words else "")
    return out


def _variant(
    words: list[str], pool: list[str], settings: AugmentSettings, rng: np.random.Generator
) -> list[str]:
    n = len(words)
    draws = rng.random(n)
    picks = rng.integers(0, len(pool), size=n)
    changed = []
    for word, draw, pick in zip(words, draws, picks):
        if draw < settings.mask:
            changed.append(settings.mask_token)
        elif draw < settings.mask + (1.0 - settings.mask) * settings.replace:
            changed.append(pool[int(pick)])  # replace, given not masked: p = replace
        else:
            changed.append(word)
    if n >= 2 and rng.random() < settings.ngram:
        length = int(rng.integers(math.ceil(n / 2), n))  # in [ceil(n/2), n - 1]
        start = int(rng.integers(0, n - length + 1))
        changed = changed[start : start + length]
    m = len(changed)
    if m >= 3 and rng.random() < settings.shuffle:
        a, b = sorted(int(x) for x in rng.choice(np.arange(1, m), size=2, replace=False))
        spans = [changed[:a], changed[a:b], changed[b:]]
        orders = [(0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)]  # never the original
        order = orders[int(rng.integers(0, len(orders)))]
        changed = [word for i in order for word in spans[i]]
    return changed


__all__ = [
    "DEFAULT_AUGMENT",
    "MASK_TOKEN",
    "AugmentSettings",
    "augment_texts",
    "check_variants",
    "settings_sha256",
]
