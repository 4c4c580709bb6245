"""The n-gram baseline model (models/ngram.py): its hashed n-grams, its pooling, padding, and
`--model ngram` end to end: train, predict, evaluate, int8 and ONNX export and serving."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fbdl_fast.cli import main
from fbdl_fast.config import ModelConfig
from fbdl_fast.data.synthetic import generate_posts
from fbdl_fast.models import MODELS, create_model, model_name
from fbdl_fast.models.ngram import (
    BIGRAM_PRIME,
    CHAR_GRAMS,
    HASH_MODULUS,
    PAIR_MULTIPLIER,
    TRIGRAM_PRIME,
    NgramClassifier,
    char_ngrams,
    fnv1a,
    ngram_rows,
    poly_hash,
    word_char_ngrams,
)
from fbdl_fast.serving import onnx as serving_onnx
from fbdl_fast.tokenizer import Tokenizer
from fbdl_fast.training import presets
from fbdl_fast.training.loading import load_run
from tiny_run import write_posts_csv

VOCAB, BUCKETS = 50, 97


def _config(**overrides: object) -> ModelConfig:
    values: dict = {
        "input_dim": 8,
        "vocab_size": VOCAB,
        "num_classes": 3,
        "dropout": 0.0,
        "extra": {"ngram_buckets": BUCKETS, "ngram_hash": 2},
    }
    return ModelConfig(**(values | overrides))


def pair(a: int, b: int, hashing: int = 2, prime: int = BIGRAM_PRIME) -> int:
    """The documented pair hash, with Python's integers: version 2's g(a, b) before the bucket,
    version 1's bucket itself."""
    if hashing == 1:
        return (a * prime + b) % BUCKETS
    return (a * PAIR_MULTIPLIER + b) % HASH_MODULUS


def bigram_row(vocab: int, a: int, b: int, hashing: int = 2) -> int:
    return vocab + pair(a, b, hashing) % BUCKETS


def trigram_row(vocab: int, a: int, b: int, c: int, hashing: int = 2) -> int:
    return vocab + pair(pair(a, b, hashing), c, hashing, TRIGRAM_PRIME) % BUCKETS


@pytest.mark.parametrize("hashing", [1, 2], ids=["legacy-hash", "pair-hash"])
def test_ngram_rows_are_the_hashes_of_consecutive_real_ids(hashing: int) -> None:
    """Unigrams are the ids; bigram and trigram rows follow the documented hashes, computed
    here with Python integers; an n-gram touching padding weighs 0."""
    ids = torch.tensor([[5, 7, 9, 3]])
    mask = torch.tensor([[True, True, True, False]])
    rows, weights = ngram_rows(ids, mask, VOCAB, BUCKETS, order=3, hashing=hashing)
    bigrams = [bigram_row(VOCAB, a, b, hashing) for a, b in ((5, 7), (7, 9), (9, 3))]
    trigrams = [trigram_row(VOCAB, *abc, hashing) for abc in ((5, 7, 9), (7, 9, 3))]
    assert rows.tolist() == [[5, 7, 9, 3, *bigrams, *trigrams]]
    assert weights.tolist() == [[1, 1, 1, 0, 1, 1, 0, 1, 0]]
    assert all(VOCAB <= r < VOCAB + BUCKETS for r in bigrams + trigrams)


@pytest.mark.parametrize("hashing", [1, 2], ids=["legacy-hash", "pair-hash"])
def test_largest_ids_do_not_overflow_the_hash(hashing: int) -> None:
    """Ids and buckets at config's limits (2**24) still give rows inside the table, the ones
    Python's unbounded integers give."""
    big, most = (1 << 24) - 1, 1 << 24
    ids = torch.tensor([[big, big - 1, big - 2]])
    mask = torch.ones_like(ids, dtype=torch.bool)
    rows, _ = ngram_rows(ids, mask, most, most, order=3, hashing=hashing)
    assert int(rows.min()) >= 0 and int(rows.max()) < (1 << 25)
    if hashing == 1:
        first = (big * BIGRAM_PRIME + big - 1) % most
        second = ((first * TRIGRAM_PRIME) + big - 2) % most
    else:
        g = (big * PAIR_MULTIPLIER + big - 1) % HASH_MODULUS
        first, second = g % most, ((g * PAIR_MULTIPLIER + big - 2) % HASH_MODULUS) % most
    assert rows[0, 3].item() == most + first and rows[0, 5].item() == most + second


