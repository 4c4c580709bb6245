"""Property test: any Unicode string encodes without error, ids are in the vocabulary, offsets
lie inside the text, and batch, single and multi-threaded encodings agree."""

from __future__ import annotations

import numpy as np
import pytest

hypothesis = pytest.importorskip(
    "hypothesis", reason="hypothesis (a dev extra) is absent: pip install -e '.[dev]'"
)
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fbdl_fast.tokenizer import Tokenizer, num_threads, set_num_threads  # noqa: E402

CORPUS = [
    "I love this 😍 so much!!", "Café naïve 中文 https://t.co/x @bob #tbt :-) 1,000",
    "👨\u200d👩\u200d👧 family time", "worst. day. ever.", "sooooo gooood",
] * 5  # fmt: skip

# Text that leans towards the hard cases: emoji, marks, CJK, controls, URLs, specials.
FRAGMENTS = st.sampled_from(
    ["😍", "\u200d", "\ufe0f", "🏽", "\u0301", "中", "[SEP]", "[PAD]", "http://a.io/x", "@u", "#h",
     ":)", "\x00", "\t", "\u2028", "İ", "ß", "ﬁ", "1,000", "a" * 101, " "]
)  # fmt: skip
TEXTS = st.one_of(
    st.text(max_size=200),
    st.lists(st.one_of(FRAGMENTS, st.text(max_size=5)), max_size=30).map("".join),
)


@pytest.fixture(scope="module", params=["bert", "social"])
def tok(request):
    options = (
        {"replace_urls": True, "shorten_elongations": True} if request.param == "social" else {}
    )
    return Tokenizer.train(
        CORPUS, vocab_size=150, min_frequency=1, pre_tokenizer=request.param, **options
    )


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(texts=st.lists(TEXTS, min_size=1, max_size=6))
def test_any_text_encodes_within_bounds(tok, texts):
    batch = tok.encode_batch(texts, return_offsets=True)
    assert batch.input_ids.min() >= 0 and batch.input_ids.max() < tok.vocab_size
    for i, text in enumerate(texts):
        n = int(batch.lengths[i])
        assert (
            n >= 2 and batch.attention_mask[i, :n].all() and not batch.attention_mask[i, n:].any()
        )
        spans = batch.offsets[i, :n]
        assert (spans[:, 0] <= spans[:, 1]).all() and (spans[:, 1] <= len(text)).all()
        assert batch.input_ids[i, :n].tolist() == tok.encode(text)
        for piece, (start, end) in tok.pre_tokenize(text):
            assert 0 <= start < end <= len(text), (piece, start, end)
        tok.decode(batch.input_ids[i, :n])  # never raises on ids it produced


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(texts=st.lists(TEXTS, min_size=1, max_size=200))
def test_thread_count_does_not_change_ids(tok, texts):
    before = num_threads()
    try:
        set_num_threads(1)
        one = tok.encode_batch(texts, max_length=32)
        set_num_threads(3)
        three = tok.encode_batch(texts, max_length=32)
    finally:
        set_num_threads(before)
    np.testing.assert_array_equal(one.input_ids, three.input_ids)
    assert one.input_ids.shape[1] <= 32
