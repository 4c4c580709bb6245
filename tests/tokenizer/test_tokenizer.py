"""fbdl_fast.Tokenizer: training, encoding, padding/truncation, offsets, decoding, saving, the
social pre-tokenizer, threads and errors. Parity with Hugging Face is in test_tokenizer_parity.py,
the property test in test_tokenizer_properties.py."""

from __future__ import annotations

import json
import multiprocessing
import pickle
import warnings

import numpy as np
import pytest

from fbdl_fast import _tokenizer
from fbdl_fast.tokenizer import BatchEncoding, Tokenizer, num_threads, set_num_threads

POSTS = [
    "Loving the new phone!! Battery lasts forever 😍",
    "worst customer service ever, never again",
    "Check https://example.com/deal?id=42 for 50% off #sale @shop",
    "Café au lait is my favourite drink ☕",
    "the the the cat sat on the mat",
] * 4


def vocab_file(tmp_path, tokens):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def tiny(tmp_path):
    """A hand-written BERT vocabulary: ids are known, so expected outputs are hand-computed."""
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "!", ",", "un",
              "##aff", "##able", "cafe", "##s"]  # fmt: skip
    return Tokenizer.from_bert_vocab(vocab_file(tmp_path, tokens))


@pytest.fixture(scope="module")
def trained():
    return Tokenizer.train(POSTS, vocab_size=200, min_frequency=2)


def test_encode_hand_computed(tiny):
    assert tiny.encode("Hello, WORLD!") == [2, 5, 8, 6, 7, 3]
    assert tiny.encode("unaffable cafés", add_special_tokens=False) == [9, 10, 11, 12, 13]
    assert tiny.encode("hello xyz") == [2, 5, 1, 3]  # unknown word -> one [UNK]
    assert tiny.encode("hello [SEP] world") == [2, 5, 3, 6, 3]  # specials matched in raw text
    assert tiny.encode("") == [2, 3]