def test_the_default_models_bigrams_spread_over_the_buckets_as_a_random_hash_would() -> None:
    """--model ngram's defaults (presets) hash 20,000 distinct bigrams of a 3,000-entry
    vocabulary into about as many of the 65,536 rows as random rows would fill (within 2%),
    and every row number alike. The hash of earlier runs, (a * (2**20 - 3) + b) % 2**16 =
    (b - 3a) % 2**16, reached only the rows within 3 * 3,000 + 3,000 of each other."""
    from fbdl_fast.training import presets

    extra = presets.config_defaults("ngram")["extra"]
    model = create_model("ngram", _config(vocab_size=3000, extra=extra))
    generator = torch.Generator().manual_seed(0)
    ids = torch.unique(torch.randint(0, 3000, (21000, 2), generator=generator), dim=0)[:20000]
    assert len(ids) == 20000
    rows, _ = ngram_rows(ids, torch.ones_like(ids, dtype=torch.bool), 3000, model.buckets, 2,
                         model.hashing)  # fmt: skip
    used = torch.unique(rows[:, 2] - 3000)
    buckets = model.buckets
    expected = buckets * (1 - (1 - 1 / buckets) ** 20000)  # rows filled by random rows
    assert abs(len(used) - expected) < 0.02 * expected, (len(used), expected)
    low, high = int(used.min()), int(used.max())
    assert low < 0.01 * buckets and high > 0.99 * buckets


def test_a_config_without_ngram_hash_keeps_the_hash_its_run_was_trained_with() -> None:
    """Runs made before the pair hash have no "ngram_hash" in config.json: they hash as they
    did (version 1), or their trained rows would be read for other bigrams; a bad version is
    refused by name."""
    legacy = create_model("ngram", _config(extra={"ngram_buckets": BUCKETS}))
    assert legacy.hashing == 1
    assert create_model("ngram", _config()).hashing == 2
    for bad in (3, True, "2"):
        with pytest.raises(ValueError, match=r"ngram_hash=.* is invalid; accepted: 1 or 2"):
            create_model("ngram", _config(extra={"ngram_hash": bad}))


def test_forward_is_the_mean_of_the_ngram_embeddings_through_the_head() -> None:
    """Logits = head(mean of the real n-grams' rows), checked against a loop over one post
    (with trigrams: order 3)."""
    extra = {"ngram_buckets": BUCKETS, "ngram_order": 3, "ngram_hash": 2}
    model = create_model("ngram", _config(extra=extra))
    model.eval()
    ids = torch.tensor([[4, 8, 15, 16, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    real = [4, 8, 15, 16]
    rows = real + [bigram_row(VOCAB, a, b) for a, b in zip(real, real[1:])]
    rows += [trigram_row(VOCAB, *abc) for abc in zip(real, real[1:], real[2:])]
    mean = model.embedding.weight[rows].mean(0)
    expected = model.output_projection(mean)[None]
    torch.testing.assert_close(model(ids, mask), expected, atol=1e-6, rtol=1e-5)


def test_padding_never_changes_the_output_and_an_empty_post_gives_the_bias() -> None:
    """The same post padded to other lengths with other ids gives the same logits; a post with
    no real token gives the head's bias."""
    model = create_model("ngram", _config()).eval()
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    mask = torch.ones_like(ids)
    base = model(ids, mask)
    padded = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    padded_mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0, 0]])
    torch.testing.assert_close(model(padded, padded_mask), base, atol=1e-6, rtol=0)
    empty = model(torch.tensor([[7, 7]]), torch.zeros(1, 2, dtype=torch.long))
    torch.testing.assert_close(empty[0], model.output_projection.bias, atol=0, rtol=0)
    one = model(torch.tensor([[7]]), torch.ones(1, 1, dtype=torch.long))  # no bigram at all
    torch.testing.assert_close(one[0], model.output_projection(model.embedding.weight[7]))


