"""Bad input, where the user meets it (`fbdl-fast evaluate` / `predict`, load_posts, the loaders).

Each case has a clear error (exit status 2, one line naming the file, the line or value, and
what is accepted) or a documented handling:

- empty and whitespace-only texts are kept and read as empty posts ([CLS] [SEP]); their count
  and lines are reported (in a text-only CSV a blank line is a blank line, and skipped);
- a post longer than the model's max_length (1 MB) is truncated to max_length tokens;
- invalid UTF-8 is an error naming the line, or replaced with --encoding-errors replace;
- a missing label, an unknown label, an empty file, a missing column: errors naming them;
- a tokenizer whose vocabulary does not fit the model: an error naming both sizes.
An unknown label at evaluate time is also covered in test_cli.py (with its line number).
"""

from __future__ import annotations

import json
import math
import shutil
import tracemalloc
from pathlib import Path

import pytest
import torch

from fbdl_fast.cli import main
from fbdl_fast.cli import predict as cli
from fbdl_fast.data import LabelMap, build_dataloaders, load_posts, split_posts
from fbdl_fast.data.synthetic import generate_posts
from fbdl_fast.tokenizer import Tokenizer
from tiny_run import MAX_LENGTH, make_run, tiny_config, tiny_model_args, write_csv


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("bad-input") / "run")