def test_encode_batch_padding_and_mask(tiny):
    batch = tiny.encode_batch(["hello", "hello world !", ""])
    assert isinstance(batch, BatchEncoding)
    assert batch.input_ids.dtype == np.int64 and batch.attention_mask.dtype == np.int64
    np.testing.assert_array_equal(
        batch.input_ids, [[2, 5, 3, 0, 0], [2, 5, 6, 7, 3], [2, 3, 0, 0, 0]]
    )
    np.testing.assert_array_equal(
        batch.attention_mask, [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    )
    np.testing.assert_array_equal(batch.lengths, [3, 5, 2])
    assert batch["input_ids"] is batch.input_ids and len(batch) == 3
    batch.input_ids[0, 0] = 7  # writable: torch.from_numpy works without a warning


def test_encode_batch_max_length_truncation(tiny):
    texts = ["hello world hello world", "hello"]
    cut = tiny.encode_batch(texts, max_length=4)
    np.testing.assert_array_equal(cut.input_ids, [[2, 5, 6, 3], [2, 5, 3, 0]])
    fixed = tiny.encode_batch(texts, max_length=6, padding="max_length")
    np.testing.assert_array_equal(fixed.input_ids, [[2, 5, 6, 5, 6, 3], [2, 5, 3, 0, 0, 0]])
    # Without truncation a longer row widens the batch.
    wide = tiny.encode_batch(texts, max_length=4, padding="max_length", truncation=False)
    assert wide.input_ids.shape == (2, 6)
    bare = tiny.encode_batch(texts, add_special_tokens=False, max_length=3)
    np.testing.assert_array_equal(bare.input_ids, [[5, 6, 5], [5, 0, 0]])
    same = tiny.encode_batch(["hello world", "world hello"], padding=False)
    np.testing.assert_array_equal(same.input_ids, [[2, 5, 6, 3], [2, 6, 5, 3]])


def test_offsets_are_character_spans(tiny):
    text = "Héllo, wörld! unaffable"
    batch = tiny.encode_batch([text], return_offsets=True)
    spans = [tuple(s) for s in batch.offsets[0]]
    assert spans == [(0, 0), (0, 5), (5, 6), (7, 12), (12, 13), (14, 16), (16, 19), (19, 23),
                     (0, 0)]  # fmt: skip
    assert [text[s:e] for s, e in spans[1:-1]] == ["Héllo", ",", "wörld", "!", "un", "aff", "able"]
    assert tiny.encode_batch([text]).offsets is None


def test_decode(tiny):
    assert tiny.decode([2, 5, 8, 6, 7, 3]) == "hello, world!"
    assert tiny.decode([9, 10, 11]) == "unaffable"
    assert tiny.decode(np.array([2, 5, 3]), skip_special_tokens=False) == "[CLS] hello [SEP]"


def test_vocabulary_accessors(tiny):
    assert tiny.vocab_size == 14
    assert tiny.token_to_id("world") == 6 and tiny.token_to_id("nope") is None
    assert tiny.id_to_token(10) == "##aff" and tiny.id_to_token(99) is None
    assert (tiny.pad_token_id, tiny.unk_token_id, tiny.cls_token_id, tiny.sep_token_id) == (
        0, 1, 2, 3)  # fmt: skip
    assert tiny.get_vocab()["##s"] == 13


def test_pre_tokenize_pieces_and_offsets(tiny):
    assert tiny.pre_tokenize("Héllo,  wörld 中文") == [
        ("hello", (0, 5)), (",", (5, 6)), ("world", (8, 13)), ("中", (14, 15)), ("文", (15, 16))
    ]  # fmt: skip


def test_train_special_tokens_first_and_frequent_words(trained):
    assert [trained.id_to_token(i) for i in range(5)] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]",
                                                          "[MASK]"]  # fmt: skip
    assert trained.pad_token_id == 0
    assert trained.vocab_size <= 200
    # "the" occurs 4 x 5 times: a whole token; it encodes to itself.
    the = trained.token_to_id("the")
    assert the is not None and trained.encode("the", add_special_tokens=False) == [the]
    ids = trained.encode("Loving the cat")
    assert trained.decode(ids) == "loving the cat"