def test_registered_seeded_and_sized_by_config() -> None:
    """create_model("ngram") is registered, named back, seeded by config.seed; its table has
    vocab_size + buckets rows of input_dim; bad sizes are refused by name."""
    assert MODELS["ngram"] is NgramClassifier
    a, b = create_model("ngram", _config(seed=1)), create_model("ngram", _config(seed=1))
    c = create_model("ngram", _config(seed=2))
    assert model_name(a) == "ngram"
    assert torch.equal(a.embedding.weight, b.embedding.weight)
    assert not torch.equal(a.embedding.weight, c.embedding.weight)
    assert tuple(a.embedding.weight.shape) == (VOCAB + BUCKETS, 8)
    with pytest.raises(ValueError, match=r"ngram_buckets=0 is invalid; accepted"):
        create_model("ngram", _config(extra={"ngram_buckets": 0}))
    with pytest.raises(ValueError, match=r"ngram_order=4 is invalid; accepted: 1, 2 or 3"):
        create_model("ngram", _config(extra={"ngram_order": 4}))


def test_char_ngrams_of_an_entry_and_their_hash() -> None:
    """A word-start entry gives the 2-5-grams of "<" + its text, a continuation piece those of
    its text; the whole marked entry is left out and `limit` keeps the shortest first. FNV-1a
    is the published 32-bit one ("a": 0xe40c292c), not Python's salted hash()."""
    assert char_ngrams("walk", 48) == ["<w", "wa", "al", "lk", "<wa", "wal", "alk", "<wal", "walk"]
    assert char_ngrams("##ing", 48) == ["in", "ng"]
    assert char_ngrams("a", 48) == []
    assert char_ngrams("walk", 3) == ["<w", "wa", "al"]
    assert fnv1a("a") == 0xE40C292C and fnv1a("") == 2_166_136_261


def _char_model(tokenizer: Tokenizer, word_chars: bool = False, limit: int = 6) -> NgramClassifier:
    extra = {
        "ngram_buckets": BUCKETS,
        "ngram_char_grams": limit,
        "ngram_word_chars": word_chars,
        "ngram_hash": 2,
    }
    model = create_model("ngram", _config(vocab_size=tokenizer.vocab_size, extra=extra)).eval()
    model.index_char_ngrams(tokenizer)
    return model


def test_whole_word_char_ngrams_of_a_word_and_their_hash() -> None:
    """A word's n-grams: each piece's own, the last piece's 1-4 last characters + ">", and the
    2-5-grams over each boundary between two pieces; the polynomial hash composes across a
    boundary, h(x + y) = h(x) * BASE**len(y) + h(y) (mod its prime), which the forward uses."""
    grams = word_char_ngrams(["wal", "##king"])
    own = ["<w", "wa", "al", "<wa", "wal", "ki", "in", "ng", "kin", "ing"]
    ends = ["g>", "ng>", "ing>", "king>"]
    spans = ["lk", "lki", "lkin", "lking", "alk", "alki", "alkin", "walk", "walki", "<walk"]
    assert grams == own + ends + spans
    assert word_char_ngrams(["a"]) == ["a>", "<a>"]
    assert poly_hash("") == 0 and poly_hash("a") == ord("a")
    assert poly_hash("lking") == (poly_hash("l") * 1_000_003**4 + poly_hash("king")) % (2**31 - 1)