def predict(run: Path, data: Path, *extra: str) -> list[dict]:
    out = data.with_name(data.stem + "-preds.jsonl")
    assert (
        main(["predict", "--run", str(run), "--data", str(data), "--output", str(out), *extra]) == 0
    )
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def fails(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI, expect a user error (status 2) and return its one-line message."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err


# ====================
# Empty and whitespace-only texts: kept, read as [CLS] [SEP], counted
# ====================


def test_blank_posts_are_kept_as_empty_posts_and_reported(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "blank.csv"
    data.write_text('text,label\n"",positive\n"  \t ",spam\nhello there,negative\n', "utf-8")
    rows = predict(run, data)
    assert [r["text"] for r in rows] == ["", "  \t ", "hello there"]
    # both read as [CLS] [SEP]: the same probabilities, those of --text ""
    assert rows[0]["probabilities"] == rows[1]["probabilities"]
    assert main(["predict", "--run", str(run), "--text", "", "--quiet"]) == 0
    alone = json.loads(capsys.readouterr().out)
    # (a batch of one vs three rows: equal up to float rounding)
    assert alone["probabilities"] == pytest.approx(rows[0]["probabilities"], abs=2e-6)
    for r in rows:
        assert math.isclose(sum(r["probabilities"].values()), 1.0, abs_tol=1e-4)

    assert main(["evaluate", "--run", str(run), "--data", str(data), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["num_samples"] == 3
    assert "2 of 3 posts are empty or whitespace-only (line 2, 3)" in captured.err

    posts = load_posts(data)  # the same through the Python API
    assert posts.texts == ["", "  \t ", "hello there"] and posts.lines == [2, 3, 4]
    tok = Tokenizer.from_file(run / "tokenizer.json")
    assert tok.encode("  \t ") == [tok.cls_token_id, tok.sep_token_id]


def test_blank_posts_in_jsonl_and_blank_lines_of_a_text_only_csv(tmp_path: Path) -> None:
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"text": ""}\n\n{"text": " "}\n{"text": "x"}\n', "utf-8")
    posts = load_posts(jsonl, require_labels=False)
    assert posts.texts == ["", " ", "x"] and posts.lines == [1, 3, 4]
    # one column: an empty line is a blank line, not a post
    csv_path = tmp_path / "p.csv"
    csv_path.write_text("text\na\n\n   \nb\n", "utf-8")
    assert load_posts(csv_path, require_labels=False).texts == ["a", "b"]


# ====================
# A 1 MB post: truncated to max_length tokens
# ====================


def test_a_1mb_post_is_truncated_and_predicted(run: Path, tmp_path: Path) -> None:
    words = ["great", "phone", "love", "it"]
    huge = " ".join(words[i % 4] for i in range(210_000))[: 1 << 20]  # 1 MiB of text
    assert len(huge) == 1 << 20
    prefix = " ".join(words[i % 4] for i in range(3 * MAX_LENGTH))  # same first tokens
    data = tmp_path / "huge.csv"  # one CSV field of 1 MiB: past the csv module's default cap
    data.write_text(f"text\n{huge}\n{prefix}\nshort\n", "utf-8")
    tracemalloc.start()
    try:
        rows = predict(run, data, "--quiet")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [r["text"] for r in rows] == [huge, prefix, "short"]
    # truncated to max_length: the model saw exactly the prefix's ids
    assert rows[0]["probabilities"] == rows[1]["probabilities"]
    assert math.isclose(sum(rows[0]["probabilities"].values()), 1.0, abs_tol=1e-4)
    # Python-side memory is a few copies of the post (file line, field, JSON row), not more
    assert peak < 32 * (1 << 20), f"peak traced memory {peak / 2**20:.1f} MiB"
    tok = Tokenizer.from_file(run / "tokenizer.json")
    assert tok.encode_batch([huge], max_length=MAX_LENGTH).input_ids.shape == (1, MAX_LENGTH)


# ====================
# Invalid UTF-8: the line, or replaced when asked
# ====================


def test_invalid_utf8_names_the_line_or_is_replaced(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "latin1.csv"
    data.write_bytes(b"text,label\nfine,positive\ncaf\xe9 au lait,neutral\nok,spam\n")
    for command in ("predict", "evaluate"):
        err = fails([command, "--run", str(run), "--data", str(data)], capsys)
        assert "not valid UTF-8: byte 0xe9 on line 3" in err
        assert "--encoding-errors replace" in err
    rows = predict(run, data, "--encoding-errors", "replace", "--quiet")
    assert [r["text"] for r in rows] == ["fine", "caf\ufffd au lait", "ok"]
    assert (
        main(["evaluate", "--run", str(run), "--data", str(data), "--encoding-errors", "ignore"])
        == 0
    )
    assert load_posts(data, errors="ignore").texts == ["fine", "caf au lait", "ok"]
    with pytest.raises(ValueError, match=r"errors='latin-1' is not supported; accepted: strict"):
        load_posts(data, errors="latin-1")


def test_invalid_utf8_late_in_a_streamed_file_leaves_no_output(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "PREDICT_CHUNK", 8)  # several chunks written before the bad line
    data = tmp_path / "late.jsonl"
    lines = [json.dumps({"text": f"post {i}"}).encode() for i in range(40)]
    lines[33] = b'{"text": "bad \xff byte"}'
    data.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "preds.csv"
    err = fails(["predict", "--run", str(run), "--data", str(data), "--output", str(out)], capsys)
    assert "byte 0xff on line 34" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["late.jsonl"]  # no file, no temp


def test_jsonl_text_with_unicode_line_separators_stays_one_post(tmp_path: Path) -> None:
    text = "one\u2028two\u2029three\x85four\x1cfive"  # str.splitlines would cut all of these
    data = tmp_path / "p.jsonl"
    data.write_text(json.dumps({"text": text, "label": 1}, ensure_ascii=False) + "\n", "utf-8")
    posts = load_posts(data)
    assert posts.texts == [text] and posts.labels == [1]


# ====================
# Labels: missing, unknown
# ====================


def test_missing_label_at_evaluate_names_the_line(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "eval.csv"
    data.write_text("text,label\ngood,positive\nno label here,\nbad,negative\n", "utf-8")
    err = fails(["evaluate", "--run", str(run), "--data", str(data)], capsys)
    assert f"missing label value (column 'label') on line 3 of {data}" in err
    rows = predict(run, data, "--quiet")  # predict ignores labels: all three rows
    assert len(rows) == 3


def test_unknown_label_at_evaluate_lists_the_known_ones(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "eval.jsonl"
    data.write_text('{"text": "a", "label": "spam"}\n{"text": "b", "label": 7}\n', "utf-8")
    err = fails(["evaluate", "--run", str(run), "--data", str(data)], capsys)
    assert "unknown label 7; the model knows: 'positive', 'negative', 'neutral', 'spam'" in err
    assert f"(line 2 of {data})" in err


# ====================
# Empty files, missing columns
# ====================


@pytest.mark.parametrize("command", ["predict", "evaluate"])
@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "is empty; expected a header line and posts"),
        ("\n  \n", "is empty"),
        ("text,label\n", "has a header but no posts"),
    ],
)
def test_empty_data_file(
    run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    command: str,
    content: str,
    message: str,
) -> None:
    data = tmp_path / "posts.csv"
    data.write_text(content, "utf-8")
    argv = [command, "--run", str(run), "--data", str(data)]
    if command == "predict":
        argv += ["--output", str(tmp_path / "p.jsonl")]
    err = fails(argv, capsys)
    assert f"posts file {data} {message}" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["posts.csv"]


def test_csv_without_the_named_columns(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "posts.csv"
    data.write_text("message,sentiment\nhello,positive\n", "utf-8")
    err = fails(["predict", "--run", str(run), "--data", str(data)], capsys)
    assert (
        f"text column 'text' not found in {data} (line 2); columns are: message, sentiment" in err
    )
    argv = ["evaluate", "--run", str(run), "--data", str(data), "--text-column", "message"]
    err = fails(argv, capsys)
    assert "label column 'label' not found" in err and "columns are: message, sentiment" in err
    argv += ["--label-column", "sentiment", "--json"]
    assert main(argv) == 0  # named explicitly, the same file evaluates
    assert json.loads(capsys.readouterr().out)["num_samples"] == 1


# ====================
# A tokenizer that does not fit the model
# ====================


def test_run_with_another_runs_tokenizer_is_refused(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mixed = tmp_path / "mixed"
    shutil.copytree(run, mixed)
    other = Tokenizer.train(generate_posts(300, seed=9).texts, vocab_size=150)
    other.save(mixed / "tokenizer.json")
    vocab = json.loads((run / "config.json").read_text())["model_config"]["vocab_size"]
    assert other.vocab_size != vocab
    err = fails(["predict", "--run", str(mixed), "--text", "hi"], capsys)
    assert (
        f"run folder {mixed}: tokenizer.json has vocab_size {other.vocab_size} but the model "
        f"in config.json was built for vocab_size {vocab}"
    ) in err
    shutil.copy(run / "tokenizer.json", mixed / "tokenizer.json")
    LabelMap(["no", "yes"]).save(mixed / "label_map.json")
    err = fails(["evaluate", "--run", str(mixed), "--data", str(tmp_path / "x.csv")], capsys)
    assert "label_map.json has 2 labels but the model in config.json has num_classes 4" in err


def test_build_dataloaders_refuses_a_tokenizer_larger_than_the_model() -> None:
    posts = generate_posts(40, seed=1)
    tok = Tokenizer.train(posts.texts, vocab_size=120)
    train, val = split_posts(posts, 0.25, seed=0)
    label_map = LabelMap.from_labels(posts.labels)
    small = tiny_config(num_classes=4, vocab_size=50)
    with pytest.raises(
        ValueError,
        match=rf"tokenizer vocab_size={tok.vocab_size} is larger than the model's "
        r"config.vocab_size=50; build the ModelConfig with vocab_size=tokenizer.vocab_size",
    ):
        build_dataloaders(train, val, tok, label_map, small)
    fits = tiny_config(num_classes=4, vocab_size=tok.vocab_size, max_seq_length=16)
    loader, _ = build_dataloaders(train, val, tok, label_map, fits)
    assert int(max(batch["input_ids"].max() for batch in loader)) < tok.vocab_size
    assert torch.is_tensor(next(iter(loader))["input_ids"])


def test_train_reports_invalid_utf8_or_replaces_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    posts = generate_posts(40, seed=6)
    lines = [
        f"{t.replace(',', ' ')},{label}".encode() for t, label in zip(posts.texts, posts.labels)
    ]
    lines[6] = b"na\xefve bad byte,neutral"
    data = tmp_path / "train.csv"
    data.write_bytes(b"text,label\n" + b"\n".join(lines) + b"\n")
    argv = ["train", "--data", str(data), "--output", str(tmp_path / "run"), "--quiet"]
    argv += ["--model", "cnn", "--input-dim", "8", "--hidden-dim", "8", "--num-heads", "2"]
    argv += ["--vocab-size", "100", "--max-length", "16", "--epochs", "1", "--threads", "1"]
    err = fails(argv, capsys)
    assert "byte 0xef on line 8" in err
    assert main([*argv, "--encoding-errors", "replace"]) == 0
    assert (tmp_path / "run" / "best.pt").is_file()


def test_train_on_too_few_posts_to_split_names_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two posts leave no validation post at the default share: the refusal names
    --val-fraction, the command line's spelling of the library's val_fraction."""
    data = tmp_path / "train.csv"
    data.write_text("text,label\ngood day,positive\nbad day,negative\n", "utf-8")
    argv = ["train", "--data", str(data), "--output", str(tmp_path / "run"), "--quiet"]
    err = fails([*argv, "--model", "cnn", "--epochs", "1", "--threads", "1"], capsys)
    assert "--val-fraction 0.1 leaves an empty part for 2 posts" in err
    assert "val_fraction" not in err


def test_jsonl_unpaired_surrogate_names_the_line_or_is_replaced(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "escapes.jsonl"  # a paired escape is an emoji; a lone one is not text
    data.write_text('{"text": "ok \\ud83d\\ude00"}\n{"text": "half \\ud800 pair"}\n', "utf-8")
    out = tmp_path / "x.jsonl"
    err = fails(["predict", "--run", str(run), "--data", str(data), "--output", str(out)], capsys)
    assert f"text on line 2 of {data} holds an unpaired surrogate (\\ud800)" in err
    assert not out.exists()
    rows = predict(run, data, "--encoding-errors", "replace", "--quiet")
    assert [r["text"] for r in rows] == ["ok 😀", "half \ufffd pair"]
    posts = load_posts(data, require_labels=False, errors="ignore")
    assert posts.texts == ["ok 😀", "half  pair"]


# ====================
# Input that must never silently turn into wrong results
# ====================


def train_fails(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """`fbdl-fast train` on `data` must fail (status 2, one line) and write no run folder."""
    out = tmp_path / "run"
    err = fails(["train", "--data", str(data), "--output", str(out), "--quiet"], capsys)
    assert not out.exists() and not (tmp_path / ".run.partial").exists()
    return err


def test_csv_row_with_more_fields_than_the_header(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Case 9: "hello, world,spam" used to train a class named "world"."""
    data = tmp_path / "posts.csv"
    data.write_text("text,label\ngood day,positive\nhello, world,spam\n", "utf-8")
    err = train_fails(data, tmp_path, capsys)
    assert f"line 3 of {data} has 3 fields but the header has 2 (text, label)" in err
    assert 'an unquoted comma in the text? Quote the field ("hello, world")' in err
    assert "--text-column/--label-column" in err
    tsv = tmp_path / "posts.tsv"
    tsv.write_text("text\tlabel\nok\tpositive\nok\tpositive\nhello\tworld\tspam\n", "utf-8")
    err = train_fails(tsv, tmp_path, capsys)
    assert f"line 4 of {tsv} has 3 fields but the header has 2" in err and "unquoted tab" in err


def test_csv_duplicate_header_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "posts.csv"
    data.write_text("text,label,text\na,positive,b\n", "utf-8")
    err = train_fails(data, tmp_path, capsys)
    assert f"posts file {data}: column name 'text' appears twice in the header (line 1" in err


def test_label_warnings_at_train(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Case 10: labels differing only by case are kept apart, surrounding spaces are dropped
    (merged), rare classes and classes only in validation are named; all with a warning."""
    rows = [(f"ham post {i}", "ham") for i in range(9)] + [("ham post 9", " ham ")]
    rows += [(f"spam post {i}", "Spam") for i in range(10)]
    rows += [("a spam post", "spam"), ("a lonely post", "lonely")]
    data = write_csv(tmp_path / "posts.csv", rows)
    out = tmp_path / "run"
    argv = ["train", "--data", str(data), "--output", str(out), "--val-fraction", "0.3"]
    assert main([*argv, "--epochs", "1", *tiny_model_args()]) == 0
    err = capsys.readouterr().err
    assert "labels are read without surrounding spaces, so these are merged with the label " in err
    assert "they spell: ' ham ' -> 'ham' (line 11)" in err
    assert "labels 'Spam' and 'spam' differ only by case; they are kept apart" in err
    assert (
        "2 class(es) have fewer than 2 posts, too few to learn and to validate: lonely, spam" in err
    )
    assert "1 class(es) are only in the validation posts, never trained on: lonely" in err
    labels = json.loads((out / "label_map.json").read_text())["labels"]
    assert labels == ["Spam", "ham", "lonely", "spam"]


def test_a_thousand_classes_keep_the_progress_line_short(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [(f"post number {i}", f"class{i:05d}") for i in range(1000)]  # one post each
    data = write_csv(tmp_path / "posts.csv", rows)
    argv = ["train", "--data", str(data), "--output", str(tmp_path / "run"), "--epochs", "1"]
    assert main([*argv, *tiny_model_args()]) == 0
    err = capsys.readouterr().err
    assert "1000 classes (class00000, class00001, " in err and "class00019 and 980 more)" in err
    assert "100 class(es) are only in the validation posts" in err
    assert max(len(line) for line in err.splitlines()) < 500


def test_unbalanced_quote_names_the_line_where_it_opened(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Case 11: the line of the opening quote, not the end of the file."""
    data = tmp_path / "quote.csv"
    body = "".join(f"post {i},positive\n" for i in range(50))
    data.write_text(f'text,label\nfine,spam\n"never closed,spam\n{body}', "utf-8")
    err = fails(["evaluate", "--run", str(run), "--data", str(data)], capsys)
    assert f"posts file {data}: the quoted field on line 3 is never closed (the file ends " in err
    assert "inside it, on line 53)" in err


def test_nul_bytes_are_removed_and_reported(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "nul.csv"
    data.write_bytes(b"text,label\nhel\x00lo,positive\nfine,spam\n")
    rows = predict(run, data)
    assert [r["text"] for r in rows] == ["hello", "fine"]
    err = capsys.readouterr().err
    assert f"{data}: 1 line(s) held NUL bytes (\\0), which were removed (line 2)" in err


def test_a_csv_field_past_32_mi_characters_is_read_and_truncated(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Past the former 32 Mi cap (and the csv module's 128 KiB): read whole, truncated to
    max_length tokens like a JSONL post."""
    huge = "love it " * ((1 << 22) + 8)  # 32 Mi + 64 characters
    data = tmp_path / "huge.csv"
    data.write_text(f"text,label\n{huge},positive\nlove it,positive\n", "utf-8")
    assert main(["evaluate", "--run", str(run), "--data", str(data), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["num_samples"] == 2


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le"])
def test_utf16_input_is_named_without_raw_nul_bytes(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], encoding: str
) -> None:
    data = tmp_path / "utf16.csv"
    data.write_bytes("text,label\nhello,positive\n".encode(encoding))
    err = fails(["predict", "--run", str(run), "--data", str(data)], capsys)
    assert f"posts file {data} looks like UTF-16" in err and "convert it to UTF-8" in err
    assert "\x00" not in err
