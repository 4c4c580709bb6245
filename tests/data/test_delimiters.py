"""A .csv file saved with semicolons (a spreadsheet in many locales), tabs or vertical bars is
read with that delimiter when its header does not split on commas into the columns asked for,
and the log says so; a header that still lacks them gets an error naming the delimiter. Comma
files and .tsv files read as before.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from fbdl_fast.data import iter_posts, load_posts

READER = "fbdl_fast.data.readers"


@pytest.mark.parametrize(("delimiter", "name"), [(";", "semicolon"), ("\t", "tab"), ("|", "bar")])
def test_a_csv_with_another_delimiter_is_read_with_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, delimiter: str, name: str
) -> None:
    """The posts, their labels and a kept column come out as from a comma file, and one log
    line names the delimiter used."""
    path = tmp_path / "posts.csv"
    rows = [["id", "text", "label"], ["7", "free prize, now", "spam"], ["8", "hi there", "ham"]]
    path.write_text("".join(delimiter.join(row) + "\n" for row in rows), "utf-8")
    with caplog.at_level(logging.INFO, logger=READER):
        posts = load_posts(path)
    assert posts.texts == ["free prize, now", "hi there"] and posts.labels == ["spam", "ham"]
    said = [r.getMessage() for r in caplog.records if r.name == READER]
    assert len(said) == 1 and f"read with {delimiter!r} as the delimiter" in said[0], said
    assert name in said[0]
    kept = [post.kept for post in iter_posts(path, label_column=None, keep=["id"])]
    assert kept == [("7",), ("8",)]
    from fbdl_fast.data.readers import file_columns

    assert file_columns(path) == ["id", "text", "label"]


def test_a_comma_file_is_read_with_commas_and_says_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Texts holding ; | and tabs do not make a comma file's delimiter anything but a comma."""
    path = tmp_path / "posts.csv"
    path.write_text('text,label\n"a;b|c\td",spam\nplain;text,ham\n', "utf-8")
    with caplog.at_level(logging.INFO, logger=READER):
        posts = load_posts(path)
    assert posts.texts == ["a;b|c\td", "plain;text"] and posts.labels == ["spam", "ham"]
    assert not [r for r in caplog.records if "delimiter" in r.getMessage()]


def test_a_semicolon_header_without_the_column_names_the_delimiter(tmp_path: Path) -> None:
    """Before, the error said only "columns are: message;label"; now it says the header splits
    on semicolons and what the columns would be."""
    path = tmp_path / "posts.csv"
    path.write_text("message;label\nhello;spam\n", "utf-8")
    with pytest.raises(ValueError) as caught:
        load_posts(path)
    message = str(caught.value)
    assert "text column 'text' not found" in message
    assert "split on semicolons, ';', they would be: message, label" in message
    assert "\n" not in message


def test_a_sniffed_delimiter_is_named_when_a_column_is_missing(tmp_path: Path) -> None:
    """A semicolon file whose text column is there but whose label column is not: read with
    semicolons, and the error says the header was split on them."""
    path = tmp_path / "posts.csv"
    path.write_text("text;sentiment\nhello;spam\n", "utf-8")
    posts = load_posts(path, require_labels=False)
    assert posts.texts == ["hello"] and posts.labels is None
    with pytest.raises(ValueError, match="label column 'label' not found") as caught:
        load_posts(path)
    assert "columns are: text, sentiment (the header was split on semicolons, ';')" in str(
        caught.value
    )


def test_a_one_column_header_names_no_delimiter_it_does_not_hold(tmp_path: Path) -> None:
    """A file of texts alone (header "text"): the missing label column's error lists the one
    column, with no word of a delimiter the header does not contain."""
    path = tmp_path / "posts.csv"
    path.write_text("text\nhello\n", "utf-8")
    with pytest.raises(ValueError, match="label column 'label' not found") as caught:
        load_posts(path)
    assert str(caught.value).endswith("columns are: text")
    assert load_posts(path, require_labels=False).texts == ["hello"]


def test_a_tsv_file_is_read_with_tabs_only(tmp_path: Path) -> None:
    """.tsv keeps its tab: a comma header there is one column, and the error says so."""
    path = tmp_path / "posts.tsv"
    path.write_text("text\tlabel\na;b\tspam\n", "utf-8")
    assert load_posts(path).texts == ["a;b"]
    commas = tmp_path / "commas.tsv"
    commas.write_text("text,label\nhello,spam\n", "utf-8")
    with pytest.raises(ValueError, match="columns are: text,label"):
        load_posts(commas)