def _words(tokenizer: Tokenizer, ids: list[int]) -> list[list[str]]:
    """The words of a post's ids as their pieces; special tokens end a word and are none."""
    words: list[list[str]] = []
    for token_id in ids:
        token = tokenizer.id_to_token(token_id)
        assert token is not None
        if token in tokenizer.special_tokens:
            words.append([])
        elif token.startswith("##") and words and words[-1]:
            words[-1].append(token)
        else:
            words.append([token])
    return [word for word in words if word]


def test_whole_word_char_ngrams_are_pooled_as_the_reference_says() -> None:
    """With ngram_word_chars, the character n-grams pooled are word_char_ngrams' of each word,
    hashed with poly_hash: logits checked against a loop over words, on posts whose words are
    split into pieces; predicting (cached sums) gives the same logits, as padding changes
    nothing."""
    tokenizer = Tokenizer.train(generate_posts(200, seed=2).texts, vocab_size=120)
    model = _char_model(tokenizer, word_chars=True, limit=48)
    vocab, weight = tokenizer.vocab_size, model.embedding.weight
    texts = ["win a free phone now", "unbelievable customer service today"]
    for text in texts:
        ids = tokenizer.encode(text)
        words = _words(tokenizer, ids)
        assert any(len(word) > 1 for word in words)  # there are boundaries inside words
        rows = ids + [bigram_row(vocab, a, b) for a, b in zip(ids, ids[1:])]
        chars = [vocab + poly_hash(g) % BUCKETS for w in words for g in word_char_ngrams(w)]
        expected = model.output_projection(weight[rows].mean(0) + weight[chars].mean(0))[None]
        batch = torch.tensor([ids])
        gathered = model(batch, torch.ones_like(batch))
        torch.testing.assert_close(gathered, expected, atol=1e-6, rtol=1e-5)
        padded = torch.tensor([[*ids, 5, 6, 7]])
        mask = torch.tensor([[1] * len(ids) + [0, 0, 0]])
        with torch.no_grad():
            torch.testing.assert_close(model(padded, mask), expected, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match=r"ngram_word_chars needs character n-grams"):
        create_model("ngram", _config(extra={"ngram_word_chars": True}))


def _entries_with_most_char_ngrams(model: NgramClassifier, n: int) -> list[int]:
    counts = (model.char_grams >= 0).sum(dim=1)
    assert int(counts.max()) == model.char_limit
    return counts.argsort(descending=True)[:n].tolist()


