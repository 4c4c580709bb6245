"""Labels never change silently: they are read as texts are (Unicode NFC, format characters such
as zero-width spaces removed) with a warning when raw labels merge; a multi-label label holding
the separator is an error naming its line; a label spelling a JSON list gets a warning naming the
option meant; a class-weights JSON repeating a key, or weighting every class 0, is an error; a
multi-label class found only in validation is named, as a single-label one is."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from fbdl_fast.cli import main
from fbdl_fast.data import LabelMap, Posts, label_warnings, load_posts, split_posts
from fbdl_fast.data.labels import read_class_weights, weights_in_label_order
from fbdl_fast.data.readers import canonical_label, label_set
from fbdl_fast.training.session import posts_in_memory
from tiny_run import MULTI_LABEL_TRAIN, multi_label_posts_jsonl, tiny_model_args, write_csv

ZWSP = "\u200b"  # zero-width space (category Cf)


def _warnings(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


# ====================
# Unicode normalisation
# ====================


def test_a_label_is_read_in_nfc_without_format_characters() -> None:
    """'spam' + U+200B, 'sp' + U+00AD (soft hyphen) + 'am' and a decomposed 'é' are the labels
    they show."""
    assert canonical_label("spam" + ZWSP) == "spam"
    assert canonical_label("sp\u00adam") == "spam"
    assert canonical_label(f"{ZWSP} spam \ufeff") == "spam"
    assert canonical_label("cafe\u0301") == "caf\u00e9"
    assert canonical_label(f"4{ZWSP}2") == 42  # an integer once the invisible part is gone
    assert label_set(f"spam{ZWSP}|ham") == ("spam", "ham")


def test_only_one_spelling_of_each_integer_is_read_as_it() -> None:
    """ "0", "7" and "-7" are integers; "-0", "01" and "+1" are other labels, kept as written,
    so that no two labels written differently become one class."""
    assert [canonical_label(v) for v in ("0", "7", "-7", "-0", "01", "+1")] == [
        0, 7, -7, "-0", "01", "+1",
    ]  # fmt: skip


def test_zero_width_space_labels_merge_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """'spam' and 'spam' + U+200B are one class, and the warning names both and the line."""
    data = tmp_path / "posts.csv"
    data.write_text(f"text,label\na,spam\nb,spam{ZWSP}\nc,ham\n", "utf-8")
    with caplog.at_level(logging.WARNING, logger="fbdl_fast"):
        posts = load_posts(data)
    assert posts.labels == ["spam", "spam", "ham"]
    assert LabelMap.from_labels(posts.labels).labels == ["ham", "spam"]
    warned = _warnings(caplog)
    assert "'spam\\u200b' (line 3) and 'spam' (line 2) are read as one label, 'spam'" in warned
    assert "NFC" in warned and "format characters" in warned


def test_labels_given_as_lists_merge_with_the_same_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """fbdl_fast.train(texts=..., labels=...) reads its label list as a file's label column:
    'spam' + U+200B merges with 'spam' and the warning names both positions; a label spelling a
    JSON list is named too."""
    texts = ["a", "b", "c", "d"]
    labels = ["spam", f"spam{ZWSP}", "ham", '["spam", "ham"]']
    with caplog.at_level(logging.WARNING, logger="fbdl_fast"):
        posts = posts_in_memory(texts, labels)
    assert posts.labels == ["spam", "spam", "ham", '["spam", "ham"]']
    warned = _warnings(caplog)
    assert "<in-memory>" in warned
    assert "'spam\\u200b' (line 2) and 'spam' (line 1) are read as one label, 'spam'" in warned
    assert "written as a JSON list" in warned and "--multi-label" in warned


def test_a_lone_changed_label_is_named_too(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A label that only appears with a zero-width space is stored without it: said."""
    data = tmp_path / "posts.jsonl"
    rows = [{"text": "a", "label": f"spam{ZWSP}"}, {"text": "b", "label": "ham"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    with caplog.at_level(logging.WARNING, logger="fbdl_fast"):
        posts = load_posts(data)
    assert posts.labels == ["spam", "ham"]
    assert "'spam\\u200b' (line 1) is read as 'spam'" in _warnings(caplog)


def test_multi_label_parts_merge_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "posts.csv"
    data.write_text(f"text,label\na,spam|ham\nb,ham{ZWSP}\n", "utf-8")
    with caplog.at_level(logging.WARNING, logger="fbdl_fast"):
        posts = load_posts(data, label_separator="|")
    assert posts.labels == [("spam", "ham"), ("ham",)]
    assert "'ham\\u200b' (line 3) and 'ham' (line 2) are read as one label" in _warnings(caplog)
    caplog.clear()  # labels that are already in their normal form: no word
    data.write_text("text,label\na,spam|caf\u00e9\nb,3\n", "utf-8")
    with caplog.at_level(logging.WARNING, logger="fbdl_fast"):
        assert load_posts(data, label_separator="|").labels == [("spam", "caf\u00e9"), (3,)]
    assert _warnings(caplog) == ""


# ====================
# Multi-label: the separator inside a label
# ====================


def test_a_jsonl_label_holding_the_separator_is_an_error_naming_the_line(tmp_path: Path) -> None:
    """["a|b"] would be written by predict as "a|b" and read back as two labels."""
    data = tmp_path / "posts.jsonl"
    rows = [{"text": "x", "label": ["spam"]}, {"text": "y", "label": ["spam", "a|b"]}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    with pytest.raises(ValueError) as err:
        load_posts(data, label_separator="|")
    message = str(err.value)
    assert "label 'a|b' holds the label separator '|'" in message
    assert f"line 2 of {data}" in message
    assert "choose another separator" in message


def test_a_label_list_given_in_memory_may_not_hold_the_separator() -> None:
    with pytest.raises(ValueError, match="label 'x;y' holds the label separator ';'"):
        label_set(["x;y", "z"], ";")
    assert label_set(["x|y", "z"], ";") == ("x|y", "z")


# ====================
# A label that spells a JSON list
# ====================


def test_a_json_list_label_in_a_single_label_csv_names_multi_label(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "posts.csv"
    data.write_text('text,label\na,"[""spam"", ""urgent""]"\nb,ham\n', "utf-8")
    with caplog.at_level(logging.WARNING, logger="fbdl_fast"):
        posts = load_posts(data)
    assert posts.labels == ['["spam", "urgent"]', "ham"]
    warned = _warnings(caplog)
    assert """'["spam", "urgent"]' (line 2) is written as a JSON list""" in warned
    assert "--multi-label" in warned and "JSONL" in warned
    caplog.clear()  # brackets that hold no JSON list: no word
    data.write_text("text,label\na,[draft]\nb,ham\n", "utf-8")
    with caplog.at_level(logging.WARNING, logger="fbdl_fast"):
        load_posts(data)
    assert _warnings(caplog) == ""


def test_a_json_list_label_in_a_multi_label_csv_names_jsonl(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "posts.csv"
    data.write_text('text,label\na,"[""spam"", ""urgent""]"\nb,ham\n', "utf-8")
    with caplog.at_level(logging.WARNING, logger="fbdl_fast"):
        load_posts(data, label_separator="|")
    warned = _warnings(caplog)
    assert """'["spam", "urgent"]' (line 2) is written as a JSON list""" in warned
    assert "'spam|urgent'" in warned and "JSONL" in warned


# ====================
# Class weights
# ====================


def test_a_class_weights_json_repeating_a_key_is_an_error(tmp_path: Path) -> None:
    """As the CSV form: the first value is not silently replaced by the last."""
    path = tmp_path / "weights.json"
    path.write_text('{"spam": 5, "ham": 1, "spam": 0.5}', "utf-8")
    with pytest.raises(ValueError, match=r"weights.json gives label 'spam' twice \(key 'spam'\)"):
        read_class_weights(path, LabelMap(["ham", "spam"]))


def test_class_weights_that_are_all_zero_are_an_error(tmp_path: Path) -> None:
    label_map = LabelMap(["ham", "spam"])
    path = tmp_path / "weights.csv"
    path.write_text("ham,0\nspam,0.0\n", "utf-8")
    with pytest.raises(ValueError, match=r"every class weight is 0.*at least one must be > 0"):
        read_class_weights(path, label_map)
    with pytest.raises(ValueError, match="every class weight is 0"):
        weights_in_label_order({"ham": 0, "spam": 0}, label_map)
    assert weights_in_label_order({"ham": 0, "spam": 2}, label_map) == [0.0, 2.0]


# ====================
# Multi-label warnings
# ====================


def test_multi_label_classes_only_in_validation_are_named() -> None:
    train = Posts(["a", "b", "c"], [("spam",), ("spam", "ham"), ()], [1, 2, 3])  # type: ignore[list-item]
    val = Posts(["d", "e"], [("urgent",), ("ham", "Spam")], [4, 5])  # type: ignore[list-item]
    warnings = label_warnings(train, val)
    assert "2 class(es) are only in the validation posts, never trained on: Spam, urgent" in (
        warnings
    )
    assert any("labels 'Spam' and 'spam' differ only by case" in w for w in warnings)


# ====================
# Through `fbdl-fast train`
# ====================


def test_train_says_which_labels_merged_as_its_other_label_warnings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """'spam' and 'spam' + U+200B train one class, and train says so with its warning prefix."""
    rows = [(f"win a prize {i}", "spam") for i in range(10)] + [("win now", f"spam{ZWSP}")]
    rows += [(f"hello friend {i}", "ham") for i in range(11)]
    data = write_csv(tmp_path / "posts.csv", rows)
    out = tmp_path / "run"
    argv = ["train", "--data", str(data), "--output", str(out), "--epochs", "1"]
    assert main([*argv, *tiny_model_args(), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert (
        "fbdl-fast train: warning: " + f"{data}: labels are read as texts are, in Unicode NFC"
    ) in err
    assert "'spam\\u200b' (line 12) and 'spam' (line 2) are read as one label, 'spam'" in err
    assert json.loads((out / "label_map.json").read_text())["labels"] == ["ham", "spam"]


def test_multi_label_train_names_a_class_found_only_in_validation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A class whose only post falls in the validation split is named, as for one label a post
    (its threshold would be tuned on posts it was never trained on)."""
    data = multi_label_posts_jsonl(tmp_path / "posts.jsonl", n=60)
    posts = load_posts(data, label_separator="|")
    _, val = split_posts(posts, 0.1, 42, stratify=False)  # train's defaults: the same split
    records = [json.loads(line) for line in data.read_text("utf-8").splitlines()]
    records[val.lines[0] - 1]["label"].append("rare")
    data.write_text("".join(json.dumps(r) + "\n" for r in records), "utf-8")
    argv = ["train", "--data", str(data), "--output", str(tmp_path / "run"), "--epochs", "1"]
    assert main([*argv, "--multi-label", *MULTI_LABEL_TRAIN]) == 0
    err = capsys.readouterr().err
    assert (
        "fbdl-fast train: warning: "
        f"{data}: 1 class(es) are only in the validation posts, never trained on: rare"
    ) in err