def test_train_word_level_and_extra_special_tokens():
    tok = Tokenizer.train(["b a a c c c", "c"], vocab_size=50, min_frequency=2,
                          special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<X>"],
                          model="wordlevel")  # fmt: skip
    assert [tok.id_to_token(i) for i in range(tok.vocab_size)] == [
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<X>", "c", "a"]  # fmt: skip
    assert tok.encode("a b c <X>", add_special_tokens=False) == [7, 1, 6, 5]


def test_train_from_iterator_and_files_agree(tmp_path):
    path = tmp_path / "posts.txt"
    path.write_text("\n".join(POSTS), encoding="utf-8")
    from_iter = Tokenizer.train(iter(POSTS), vocab_size=120)
    from_files = Tokenizer.train_from_files([path], vocab_size=120)
    assert from_iter.get_vocab() == from_files.get_vocab()


def test_save_and_load_encode_identically(tmp_path, trained):
    path = tmp_path / "tok.json"
    trained.save(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    # Version 1: the newest format (FORMAT_VERSION) is written only for settings that need it.
    assert data["format"] == "fbdl_fast.tokenizer" and data["version"] == 1
    assert data["pre_tokenizer"] == {"type": "bert"} and _tokenizer.FORMAT_VERSION >= 1
    loaded = Tokenizer.from_file(path)
    a, b = trained.encode_batch(POSTS), loaded.encode_batch(POSTS)
    np.testing.assert_array_equal(a.input_ids, b.input_ids)
    assert loaded.get_vocab() == trained.get_vocab()
    assert [p.name for p in tmp_path.iterdir()] == ["tok.json"]  # no temporary file left
    clone = pickle.loads(pickle.dumps(trained))
    assert clone.encode(POSTS[2]) == trained.encode(POSTS[2])


def test_identical_output_for_any_thread_count(trained):
    texts = [f"{p} number {i}" for i, p in enumerate(POSTS * 40)]
    before = num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            set_num_threads(n)
            assert num_threads() == n
            results.append(trained.encode_batch(texts, return_offsets=True))
    finally:
        set_num_threads(before)
    for r in results[1:]:
        np.testing.assert_array_equal(r.input_ids, results[0].input_ids)
        np.testing.assert_array_equal(r.offsets, results[0].offsets)
    single = [trained.encode(t) for t in texts[:50]]
    assert [list(row[:n]) for row, n in zip(results[0].input_ids, results[0].lengths)][
        :50
    ] == single


def test_social_pre_tokenizer_keeps_units():
    posts = ["@anna check https://t.co/AbC #blessed 👍🏽 1,000 :-) sooooo good",
             "mail bob@x.com 👨‍👩‍👧 www.site.org/x"] * 3  # fmt: skip
    tok = Tokenizer.train(posts, vocab_size=300, min_frequency=1, pre_tokenizer="social",
                          shorten_elongations=True)  # fmt: skip
    pieces = [p for p, _ in tok.pre_tokenize(posts[0])]
    assert pieces == ["@anna", "check", "https://t.co/abc", "#blessed", "👍🏽", "1,000", ":-)",
                      "sooo", "good"]  # fmt: skip
    family = "👨\u200d👩\u200d👧"
    assert tok.pre_tokenize(posts[1])[2] == (family, (15, 20))
    assert tok.token_to_id(family) is not None  # frequent emoji sequence learned whole


def test_social_placeholders():
    posts = ["@anna see http://x.io/1 or 42 pics", "@bob 7 links www.y.com"] * 2
    options = {"replace_urls": True, "replace_mentions": True, "replace_numbers": True}
    tok = Tokenizer.train(posts, vocab_size=100, min_frequency=1, pre_tokenizer="social", **options)
    url, user, num = (tok.token_to_id(t) for t in ("[URL]", "[USER]", "[NUM]"))
    ids = tok.encode("@zed http://z.io 99", add_special_tokens=False)
    assert ids == [user, url, num]


def test_nfkc_option_folds_compatibility_forms():
    tok = Tokenizer.train(["abc fine"] * 3, vocab_size=60, unicode_normalization="NFKC")
    assert tok.encode("ＡＢＣ ﬁne") == tok.encode("abc fine")
    plain = Tokenizer.train(["abc fine"] * 3, vocab_size=60)
    assert plain.encode("ＡＢＣ") != plain.encode("abc")


def test_errors_are_clear(tmp_path, tiny):
    with pytest.raises(FileNotFoundError, match=r"missing\.json"):
        Tokenizer.from_file(tmp_path / "missing.json")
    with pytest.raises(FileNotFoundError, match=r"nope\.txt"):
        Tokenizer.from_bert_vocab(tmp_path / "nope.txt")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="not valid JSON"):
        Tokenizer.from_file(bad)
    with pytest.raises(ValueError, match=r"no unknown token \"\[UNK\]\""):
        Tokenizer.from_bert_vocab(vocab_file(tmp_path, ["[PAD]", "hello"]))
    newer = json.loads(tiny.to_str())
    newer["version"] = 99
    with pytest.raises(ValueError, match="format version 99 is not supported"):
        Tokenizer.from_str(json.dumps(newer))
    with pytest.raises(TypeError, match=r"texts\[1\] is int, expected str"):
        tiny.encode_batch(["ok", 3])
    with pytest.raises(TypeError, match="not a single str"):
        tiny.encode_batch("hello")
    with pytest.raises(ValueError, match="max_length=2 is too small"):
        tiny.encode_batch(["hello"], max_length=2)
    with pytest.raises(ValueError, match="padding=False needs every text"):
        tiny.encode_batch(["hello", "hello world"], padding=False)
    with pytest.raises(ValueError, match="needs max_length"):
        tiny.encode_batch(["hello"], padding="max_length")
    with pytest.raises(ValueError, match="padding='middle'"):
        tiny.encode_batch(["hello"], padding="middle")
    with pytest.raises(ValueError, match="token id 14 is out of range"):
        tiny.decode([5, 14])
    with pytest.raises(ValueError, match="num_threads=0"):
        set_num_threads(0)
    for threads in (-1, 10**6, 2.0, "2"):
        with pytest.raises(ValueError, match=rf"num_threads={threads!r} is not accepted; expected"):
            set_num_threads(threads)  # type: ignore[arg-type]
    for length in ("3", 1.5, True, 0):
        with pytest.raises(ValueError, match=rf"max_length={length!r} must be a positive int"):
            tiny.encode_batch(["hello"], max_length=length)  # type: ignore[arg-type]
    assert tiny.encode_batch(["hello"], max_length=np.int64(8)).input_ids.shape[1] <= 8
    with pytest.raises(ValueError, match="vocab_size=3 is too small"):
        Tokenizer.train(["a b"], vocab_size=3)
    with pytest.raises(ValueError, match='pre_tokenizer="tweet" is not supported'):
        Tokenizer.train(["a b"], vocab_size=30, pre_tokenizer="tweet")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"replace_urls=True needs the token \"\[URL\]\""):
        data = json.loads(tiny.to_str())
        data["pre_tokenizer"] = {"type": "social", "replace_urls": True}
        Tokenizer.from_str(json.dumps(data))


