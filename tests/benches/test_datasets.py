"""benches/studies/datasets.py debian: parsing a dumpavail text, choosing sections,
deduplicating, the stratified seeded split and the files it writes; benches/studies/
debian_table.py's training sample.
No apt-cache needed: the input is a small text in dumpavail's format."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from fbdl_fast.data import load_posts
from tiny_run import load_bench_script

datasets = load_bench_script("studies/datasets.py")
debian_table = load_bench_script("studies/debian_table.py")

DUMP = """\
Package: foo
Version: 1.0
Section: games
Description: a puzzle about falling blocks
 The long description is not kept.
 .
 Nor its paragraphs.
Maintainer: Someone <a@b.c>

Package: bar
Section: contrib/net
Description: fetch files over HTTP

Package: bar-doc
Section: non-free/net
Description: fetch files over HTTP

Package: baz
Section: games
Description: fetch files over HTTP

Package: nosection
Description: no section here

Package: nodescription
Section: games

Package: qux
Section: libs
Description: a library for blocks

Package: quux
Section: net
Description: serve web pages\r
"""


def test_parse_keeps_package_section_and_first_description_line() -> None:
    packages = datasets.parse_dumpavail(DUMP.splitlines(keepends=True))
    assert packages == [
        datasets.Package("foo", "games", "a puzzle about falling blocks"),
        datasets.Package("bar", "net", "fetch files over HTTP"),
        datasets.Package("bar-doc", "net", "fetch files over HTTP"),
        datasets.Package("baz", "games", "fetch files over HTTP"),
        datasets.Package("qux", "libs", "a library for blocks"),
        datasets.Package("quux", "net", "serve web pages"),
    ]


def test_section_name_strips_only_archive_areas() -> None:
    assert datasets.section_name("contrib/games") == "games"
    assert datasets.section_name("non-free-firmware/kernel") == "kernel"
    assert datasets.section_name("universe/net") == "net"
    assert datasets.section_name("games") == "games"
    assert datasets.section_name("odd/net") == "odd/net"


def test_select_dedupes_and_drops_descriptions_under_two_sections() -> None:
    packages = datasets.parse_dumpavail(DUMP.splitlines())
    corpus = datasets.select(packages, ["games", "net"])
    # "fetch files over HTTP" is under net twice and games once: ambiguous, dropped; libs not kept
    assert corpus.rows == [("a puzzle about falling blocks", "games"), ("serve web pages", "net")]
    assert corpus.ambiguous == 1
    assert corpus.duplicates == 2  # 5 packages of the kept sections, 3 distinct descriptions
    only_net = datasets.select(packages, ["net"])
    assert only_net.rows == [("fetch files over HTTP", "net"), ("serve web pages", "net")]
    assert (only_net.duplicates, only_net.ambiguous) == (1, 0)


def test_name_share_counts_the_section_name_as_a_word() -> None:
    rows = [("a game", "games"), ("more games here", "games"), ("neuroscience tools", "science")]
    assert datasets.name_share(rows) == {"games": 0.5, "science": 0.0}


def _rows(sizes: dict[str, int]) -> list[tuple[str, str]]:
    return [(f"{label} post {i}", label) for label, n in sizes.items() for i in range(n)]


def test_stratified_split_is_per_class_disjoint_and_deterministic() -> None:
    sizes = {"a": 50, "b": 23, "c": 7}
    rows = _rows(sizes)
    train, test = datasets.stratified_split(rows, 0.2, seed=3)
    assert sorted(train + test) == sorted(rows)
    assert Counter(label for _, label in test) == {"a": 10, "b": 5, "c": 1}
    shuffled = rows[:]
    random.Random(0).shuffle(shuffled)
    assert datasets.stratified_split(shuffled, 0.2, seed=3) == (train, test)  # order-free
    other = datasets.stratified_split(rows, 0.2, seed=4)
    assert set(other[1]) != set(test)
    with pytest.raises(ValueError, match=r"test_fraction=1\.5"):
        datasets.stratified_split(rows, 1.5)


def test_build_writes_files_train_reads(tmp_path: Path) -> None:
    stanzas = [
        f"Package: p{label}{i}\nSection: {label}\nDescription: {label[:2]} thing number {i}\n"
        for label, n in {"games": 20, "contrib/net": 10, "libs": 5}.items()
        for i in range(n)
    ]
    text = "\n".join(stanzas)
    counts = datasets.build_debian(text, tmp_path, sections=["games", "net"], seed=1)
    train = load_posts(tmp_path / "train.csv")
    test = load_posts(tmp_path / "test.csv")
    assert (len(train), len(test)) == (24, 6)
    assert Counter(test.labels) == {"games": 4, "net": 2}
    assert not set(train.texts) & set(test.texts)
    saved = json.loads((tmp_path / "counts.json").read_text())
    assert saved == counts
    assert saved["sections"] == {"games": {"train": 16, "test": 4}, "net": {"train": 8, "test": 2}}
    assert saved["packages"] == 35
    spare = load_posts(tmp_path / "unlabelled.csv", label_column=None)
    assert spare.labels is None and saved["unlabelled"] == 5
    assert sorted(spare.texts) == sorted(f"li thing number {i}" for i in range(5))
    first = (tmp_path / "train.csv").read_bytes()
    datasets.build_debian(text, tmp_path, sections=["games", "net"], seed=1)
    assert (tmp_path / "train.csv").read_bytes() == first  # rebuilt identically
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_unlabelled_leaves_out_descriptions_of_kept_sections() -> None:
    packages = datasets.parse_dumpavail(DUMP.splitlines())
    # "fetch files over HTTP" is a games and a net description: never an unlabelled post, even
    # when only games is kept (it could be in test.csv)
    games = datasets.unlabelled(packages, ["games"])
    assert games == ["a library for blocks", "serve web pages"]
    assert datasets.unlabelled(packages, ["net"]) == [
        "a library for blocks",
        "a puzzle about falling blocks",
    ]


def test_build_names_sections_missing_from_the_lists(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="section\\(s\\) math in the package lists"):
        datasets.build_debian(DUMP, tmp_path, sections=["games", "math"])
    assert not (tmp_path / "train.csv").exists()


def test_missing_apt_cache_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets.shutil, "which", lambda name: None)
    with pytest.raises(SystemExit, match=r"apt-cache not found.*--dumpavail FILE"):
        datasets.dumpavail()


def test_main_reads_a_saved_dump(tmp_path: Path) -> None:
    dump = tmp_path / "dump.txt"
    dump.write_text(DUMP, encoding="utf-8")
    out = tmp_path / "out"
    assert datasets.main(["debian", "--out", str(out), "--dumpavail", str(dump),
                          "--sections", "games", "net"]) == 0  # fmt: skip
    assert json.loads((out / "counts.json").read_text())["ambiguous_dropped"] == 1


def test_training_sample_caps_each_class_seeded() -> None:
    rows = _rows({"a": 30, "b": 4})
    sample = debian_table.per_class_sample(rows, 10, seed=0)
    assert Counter(label for _, label in sample) == {"a": 10, "b": 4}
    assert set(sample) <= set(rows)
    assert debian_table.per_class_sample(rows[::-1], 10, seed=0) == sample
    assert set(debian_table.per_class_sample(rows, 10, seed=1)) != set(sample)
