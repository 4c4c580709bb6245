"""Data pipeline: loading, label maps, splits, bucketing sampler, collate, synthetic posts."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fbdl_fast.data import (
    BucketBatchSampler,
    LabelMap,
    Posts,
    PostsDataset,
    build_dataloaders,
    collate,
    load_posts,
    loader_order,
    split_posts,
    tokenize_texts,
    train_val_split,
)
from fbdl_fast.data.synthetic import CLASSES, generate_posts
from tiny_run import tiny_config

# ====================
# Loading
# ====================


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_load_csv_string_labels_with_quotes_and_emoji(tmp_path: Path) -> None:
    path = write(
        tmp_path / "posts.csv",
        'text,label\n"hello, world 😍",positive\n"multi\nline",negative\n\nok,neutral\n',
    )
    posts = load_posts(path)
    assert posts.texts == ["hello, world 😍", "multi\nline", "ok"]
    assert posts.labels == ["positive", "negative", "neutral"]
    assert posts.lines == [2, 3, 6]


def test_load_csv_int_labels_and_custom_columns(tmp_path: Path) -> None:
    path = write(tmp_path / "p.csv", "id,body,sentiment\n1,a,0\n2,b,1\n3,c,-2\n")
    posts = load_posts(path, text_column="body", label_column="sentiment")
    assert posts.texts == ["a", "b", "c"]
    assert posts.labels == [0, 1, -2]  # ints, not "0"


def test_load_tsv_and_bom(tmp_path: Path) -> None:
    path = tmp_path / "p.tsv"
    path.write_bytes("\ufefftext\tlabel\nx y\tspam\n".encode())
    posts = load_posts(path)
    assert posts.texts == ["x y"] and posts.labels == ["spam"]


def test_load_jsonl_string_and_int_labels(tmp_path: Path) -> None:
    lines = [
        {"text": "a 🎉", "label": "pos"},
        {"text": "b", "label": 3},
        {"text": "c", "label": "7"},
    ]
    path = write(tmp_path / "p.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n\n")
    posts = load_posts(path)
    assert posts.texts == ["a 🎉", "b", "c"]
    assert posts.labels == ["pos", 3, 7]
    assert posts.lines == [1, 2, 3]


def test_load_without_labels_for_prediction(tmp_path: Path) -> None:
    path = write(tmp_path / "p.csv", "text\nhello\n")
    posts = load_posts(path, require_labels=False)
    assert posts.texts == ["hello"] and posts.labels is None


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.csv", "", r"posts file .*empty\.csv is empty"),
        ("header.csv", "text,label\n", r"header\.csv has a header but no posts"),
        (
            "cols.csv",
            "text,sentiment\nx,1\n",
            r"label column 'label' not found in .*cols\.csv \(line 2\); columns are: text, "
            r"sentiment",
        ),
        ("missing.csv", "text,label\na,pos\nb,\n", r"missing label value .* on line 3 of"),
        (
            "missing.jsonl",
            '{"text": "a", "label": "x"}\n{"text": "b", "label": null}\n',
            r"missing label value .* on line 2 of .*missing\.jsonl",
        ),
        ("bad.jsonl", '{"text": "a", "label": 1}\n{"text": \n', r"line 2 of .* not valid JSON"),
        (
            "float.jsonl",
            '{"text": "a", "label": 1.5}\n',
            r"label 1\.5 is a float; labels are strings or integers .*line 1",
        ),
        ("posts.txt", "text\n", r"extension '\.txt'.*accepted: \.csv, \.jsonl"),
    ],
)
def test_load_errors_name_file_and_line(
    tmp_path: Path, name: str, content: str, message: str
) -> None:
    path = write(tmp_path / name, content)
    with pytest.raises(ValueError, match=message):
        load_posts(path)


def test_load_text_column_missing_lists_columns(tmp_path: Path) -> None:
    path = write(tmp_path / "p.jsonl", '{"body": "a", "label": 1}\n')
    with pytest.raises(
        ValueError, match=r"text column 'text' not found .* columns are: body, label"
    ):
        load_posts(path)


def test_the_text_column_cannot_be_the_label_column(tmp_path: Path) -> None:
    """Labels read from the text's own column would teach the model its answers: refused
    before the file is read; a prediction input (labels not required) may name it."""
    path = write(tmp_path / "p.csv", "text,label\nhello,spam\n")
    with pytest.raises(ValueError, match=r"^the text column and the label column are both 'label'"):
        load_posts(path, "label", "label")
    assert load_posts(path, "label", "label", require_labels=False).texts == ["spam"]


def test_an_unknown_extension_or_format_is_named(tmp_path: Path) -> None:
    """A .txt file: its extension and the accepted ones; format= reads it; a format that is
    not one is named as such."""
    path = write(tmp_path / "posts.txt", "text,label\nhello,spam\n")
    with pytest.raises(ValueError, match=r"format of .*posts\.txt from its extension '\.txt'; "):
        load_posts(path)
    assert load_posts(path, format="csv").labels == ["spam"]
    with pytest.raises(ValueError, match=r"^format='xml' is not supported; accepted: 'csv'"):
        load_posts(path, format="xml")


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.csv does not exist"):
        load_posts(tmp_path / "nope.csv")


def test_load_invalid_utf8_reports_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"text,label\nok,a\ncaf\xe9,b\n")
    with pytest.raises(ValueError, match=r"not valid UTF-8: byte 0xe9 on line 3"):
        load_posts(path)


# ====================
# Label map
# ====================


def test_label_map_sorted_ids_roundtrip_and_unknown(tmp_path: Path) -> None:
    lm = LabelMap.from_labels(["spam", "neg", "pos", "neg"])
    assert lm.labels == ["neg", "pos", "spam"]
    assert [lm.encode(x) for x in ("neg", "pos", "spam")] == [0, 1, 2]
    assert lm.decode(2) == "spam"
    lm.save(tmp_path / "labels.json")
    assert LabelMap.load(tmp_path / "labels.json") == lm
    assert json.loads((tmp_path / "labels.json").read_text()) == {"labels": ["neg", "pos", "spam"]}
    posts = Posts(["a", "b"], ["pos", "angry"], [2, 5], source="eval.csv")
    with pytest.raises(
        ValueError,
        match=r"unknown label 'angry'; the model knows: 'neg', 'pos', "
        r"'spam' \(line 5 of eval\.csv\)",
    ):
        lm.encode_all(posts)


def test_label_map_ints_sort_numerically_and_accept_digit_strings() -> None:
    lm = LabelMap.from_labels([10, 2, "1"])
    assert lm.labels == [1, 2, 10]
    assert lm.encode("10") == 2 and lm.encode(1) == 0
    with pytest.raises(ValueError, match="class id 3 is out of range"):
        lm.decode(3)


# ====================
# Split
# ====================


def test_split_deterministic_disjoint_and_stratified() -> None:
    labels = ["a"] * 50 + ["b"] * 30 + ["c"] * 20
    train, val = train_val_split(labels, val_fraction=0.2, seed=7)
    assert (train, val) == train_val_split(labels, val_fraction=0.2, seed=7)
    assert train_val_split(labels, val_fraction=0.2, seed=8)[1] != val
    assert set(train).isdisjoint(val) and sorted(train + val) == list(range(100))
    counts = {c: sum(labels[i] == c for i in val) for c in "abc"}
    assert counts == {"a": 10, "b": 6, "c": 4}


def test_split_keeps_every_class_in_both_parts() -> None:
    labels = ["rare", "rare"] + ["common"] * 10
    train, val = train_val_split(labels, val_fraction=0.1, seed=0)
    assert {labels[i] for i in val} == {"rare", "common"}
    assert {labels[i] for i in train} == {"rare", "common"}


def test_split_posts_and_bad_fraction() -> None:
    posts = generate_posts(40, seed=3)
    train, val = split_posts(posts, val_fraction=0.25, seed=1)
    assert len(train) == 30 and len(val) == 10
    assert sorted(train.texts + val.texts) == sorted(posts.texts)
    with pytest.raises(ValueError, match=r"val_fraction=1\.5 is invalid"):
        train_val_split(10, val_fraction=1.5)


# ====================
# Sampler and collate
# ====================


def lengths_fixture(n: int = 1000) -> np.ndarray:
    return np.random.default_rng(0).integers(1, 200, size=n)


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("drop_last", [True, False])
def test_sampler_covers_each_index_once(shuffle: bool, drop_last: bool) -> None:
    lengths = lengths_fixture(1003)
    sampler = BucketBatchSampler(
        lengths, batch_size=32, shuffle=shuffle, seed=1, drop_last=drop_last, pool_batches=4
    )
    batches = list(sampler)
    assert len(batches) == len(sampler) == (31 if drop_last else 32)
    flat = [i for b in batches for i in b]
    assert len(flat) == len(set(flat))
    assert len(flat) == (992 if drop_last else 1003)
    assert sum(len(b) < 32 for b in batches) == (0 if drop_last else 1)


def test_sampler_order_is_a_function_of_seed_and_epoch() -> None:
    lengths = lengths_fixture()
    a = BucketBatchSampler(lengths, 16, seed=3)
    b = BucketBatchSampler(lengths, 16, seed=3)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b) == list(a)  # same epoch: same batches, however often iterated
    b.set_epoch(3)
    assert list(a) != list(b)


def test_sampler_buckets_reduce_padding() -> None:
    lengths = lengths_fixture()

    def padded_tokens(batches: list[list[int]]) -> int:
        return sum(len(b) * int(lengths[b].max()) for b in batches)

    bucketed = padded_tokens(list(BucketBatchSampler(lengths, 32, seed=0)))
    perm = np.random.default_rng(0).permutation(len(lengths))
    random_batches = [perm[i : i + 32].tolist() for i in range(0, len(perm), 32)]
    assert bucketed < 0.7 * padded_tokens(random_batches)
    assert bucketed >= int(lengths.sum())


def test_collate_pads_with_pad_id_and_masks() -> None:
    samples = [{"input_ids": np.array([5, 6, 7]), "label": 1}, {"input_ids": [8], "label": 0}]
    batch = collate(samples, pad_token_id=0)
    assert torch.equal(batch["input_ids"], torch.tensor([[5, 6, 7], [8, 0, 0]]))
    assert torch.equal(batch["attention_mask"], torch.tensor([[True] * 3, [True, False, False]]))
    assert torch.equal(batch["labels"], torch.tensor([1, 0]))
    assert batch["input_ids"].dtype == torch.long and batch["attention_mask"].dtype == torch.bool
    unlabelled = collate([{"input_ids": [1, 2]}], pad_token_id=9)
    assert set(unlabelled) == {"input_ids", "attention_mask"}


# ====================
# Tokenising and loaders (a whitespace tokenizer with hand-countable ids)
# ====================


class WordTokenizer:
    """[PAD]=0 [CLS]=1 [SEP]=2, then words in order of first sight; encode_batch pads right."""

    def __init__(self, texts: list[str]) -> None:
        self.vocab = {"[PAD]": 0, "[CLS]": 1, "[SEP]": 2}
        for text in texts:
            for word in text.split():
                self.vocab.setdefault(word, len(self.vocab))

    def encode_batch(
        self, texts: list[str], max_length: int, padding: str, truncation: bool
    ) -> SimpleNamespace:
        rows = [[1, *[self.vocab[w] for w in t.split()][: max_length - 2], 2] for t in texts]
        width = max(map(len, rows))
        ids = np.zeros((len(rows), width), dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        return SimpleNamespace(input_ids=ids, attention_mask=mask)


def test_tokenize_texts_strips_padding_and_truncates() -> None:
    tok = WordTokenizer(["a b c d", "e"])
    ids = tokenize_texts(tok, ["a b c d", "e", "a"], max_length=4, chunk_size=2)
    assert [x.tolist() for x in ids] == [[1, 3, 4, 2], [1, 7, 2], [1, 3, 2]]


def test_tokenize_texts_matches_the_rust_tokenizer_one_text_at_a_time() -> None:
    from fbdl_fast.tokenizer import Tokenizer

    posts = generate_posts(50, seed=6)
    tok = Tokenizer.train(posts.texts, vocab_size=300)
    ids = tokenize_texts(tok, posts.texts, max_length=16, chunk_size=7)
    for text, row in zip(posts.texts, ids):
        alone = tok.encode_batch([text], max_length=16)  # one row: no padding at all
        assert row.tolist() == alone.input_ids[0].tolist()
    assert max(len(row) for row in ids) == 16  # some posts were cut to max_length


def test_build_dataloaders_yields_contract_batches() -> None:
    posts = generate_posts(64, seed=5)
    train, val = split_posts(posts, val_fraction=0.25, seed=0)
    tok = WordTokenizer(posts.texts)
    label_map = LabelMap.from_labels(posts.labels)
    config = tiny_config(
        batch_size=8, vocab_size=len(tok.vocab), num_classes=4, max_seq_length=12, seed=3
    )
    train_loader, val_loader = build_dataloaders(train, val, tok, label_map, config)
    assert len(train_loader) == 6 and len(val_loader) == 2
    seen = []
    for batch in val_loader:
        width = int(batch["attention_mask"].sum(1).max())
        assert batch["input_ids"].shape[1] == width <= 12  # padded to the batch's longest only
        assert torch.all(batch["input_ids"][~batch["attention_mask"]] == 0)
        seen += batch["labels"].tolist()
    order = loader_order(val_loader)
    assert seen == [label_map.encode(val.labels[i]) for i in order]
    assert sorted(order) == list(range(len(val)))


def test_dataset_rejects_empty_posts() -> None:
    with pytest.raises(ValueError, match="post 1 has no tokens"):
        PostsDataset([np.array([1]), np.array([], dtype=np.int64)])


# ====================
# Synthetic dataset
# ====================


def test_synthetic_is_deterministic_and_seed_dependent() -> None:
    a, b = generate_posts(200, seed=1), generate_posts(200, seed=1)
    assert a.texts == b.texts and a.labels == b.labels
    assert generate_posts(200, seed=2).texts != a.texts


def test_synthetic_looks_like_social_media_and_has_all_classes() -> None:
    posts = generate_posts(400, seed=0)
    text = "\n".join(posts.texts)
    assert set(posts.labels) == set(CLASSES)
    assert abs(posts.labels.count("spam") - 100) <= 15  # balanced up to the label noise
    assert re.search(r"#\w+", text) and re.search(r"@\w+", text)
    assert re.search(r"https?://\S+", text)
    assert re.search("[\U0001f300-\U0001faff]", text)  # emoji
    assert re.search(r"([aeiouy])\1\1", text)  # an elongated word
    assert len(set(posts.texts)) > 350  # varied, not a handful of repeated strings


def test_synthetic_labels_follow_the_words() -> None:
    # A bag-of-class-words vote recovers most labels: the dataset is learnable, but not 100%.
    from fbdl_fast.data.synthetic import _WORDS

    posts = generate_posts(1000, seed=4)
    correct = 0
    for text, label in zip(posts.texts, posts.labels):
        words = set(re.findall(r"[a-z]+", text.lower()))
        votes = {c: len(words & set(ws)) for c, ws in _WORDS.items()}
        correct += max(votes, key=votes.__getitem__) == label
    assert 0.6 < correct / len(posts) < 0.97