def test_a_batch_too_large_to_allocate_is_a_memory_error_not_an_abort() -> None:
    """max_length=2**45 with padding to it asks for 2**48 bytes, past any address space: the
    Rust core reports it as a MemoryError naming what to lower, and the process lives on (in a
    child process, so that an abort fails this test instead of ending the run)."""
    import subprocess
    import sys

    code = (
        "from fbdl_fast import Tokenizer\n"
        "tok = Tokenizer.train(['hello world', 'hello there'], vocab_size=50)\n"
        "try:\n"
        "    tok.encode_batch(['hello'], max_length=2**45, padding='max_length')\n"
        "except MemoryError as err:\n"
        "    print('MemoryError:', err)\n"
        "print(tok.encode_batch(['hello']).input_ids.shape)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (
        "MemoryError: the batch's arrays of 1 rows x 35184372088832 ids do not fit" in done.stdout
    )
    assert "lower max_length" in done.stdout and "(1, 3)" in done.stdout


def _encode_in_child(tok: Tokenizer, texts: list[str], queue) -> None:
    queue.put(tok.encode_batch(texts).input_ids.tolist())


def test_forked_child_encodes_after_parent_used_threads(trained):
    """DataLoader workers fork: a pool inherited through fork() has no threads; must not hang."""
    texts = POSTS * 20
    before = num_threads()
    set_num_threads(2)
    try:
        expected = trained.encode_batch(texts).input_ids.tolist()  # the parent's pool is running
        ctx = multiprocessing.get_context("fork")
        queue = ctx.Queue()
        with warnings.catch_warnings():
            # Python >= 3.12 warns about fork() in a multi-threaded process; that is the point.
            warnings.simplefilter("ignore", DeprecationWarning)
            child = ctx.Process(target=_encode_in_child, args=(trained, texts, queue))
            child.start()
        result = queue.get(timeout=60)
        child.join(timeout=60)
    finally:
        set_num_threads(before)
    assert child.exitcode == 0
    assert result == expected


def test_lone_surrogate_is_a_clear_error(tiny):
    with pytest.raises(ValueError, match=r"texts\[1\] is not valid Unicode"):
        tiny.encode_batch(["ok", "bad \ud800"])


def test_train_from_files_takes_the_same_options(tmp_path):
    path = tmp_path / "posts.txt"
    path.write_text("\n".join(POSTS), encoding="utf-8")
    options = {"pre_tokenizer": "social", "model": "wordlevel", "lowercase": False}
    a = Tokenizer.train(POSTS, vocab_size=80, **options)
    b = Tokenizer.train_from_files([path], vocab_size=80, **options)
    assert a.get_vocab() == b.get_vocab()
    assert a.token_to_id("#sale") is not None and a.token_to_id("Loving") is not None


