"""benches/studies/datasets.py manpages: reading a man folder (links, .so redirects, pages of
no archive package), dropping duplicates and descriptions under two sections, capping the
biggest section, and the split and files it writes. The man folder is built in tmp_path."""

from __future__ import annotations

import gzip
import json
import random
from collections import Counter
from pathlib import Path

import pytest

from fbdl_fast.data import load_posts
from tiny_run import load_bench_script

datasets = load_bench_script("studies/datasets.py")


def page(root: Path, section: str, name: str, source: str) -> Path:
    """root/man{section}/{name}.{section}.gz holding `source`."""
    path = root / f"man{section}" / f"{name}.{section}.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(source.encode()))
    return path


def name_page(root: Path, section: str, name: str, description: str) -> Path:
    return page(root, section, name, f".TH X {section}\n.SH NAME\n{name} \\- {description}\n")


def small_man_tree(root: Path) -> None:
    """Pages of every section, with a link, a redirect, a page without NAME, a duplicate and a
    description found in two sections."""
    for section in datasets.MAN_SECTIONS:
        for i in range(5):
            name_page(root, section, f"s{section}p{i}", f"thing {i} of section {section}")
    name_page(root, "1", "dup", "thing 0 of section 1")  # same text, same section: kept once
    name_page(root, "1", "both", "shared words")  # also in section 8: dropped
    name_page(root, "8", "both", "shared words")
    (root / "man3" / "alias.3.gz").symlink_to("s3p0.3.gz")  # a second path to s3p0
    page(root, "2", "redirect", '.\\" a comment\n.so man2/s2p0.2\n')
    page(root, "5", "broken", ".TH X 5\n.SH DESCRIPTION\nno name here\n")


def test_read_skips_links_redirects_and_pages_without_names(tmp_path: Path) -> None:
    """Every page is read once under its own path; what is left out is counted by reason."""
    small_man_tree(tmp_path)
    corpus = datasets.read_man_corpus(tmp_path)
    assert corpus.pages == 30 + 3 + 3
    assert (corpus.links, corpus.redirects, corpus.no_name) == (1, 1, 1)
    names = Counter(p.section for p in corpus.packages)
    assert names == {"1": 7, "2": 5, "3": 5, "5": 5, "7": 5, "8": 6}
    s3p0 = [p for p in corpus.packages if p.name == "s3p0"]
    assert s3p0 == [datasets.Package("s3p0", "3", "thing 0 of section 3")]


def test_read_keeps_only_pages_of_archive_packages(tmp_path: Path) -> None:
    """With owners and archive names, a page of a package outside the archive (or of no
    package) is left out and counted; a link is owned by the package of the page it leads to;
    contributing packages are counted by page."""
    first = name_page(tmp_path, "1", "ls", "list directory contents")
    second = name_page(tmp_path, "1", "gcloud-x", "a generated page")
    name_page(tmp_path, "1", "local", "a page of no package")
    # a link made by update-alternatives into another package's folder, in no dpkg list
    elsewhere = name_page(tmp_path / "postgresql", "1", "psql", "PostgreSQL terminal")
    (tmp_path / "man1" / "psql.1.gz").symlink_to(elsewhere)
    owners = {
        str(first): "coreutils",
        str(second): "google-cloud-cli",
        str(elsewhere): "postgresql-client",
    }
    archive = {"coreutils", "postgresql-client", "bash"}
    corpus = datasets.read_man_corpus(tmp_path, ["1"], owners, archive)
    descriptions = [p.description for p in corpus.packages]
    assert descriptions == ["list directory contents", "PostgreSQL terminal"]
    assert corpus.not_in_archive == 2
    assert corpus.owners == {"coreutils": 1, "postgresql-client": 1}


def test_page_owners_reads_dpkg_lists(tmp_path: Path) -> None:
    """dpkg's <package>[:arch].list files map each installed man page to its package."""
    (tmp_path / "libxt-dev:amd64.list").write_text(
        "/usr/include/X11/Intrinsic.h\n/usr/share/man/man3/XtAppInitialize.3.gz\n"
    )
    (tmp_path / "coreutils.list").write_text("/usr/bin/ls\n/usr/share/man/man1/ls.1.gz\n")
    assert datasets.page_owners(tmp_path) == {
        "/usr/share/man/man3/XtAppInitialize.3.gz": "libxt-dev",
        "/usr/share/man/man1/ls.1.gz": "coreutils",
    }


def rows(sizes: dict[str, int]) -> list[tuple[str, str]]:
    return [(f"post {i} of {label}", label) for label, n in sizes.items() for i in range(n)]