def test_char_ngrams_are_indexed_from_the_tokenizer_and_pooled_apart() -> None:
    """index_char_ngrams gives each entry the rows of its character n-grams (none for special
    tokens, -1 past an entry's own); logits = head(mean of the n-grams' rows + mean of the
    tokens' character n-grams' rows), checked against a loop."""
    tokenizer = Tokenizer.train(generate_posts(200, seed=2).texts, vocab_size=300)
    model = _char_model(tokenizer)
    vocab = tokenizer.vocab_size
    for token_id in range(vocab):
        token = tokenizer.id_to_token(token_id)
        grams = [] if token in tokenizer.special_tokens else char_ngrams(token, 6)
        expected = [vocab + fnv1a(g) % BUCKETS for g in grams] + [-1] * (6 - len(grams))
        assert model.char_grams[token_id].tolist() == expected, token
    ids = torch.tensor([tokenizer.encode("win a free phone now")])
    real = ids[0].tolist()
    rows = real + [bigram_row(vocab, a, b) for a, b in zip(real, real[1:])]
    chars = [r for i in real for r in model.char_grams[i].tolist() if r >= 0]
    assert chars  # the post has character n-grams to pool
    weight = model.embedding.weight
    pooled = weight[rows].mean(0) + weight[chars].mean(0)
    expected = model.output_projection(pooled)[None]
    torch.testing.assert_close(model(ids, torch.ones_like(ids)), expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("word_chars", [False, True], ids=["pieces", "words"])
def test_char_ngrams_leave_padding_and_empty_posts_alone(word_chars: bool) -> None:
    """With character n-grams, padding (whatever its ids) still changes nothing and a post
    with no real token still gives the head's bias."""
    tokenizer = Tokenizer.train(generate_posts(200, seed=2).texts, vocab_size=300)
    model = _char_model(tokenizer, word_chars)
    ids = torch.tensor([tokenizer.encode("lovely day")])
    base = model(ids, torch.ones_like(ids))
    filler = torch.tensor([_entries_with_most_char_ngrams(model, 3)])  # grams to pool, if real
    padded = torch.cat([ids, filler], dim=1)
    mask = torch.cat([torch.ones_like(ids), torch.zeros_like(filler)], dim=1)
    torch.testing.assert_close(model(padded, mask), base, atol=1e-6, rtol=0)
    empty = model(filler, torch.zeros_like(filler))
    torch.testing.assert_close(empty[0], model.output_projection.bias, atol=0, rtol=0)


@pytest.mark.parametrize("word_chars", [False, True], ids=["pieces", "words"])
def test_predicting_with_entry_sums_gives_the_gathered_logits_after_any_change(
    word_chars: bool,
) -> None:
    """Without gradients, in eval mode, the model pools each entry's cached sum of rows; the
    logits are those of gathering every character n-gram's row (with gradients), before and
    after the table changes in place and after load_state_dict: the cache never goes stale."""
    tokenizer = Tokenizer.train(generate_posts(200, seed=2).texts, vocab_size=300)
    model = _char_model(tokenizer, word_chars)
    rich = _entries_with_most_char_ngrams(model, 5)
    vocab = range(tokenizer.vocab_size)
    pieces = [i for i in vocab if (tokenizer.id_to_token(i) or "").startswith("##")][:2]
    ids = torch.tensor(
        [[2, *rich[:4], 3, 0], [2, rich[4], 3, 0, 0, 0, 0], [2, rich[0], *pieces, rich[1], 3, 0]]
    )  # the third: a word of three pieces (boundaries inside it)
    mask = ids != 0

    def both() -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            cached = model(ids, mask)
        return cached, model(ids, mask).detach()  # with gradients: every row gathered

    cached, gathered = both()
    torch.testing.assert_close(cached, gathered, atol=1e-6, rtol=1e-5)
    with torch.no_grad():
        model.embedding.weight.add_(torch.randn_like(model.embedding.weight))
    cached, gathered = both()
    torch.testing.assert_close(cached, gathered, atol=1e-6, rtol=1e-5)
    other = _char_model(tokenizer, word_chars)
    with torch.no_grad():
        other.embedding.weight.normal_()
    model.load_state_dict(other.state_dict())
    cached, gathered = both()
    torch.testing.assert_close(cached, gathered, atol=1e-6, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(model(ids, mask), other(ids, mask), atol=1e-6, rtol=1e-5)


def test_a_model_without_char_ngrams_is_the_one_older_runs_saved() -> None:
    """A config with no "ngram_char_grams" (every run before character n-grams) builds the
    model those runs saved: no char_grams buffer, so their weights load strictly, and
    indexing a tokenizer leaves it as it is; a bad count is refused by name."""
    model = create_model("ngram", _config())
    assert "char_grams" not in model.state_dict()
    older = {k: v.clone() for k, v in model.state_dict().items()}
    create_model("ngram", _config(seed=5)).load_state_dict(older, strict=True)
    model.index_char_ngrams(Tokenizer.train(generate_posts(50, seed=1).texts, vocab_size=60))
    assert "char_grams" not in model.state_dict()
    with pytest.raises(ValueError, match=r"ngram_char_grams=-1 is invalid; accepted"):
        create_model("ngram", _config(extra={"ngram_char_grams": -1}))


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def ngram_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny `fbdl-fast train --model ngram` run (200-word vocabulary, 32 tokens)."""
    root = tmp_path_factory.mktemp("ngram")
    data = write_posts_csv(root / "posts.csv", 200, seed=1)
    run = root / "run"
    argv = ["train", "--data", str(data), "--output", str(run), "--model", "ngram", "--quiet"]
    assert main([*argv, "--vocab-size", "200", "--max-length", "32"]) == 0
    return run


def test_train_ngram_writes_a_run_that_predicts_and_evaluates(
    ngram_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """train --model ngram (refused before the model existed) makes a run of the n-gram model
    with its defaults and no baseline beside it; predict gives the labels of load_run's
    predict; evaluate beats chance on labelled posts."""
    meta = json.loads((ngram_run / "config.json").read_text())
    assert meta["model"] == "ngram" and meta["model_config"]["input_dim"] == 32
    assert meta["model_config"]["extra"]["ngram_char_grams"] == CHAR_GRAMS
    assert not (ngram_run / "baseline.json").exists()
    assert (
        "No n-gram baseline: this run's model is the baseline."
        in (ngram_run / "report.md").read_text()
    )
    texts = generate_posts(20, seed=4).texts
    out = tmp_path / "p.jsonl"
    argv = ["predict", "--run", str(ngram_run), "--output", str(out), "--quiet"]
    assert main([*argv, *[a for t in texts for a in ("--text", t)]]) == 0
    got = [json.loads(line)["label"] for line in out.read_text().splitlines()]
    assert got == [p.label for p in load_run(ngram_run).predict(texts)]
    labelled = write_posts_csv(tmp_path / "test.csv", 200, seed=7)
    capsys.readouterr()
    argv = ["evaluate", "--run", str(ngram_run), "--data", str(labelled), "--json", "--quiet"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["macro_f1"] > 0.5  # 4 classes: chance is 0.25


@pytest.mark.parametrize("fmt", ["int8", "onnx"])
def test_export_and_serve_ngram_like_the_others(
    ngram_run: Path, fmt: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """export --format int8 quantizes the head (the table stays fp32) and --format onnx
    writes a file; predict --checkpoint int8|onnx gives best.pt's probabilities within the
    tolerance the other models' exports are held to."""
    assert main(["export", "--run", str(ngram_run), "--format", fmt, "--quiet"]) == 0
    capsys.readouterr()
    texts = generate_posts(30, seed=8).texts
    probabilities = {}
    for checkpoint in ("best", fmt):
        out = tmp_path / f"{checkpoint}.jsonl"
        argv = ["predict", "--run", str(ngram_run), "--output", str(out), "--quiet"]
        argv += ["--overwrite", "--checkpoint", checkpoint, "--batch-size", "8"]
        assert main([*argv, *[a for t in texts for a in ("--text", t)]]) == 0
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        probabilities[checkpoint] = torch.tensor([list(r["probabilities"].values()) for r in rows])
    diff = (probabilities[fmt] - probabilities["best"]).abs().max().item()
    if fmt == "onnx":
        assert diff <= serving_onnx.ONNX_TOLERANCE
    else:  # int8 weights of the head: close, not equal
        assert 0 < diff <= 0.05


def test_ngram_defaults_in_train_help_are_the_ones_used() -> None:
    """train --help's "ngram: X" is what `train --model ngram` uses, for every option that
    states one (batch size and label smoothing among them); "ngram: not used" is said of the
    settings the convex fit does not read (lr, epochs, width among them)."""
    import argparse
    import re

    from fbdl_fast.cli.main import build_parser
    from fbdl_fast.cli.train import build_request

    parser = build_parser()
    args = parser.parse_args(["train", "--data", "p.csv", "--model", "ngram"])
    request, config = build_request(args)
    used = {**vars(config), **vars(request)}
    train = next(
        action for action in parser._actions if isinstance(action, argparse._SubParsersAction)
    ).choices["train"]
    checked, unused = set(), set()
    for action in train._actions:
        found = re.search(r"\(default: [^;)]+; ngram: ([^;)]+)", action.help or "")
        if found and found[1] == "not used":  # by the convex fit: asking for it is refused
            assert action.dest in presets.NGRAM_CONVEX_UNUSED, action.dest
            unused.add(action.dest)
        elif found:
            assert found[1] == str(used[action.dest]), action.dest
            checked.add(action.dest)
    assert {"batch_size", "label_smoothing"} <= checked
    assert {"learning_rate", "max_epochs", "input_dim"} <= unused


def test_a_run_holds_its_tokenizers_char_ngrams(ngram_run: Path) -> None:
    """train indexes the run's own tokenizer before training: best.pt's char_grams are those
    of the run's vocabulary, as load_run serves them."""
    run = load_run(ngram_run)
    fresh = create_model("ngram", run.config)
    fresh.index_char_ngrams(run.tokenizer)
    assert int((fresh.char_grams >= 0).sum()) > 0
    assert torch.equal(run.model.char_grams, fresh.char_grams)


def test_a_run_without_char_ngrams_loads_predicts_and_exports(tmp_path: Path) -> None:
    """A run folder as every n-gram run before character n-grams wrote it (config.json's
    extra without "ngram_char_grams", best.pt without char_grams) loads, predicts through the
    library and the CLI alike, and exports to ONNX within its tolerance."""
    import fbdl_fast

    posts = generate_posts(120, seed=5)
    run = tmp_path / "old"
    fbdl_fast.train(
        texts=posts.texts,
        labels=posts.labels,
        model="ngram",
        output=run,
        extra={},
        vocab_size=200,
        max_seq_length=32,
        epochs=1,
    )
    assert (
        "ngram_char_grams"
        not in json.loads((run / "config.json").read_text())["model_config"]["extra"]
    )
    assert not any("char_grams" in k for k in torch.load(run / "best.pt")["model"])
    texts = generate_posts(10, seed=6).texts
    loaded = load_run(run)
    assert loaded.model.char_limit == 0
    out = tmp_path / "p.jsonl"
    argv = ["predict", "--run", str(run), "--output", str(out), "--quiet"]
    assert main([*argv, *[a for t in texts for a in ("--text", t)]]) == 0
    got = [json.loads(line)["label"] for line in out.read_text().splitlines()]
    assert got == [p.label for p in loaded.predict(texts)]
    assert main(["export", "--run", str(run), "--format", "onnx", "--quiet"]) == 0
    onnx = load_run(run, checkpoint="onnx").predict(texts)
    for a, b in zip(onnx, loaded.predict(texts)):
        assert abs(a.probability - b.probability) <= serving_onnx.ONNX_TOLERANCE


def test_whole_word_char_ngrams_export_to_onnx() -> None:
    """The n-grams across pieces are integer arithmetic on the ids: export's own exporters and
    onnxruntime check pass, and the file gives torch's logits on padded batches of real posts
    of other shapes than the traced one."""
    from types import SimpleNamespace

    pytest.importorskip("onnxruntime")
    tokenizer = Tokenizer.train(generate_posts(200, seed=2).texts, vocab_size=120)
    model = _char_model(tokenizer, word_chars=True, limit=48)
    run = SimpleNamespace(model=model, config=model.config, meta={"model": "ngram"}, path="-")
    data, done, _, _ = serving_onnx._checked_fp32(run, lambda message: None)  # type: ignore[arg-type]
    assert done["max_abs_diff"] <= serving_onnx.ONNX_TOLERANCE
    texts = generate_posts(12, seed=9).texts
    for batch in (texts[:4], texts[4:]):
        encoded = tokenizer.encode_batch(batch)
        ids = torch.as_tensor(encoded["input_ids"]).long()
        mask = torch.as_tensor(encoded["attention_mask"]).long()
        with torch.no_grad():
            expected = model(ids, mask)
        got = serving_onnx.onnx_logits(data, ids, mask)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