# --- spell_emoji: emoji the vocabulary lacks spelled as their CLDR names ----------------------

SPELLING_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "love", "it", "smiling", "face",
                  "with", "heart", "-", "eyes", "party", "popper", "thumbs", "up", ":", "medium",
                  "skin", "tone", "!", "♥"]  # fmt: skip


def test_spell_emoji_spells_what_the_vocabulary_lacks(tmp_path):
    path = vocab_file(tmp_path, SPELLING_VOCAB)
    off = Tokenizer.from_bert_vocab(path)
    on = Tokenizer.from_bert_vocab(path, spell_emoji=True)
    assert (off.spell_emoji, on.spell_emoji) == (False, True)
    text = "Love it😍! 👍🏽 ♥"
    assert [w for w, _ in off.pre_tokenize(text)] == ["love", "it😍", "!", "👍🏽", "♥"]
    assert on.pre_tokenize(text) == [
        ("love", (0, 4)), ("it", (5, 7)), ("smiling", (7, 8)), ("face", (7, 8)),
        ("with", (7, 8)), ("heart", (7, 8)), ("-", (7, 8)), ("eyes", (7, 8)), ("!", (8, 9)),
        ("thumbs", (10, 12)), ("up", (10, 12)), (":", (11, 12)), ("medium", (10, 12)),
        ("skin", (10, 12)), ("tone", (10, 12)), ("♥", (13, 14)),
    ]  # fmt: skip
    assert off.encode(text, add_special_tokens=False) == [5, 1, 21, 1, 22]
    assert on.encode(text, add_special_tokens=False) == [5, 6, 7, 8, 9, 10, 11, 12, 21, 15,
                                                         16, 17, 18, 19, 20, 22]  # fmt: skip
    # Text without emoji: the same ids either way.
    assert on.encode("love it! heart-eyes") == off.encode("love it! heart-eyes")


def test_spell_emoji_round_trips_through_save_and_load(tmp_path):
    on = Tokenizer.from_bert_vocab(vocab_file(tmp_path, SPELLING_VOCAB), spell_emoji=True)
    path = tmp_path / "tok.json"
    on.save(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["pre_tokenizer"] == {"type": "bert", "spell_emoji": True}
    assert data["version"] == _tokenizer.FORMAT_VERSION == 2  # version 1 readers refuse it
    texts = ["love it 😍🎉", "👍🏽!", "♥ heart"]
    for loaded in (Tokenizer.from_file(path), pickle.loads(pickle.dumps(on))):
        assert loaded.spell_emoji
        np.testing.assert_array_equal(
            loaded.encode_batch(texts).input_ids, on.encode_batch(texts).input_ids
        )
    # A file written before the option existed (version 1, no key) loads with it off.
    data.update(version=1, pre_tokenizer={"type": "bert"})
    old = Tokenizer.from_str(json.dumps(data))
    assert not old.spell_emoji
    assert old.encode("it😍", add_special_tokens=False) == [1]


def test_spell_emoji_when_training():
    # The social pre-tokenizer keeps emoji whole; with spell_emoji they are learnt as words.
    options = {"pre_tokenizer": "social", "model": "wordlevel", "min_frequency": 1}
    kept = Tokenizer.train(POSTS, vocab_size=200, **options)
    spelled = Tokenizer.train(POSTS, vocab_size=200, spell_emoji=True, **options)
    assert kept.token_to_id("😍") is not None and spelled.token_to_id("😍") is None
    assert [spelled.token_to_id(w) is not None for w in ("heart", "eyes", "hot", "beverage")] == [
        True
    ] * 4
    assert spelled.spell_emoji and Tokenizer.from_str(spelled.to_str()).spell_emoji
    ids = spelled.encode_batch(POSTS).input_ids
    assert not (ids == spelled.unk_token_id).any()