def test_cap_share_cuts_the_biggest_label_the_least_that_holds() -> None:
    """{1: 60, 2: 10, 3: 10} under 0.4: section 1 keeps 13 (13/33 <= 0.4, 14/34 > 0.4), drawn
    seeded and independent of the rows' order; smaller labels are whole."""
    given = rows({"1": 60, "2": 10, "3": 10})
    capped = datasets.cap_share(given, 0.4, seed=1)
    assert Counter(label for _, label in capped) == {"1": 13, "2": 10, "3": 10}
    assert set(capped) <= set(given)
    shuffled = given[:]
    random.Random(0).shuffle(shuffled)
    assert datasets.cap_share(shuffled, 0.4, seed=1) == capped
    assert set(datasets.cap_share(given, 0.4, seed=2)) != set(capped)
    balanced = rows({"1": 3, "2": 3, "3": 3})
    assert sorted(datasets.cap_share(balanced, 0.4)) == sorted(balanced)  # nothing to cut


def test_cap_share_refuses_shares_it_cannot_hold() -> None:
    """Two labels cannot each be at most 40%; a share outside (0, 1] is refused by value."""
    with pytest.raises(ValueError, match=r"max_share=0\.4 cannot hold with 2 labels"):
        datasets.cap_share(rows({"1": 5, "2": 5}), 0.4)
    with pytest.raises(ValueError, match=r"max_share=0 is not in \(0, 1\]"):
        datasets.cap_share(rows({"1": 5}), 0)


def test_build_dedupes_caps_splits_and_counts(tmp_path: Path) -> None:
    """The files hold each description once, none from two sections, no section above the
    cap, test disjoint from train; counts.json says so and is rebuilt identically."""
    root, out = tmp_path / "man", tmp_path / "out"
    small_man_tree(root)
    for i in range(20):  # section 1 becomes the biggest: 5 + 20 descriptions
        name_page(root, "1", f"extra{i}", f"extra command {i}")
    corpus = datasets.read_man_corpus(root)
    counts = datasets.build_manpages(corpus, out, max_share=0.4, seed=3)
    train, test = load_posts(out / "train.csv"), load_posts(out / "test.csv")
    texts = train.texts + test.texts
    assert len(texts) == len(set(texts))
    assert "shared words" not in texts and "both" not in " ".join(texts)
    sizes = Counter(train.labels + test.labels)  # the reader reads digit labels as numbers
    # five sections of 5, section 1 capped at c <= 0.4 x (c + 25): 16 of its 25
    assert sizes == {1: 16, 2: 5, 3: 5, 5: 5, 7: 5, 8: 5}
    assert not set(train.texts) & set(test.texts)
    saved = json.loads((out / "counts.json").read_text())
    assert saved == counts
    assert saved["sections"]["1"] == {"train": 13, "test": 3, "before_cap": 25}
    # as for Debian: pages less distinct descriptions (dup, and the second "shared words")
    assert (saved["duplicates_dropped"], saved["ambiguous_dropped"]) == (2, 1)
    assert (saved["links_skipped"], saved["redirects_skipped"], saved["no_name_skipped"]) == (
        1,
        1,
        1,
    )
    first = (out / "train.csv").read_bytes()
    datasets.build_manpages(datasets.read_man_corpus(root), out, max_share=0.4, seed=3)
    assert (out / "train.csv").read_bytes() == first


def test_build_names_sections_without_pages(tmp_path: Path) -> None:
    """A man folder without section 7 pages is refused, naming the section."""
    for section in ("1", "2", "3", "5", "8"):
        name_page(tmp_path, section, "x", f"text {section}")
    with pytest.raises(SystemExit, match=r"section\(s\) 7 was read"):
        datasets.build_manpages(datasets.read_man_corpus(tmp_path), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_main_builds_from_a_man_root(tmp_path: Path) -> None:
    """`datasets.py manpages --man-root DIR --any-package` writes the task without apt or dpkg."""
    small_man_tree(tmp_path / "man")
    out = tmp_path / "out"
    argv = ["manpages", "--out", str(out), "--man-root", str(tmp_path / "man"), "--any-package"]
    assert datasets.main(argv) == 0
    counts = json.loads((out / "counts.json").read_text())
    assert counts["train"] + counts["test"] == 30  # 31 descriptions less the shared one


def test_main_without_apt_cache_says_what_to_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Off Debian, `manpages` without --any-package names the missing apt-cache and the flag."""
    monkeypatch.setattr(datasets.shutil, "which", lambda name: None)
    with pytest.raises(SystemExit, match=r"manpages: apt-cache not found.*--any-package"):
        datasets.main(["manpages", "--out", str(tmp_path / "out"), "--man-root", str(tmp_path)])
