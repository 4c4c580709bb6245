"""Real-text datasets that anyone can rebuild from files on their own machine.

    python benches/studies/datasets.py debian --out data/debian

`debian`: the one-line descriptions of Debian packages (`apt-cache dumpavail`, after
`apt-get update`) labelled with their Section, as a topic-classification task on short real
texts. Only sections whose names rarely appear in the descriptions are kept (the default
DEBIAN_SECTIONS): the label must not be read off the text as a word, and language sections
(python, perl, libs ...) are left out because the package's language is most often named in
its description. Identical descriptions are kept once; a description listed under two of the
kept sections is dropped (no right answer). The posts are split 80/20, stratified by section
and seeded, into train.csv and test.csv (columns text,label, as `fbdl-fast train --data`
reads them), unlabelled.csv (column text: the descriptions of every other section, each once,
none of them a description of a kept section: the transfer set of `fbdl-fast distill
--unlabelled`) plus counts.json (posts per section and split, how often each section's name
appears in its own descriptions, and the files' sha256). The package lists change with each
`apt-get update`, so counts.json records what was built.

    python benches/studies/datasets.py manpages --out data/manpages

`manpages`: the one-line NAME descriptions of the man pages in sections 1, 2, 3, 5, 7 and 8
(/usr/share/man/manN), labelled with the section digit. The pages are those of the packages
installed: as root, `apt-get update && apt-get install -y --no-install-recommends manpages
manpages-dev lvm2 btrfs-progs xfsprogs sudo net-tools` adds the C library's (2, 3, 5, 7) and
some administration pages (8) to a Debian system; counts.json lists every package whose pages
were read (`apt-get install $(jq -r '.packages | keys[]' counts.json)` installs them). Only
pages of a package that `apt-cache dumpavail` lists are read (--any-package: all), so pages of
other vendors' packages (thousands of generated pages of one cloud CLI here) and of no package
are left out. Links, `.so` redirects (both repeat a page read once) and pages without a "name
\\- description" NAME line are skipped and counted. The text is the description only: the
page's names ("open, openat, creat") would give the section away by their form alone
(functions, commands, file names). Identical descriptions are kept once, a description under
two sections is dropped, and the biggest sections are down-sampled (seeded) so that none is
more than 40% of the posts (--max-share): section 1 has most pages of any system, and a task
where one class is most posts is won by guessing it. The split and files are the Debian
task's: train.csv, test.csv and counts.json.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import random
import re
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from fbdl_fast.files import write_atomic

sys.path.insert(0, str(Path(__file__).resolve().parent))
from man_roff import is_redirect, parse_name_section, read_page

# The sections first chosen for the task, less mail and database (their names appear in 35% and 27%
# of their own descriptions, against at most 7% here), plus utils and x11 to keep twelve. The
# share of each section's descriptions holding the name as a word is written to counts.json.
DEBIAN_SECTIONS = (
    "admin",
    "editors",
    "electronics",
    "games",
    "graphics",
    "math",
    "net",
    "science",
    "sound",
    "text",
    "utils",
    "x11",
)
# Archive areas written before the section ("contrib/games", Ubuntu's "universe/net").
AREAS = ("main", "contrib", "non-free", "non-free-firmware", "restricted", "universe", "multiverse")
TEST_FRACTION = 0.2
SEED = 42


@dataclass(frozen=True)
class Package:
    """One stanza of `apt-cache dumpavail`: the package, its section and first description line."""

    name: str
    section: str
    description: str


def section_name(section: str) -> str:
    """The section without its archive area: "contrib/games" -> "games"."""
    area, slash, rest = section.partition("/")
    return rest if slash and area in AREAS else section


def parse_dumpavail(lines: Iterable[str]) -> list[Package]:
    """The packages of a dumpavail (Debian control) text that have a Section and a Description.

    Stanzas are separated by blank lines; continuation lines (starting with a space or a tab,
    the long description) are skipped, so only the Description's first line is kept.
    """
    packages: list[Package] = []
    fields: dict[str, str] = {}

    def flush() -> None:
        name, section = fields.get("Package"), fields.get("Section")
        description = fields.get("Description", "").strip()
        if name and section and description:
            packages.append(Package(name, section_name(section), description))
        fields.clear()

    for line in lines:
        line = line.rstrip("\r\n")
        if not line.strip():
            flush()
        elif line[0] not in " \t":
            key, colon, value = line.partition(":")
            if colon:
                fields[key] = value.strip()
    flush()
    return packages


@dataclass
class Corpus:
    """Deduplicated (description, section) rows of the kept sections, and what was dropped."""

    rows: list[tuple[str, str]]
    duplicates: int  # packages whose description was already kept under the same section
    ambiguous: int  # descriptions listed under two or more kept sections, all dropped


def select(packages: Sequence[Package], sections: Sequence[str]) -> Corpus:
    """Descriptions of `sections`, each once; ones found under two sections are dropped."""
    wanted = set(sections)
    found: dict[str, set[str]] = defaultdict(set)
    seen = 0
    for p in packages:
        if p.section in wanted:
            found[p.description].add(p.section)
            seen += 1
    rows = sorted((d, next(iter(s))) for d, s in found.items() if len(s) == 1)
    ambiguous = sum(len(s) > 1 for s in found.values())
    return Corpus(rows, duplicates=seen - len(found), ambiguous=ambiguous)


def unlabelled(packages: Sequence[Package], sections: Sequence[str]) -> list[str]:
    """The descriptions of the packages outside `sections`, each once, sorted, leaving out any
    description also listed under one of `sections` (it could be a test post)."""
    wanted = set(sections)
    inside = {p.description for p in packages if p.section in wanted}
    return sorted({p.description for p in packages if p.description not in inside})


def name_share(rows: Sequence[tuple[str, str]]) -> dict[str, float]:
    """Per section, the share of its descriptions holding the section's name as a word."""
    hits: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    for text, label in rows:
        totals[label] += 1
        hits[label] += bool(re.search(rf"\b{re.escape(label)}\b", text, re.IGNORECASE))
    return {label: hits[label] / totals[label] for label in sorted(totals)}


def stratified_split(
    rows: Sequence[tuple[str, str]], test_fraction: float = TEST_FRACTION, seed: int = SEED
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(train, test): round(n x test_fraction) of each label's rows go to test, drawn seeded.

    The result depends only on the set of rows and the seed, not on their order.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction={test_fraction} is not in (0, 1)")
    by_label: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for row in sorted(rows):
        by_label[row[1]].append(row)
    rng = random.Random(seed)
    train: list[tuple[str, str]] = []
    test: list[tuple[str, str]] = []
    for label in sorted(by_label):
        group = by_label[label]
        rng.shuffle(group)
        n_test = round(len(group) * test_fraction)
        test += group[:n_test]
        train += group[n_test:]
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test


def csv_text(rows: Sequence[Sequence[str]], header: Sequence[str] = ("text", "label")) -> str:
    """The rows as CSV under `header`; the default text,label is what `fbdl-fast train` reads."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def dumpavail() -> str:
    """The output of `apt-cache dumpavail`; a clear error where apt-cache is missing or empty."""
    if shutil.which("apt-cache") is None:
        raise SystemExit(
            "datasets.py debian: apt-cache not found. The Debian dataset is read from "
            "`apt-cache dumpavail` on Debian or Ubuntu (run `apt-get update` first); elsewhere "
            "save that command's output on such a machine and pass it with --dumpavail FILE"
        )
    done = subprocess.run(
        ["apt-cache", "dumpavail"], capture_output=True, text=True, encoding="utf-8",
        errors="replace", check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"apt-cache dumpavail failed ({done.returncode}): {done.stderr.strip()}")
    if "Package:" not in done.stdout:
        raise SystemExit(
            "apt-cache dumpavail listed no packages: the package lists are empty; run "
            "`apt-get update` (as root) first"
        )
    return done.stdout


def build_debian(
    text: str,
    out: Path,
    sections: Sequence[str] = DEBIAN_SECTIONS,
    test_fraction: float = TEST_FRACTION,
    seed: int = SEED,
) -> dict[str, object]:
    """Write out/train.csv, out/test.csv, out/unlabelled.csv and out/counts.json from a
    dumpavail text; the counts."""
    packages = parse_dumpavail(text.splitlines())
    present = {p.section for p in packages}
    missing = [s for s in sections if s not in present]
    if missing:
        raise SystemExit(
            f"datasets.py debian: no package of section(s) {', '.join(missing)} in the "
            f"package lists; sections present: {', '.join(sorted(present))}"
        )
    corpus = select(packages, sections)
    train, test = stratified_split(corpus.rows, test_fraction, seed)
    spare = unlabelled(packages, sections)
    files = {
        "train.csv": csv_text(train),
        "test.csv": csv_text(test),
        "unlabelled.csv": csv_text([(text,) for text in spare], header=("text",)),
    }
    for name, data in files.items():
        write_atomic(out / name, data)
    train_counts, test_counts = Counter(r[1] for r in train), Counter(r[1] for r in test)
    counts: dict[str, object] = {
        "source": "apt-cache dumpavail",
        "packages": len(packages),
        "sections": {
            s: {"train": train_counts[s], "test": test_counts[s]} for s in sorted(sections)
        },
        "train": len(train),
        "test": len(test),
        "unlabelled": len(spare),
        "duplicates_dropped": corpus.duplicates,
        "ambiguous_dropped": corpus.ambiguous,
        "name_in_own_text": {k: round(v, 4) for k, v in name_share(corpus.rows).items()},
        "test_fraction": test_fraction,
        "seed": seed,
        "sha256": {n: hashlib.sha256(d.encode()).hexdigest() for n, d in files.items()},
    }
    write_atomic(out / "counts.json", json.dumps(counts, indent=2) + "\n")
    return counts


# ----------------------------------------------------------------------------- man pages

MAN_SECTIONS = ("1", "2", "3", "5", "7", "8")
MAN_ROOT = Path("/usr/share/man")
DPKG_INFO = Path("/var/lib/dpkg/info")
# No section may be more than this share of the posts, so that guessing the biggest is right at
# most 40% of the time. Section 1 holds most pages of any system; with the packages of the
# docstring it is 30% of the posts and nothing is cut, but with more commands installed (the
# cloud CLI's pages here, --any-package) it would be most of the task.
MAX_SHARE = 0.4


def find_pages(man_root: Path, sections: Sequence[str]) -> list[tuple[Path, str]]:
    """(path, section) of every page in man_root/manN (N in sections), sorted by path; the
    section is the folder's digit (a page "open.3pm" in man3 is a section 3 page)."""
    return [
        (path, section)
        for section in sections
        for path in sorted((man_root / f"man{section}").glob("*"))
        if path.is_file()
    ]


def page_owners(dpkg_info: Path = DPKG_INFO) -> dict[str, str]:
    """Installed file path -> the Debian package that installed it, from dpkg's *.list files
    ("libxt-dev:amd64.list" -> "libxt-dev")."""
    owners: dict[str, str] = {}
    for listing in sorted(dpkg_info.glob("*.list")):
        package = listing.stem.split(":")[0]
        for line in listing.read_text(encoding="utf-8", errors="replace").splitlines():
            if "/man/man" in line:
                owners[line] = package
    return owners


def cap_share(
    rows: Sequence[tuple[str, str]], max_share: float = MAX_SHARE, seed: int = SEED
) -> list[tuple[str, str]]:
    """The rows with the biggest labels down-sampled (seeded, order-free) so that no label is
    more than max_share of the rows kept; the smallest cut that does it."""
    if not 0 < max_share <= 1:
        raise ValueError(f"max_share={max_share} is not in (0, 1]")
    sizes = Counter(label for _, label in rows)
    # The largest per-label cap c with c <= max_share x (rows left under cap c); the rows left
    # grow more slowly than c as c grows, so the caps that hold are 0..c*: search for c*.
    low, high = 0, max(sizes.values(), default=0)
    while low < high:
        mid = (low + high + 1) // 2
        if mid <= max_share * sum(min(n, mid) for n in sizes.values()):
            low = mid
        else:
            high = mid - 1
    if rows and low == 0:
        raise ValueError(
            f"max_share={max_share} cannot hold with {len(sizes)} labels; accepted: a share of "
            f"at least 1/{len(sizes)}"
        )
    by_label: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for row in sorted(rows):
        by_label[row[1]].append(row)
    rng = random.Random(seed)
    kept: list[tuple[str, str]] = []
    for label in sorted(by_label):
        group = by_label[label]
        kept += sorted(rng.sample(group, low)) if len(group) > low else group
    return kept


@dataclass
class ManCorpus:
    """The NAME lines read from a man folder, and how many pages were left out and why."""

    packages: list[Package]  # name: the page's first name; section: its digit
    owners: Counter[str]  # pages per Debian package that installed them
    pages: int = 0
    links: int = 0  # a second path to a page already read (symlinks, alternatives)
    redirects: int = 0  # ".so" pages: the page they name is read instead
    no_name: int = 0  # no NAME section, or no "name \- description" in it
    not_in_archive: int = 0  # installed by no package of the archive lists


def read_man_corpus(
    man_root: Path,
    sections: Sequence[str] = MAN_SECTIONS,
    owners: dict[str, str] | None = None,
    archive: set[str] | None = None,
) -> ManCorpus:
    """The NAME lines of man_root's pages; with owners and archive, only the pages that a
    package of the archive (apt-cache dumpavail's names) installed."""
    corpus = ManCorpus([], Counter())
    seen: set[Path] = set()
    # Real files before links, so that a page is read under its own path, section and owner.
    pages = sorted(find_pages(man_root, sections), key=lambda page: page[0].is_symlink())
    for path, section in pages:
        corpus.pages += 1
        real = path.resolve()
        if real in seen:
            corpus.links += 1
            continue
        seen.add(real)
        # a link made by update-alternatives (PostgreSQL's, Java's pages) is in no package's
        # list: the page it leads to is
        package = "" if owners is None else owners.get(str(path)) or owners.get(str(real), "")
        if archive is not None and package not in archive:
            corpus.not_in_archive += 1
            continue
        source = read_page(path)
        if is_redirect(source):
            corpus.redirects += 1
            continue
        line = parse_name_section(source)
        if line is None:
            corpus.no_name += 1
            continue
        corpus.packages.append(Package(line.names[0], section, line.description))
        corpus.owners[package] += 1
    return corpus


def build_manpages(
    corpus: ManCorpus,
    out: Path,
    sections: Sequence[str] = MAN_SECTIONS,
    max_share: float = MAX_SHARE,
    test_fraction: float = TEST_FRACTION,
    seed: int = SEED,
) -> dict[str, object]:
    """Write out/train.csv, out/test.csv and out/counts.json from the NAME lines; the counts."""
    present = {p.section for p in corpus.packages}
    missing = [s for s in sections if s not in present]
    if missing:
        raise SystemExit(
            f"datasets.py manpages: no page of section(s) {', '.join(missing)} was read; "
            f"install the pages first (see `datasets.py --help`)"
        )
    selected = select(corpus.packages, sections)
    rows = cap_share(selected.rows, max_share, seed)
    train, test = stratified_split(rows, test_fraction, seed)
    files = {"train.csv": csv_text(train), "test.csv": csv_text(test)}
    for name, data in files.items():
        write_atomic(out / name, data)
    before = Counter(label for _, label in selected.rows)
    train_counts, test_counts = Counter(r[1] for r in train), Counter(r[1] for r in test)
    counts: dict[str, object] = {
        "source": "man pages' NAME lines",
        "pages": corpus.pages,
        "links_skipped": corpus.links,
        "redirects_skipped": corpus.redirects,
        "no_name_skipped": corpus.no_name,
        "not_in_archive_skipped": corpus.not_in_archive,
        "sections": {
            s: {"train": train_counts[s], "test": test_counts[s], "before_cap": before[s]}
            for s in sorted(sections)
        },
        "train": len(train),
        "test": len(test),
        "duplicates_dropped": selected.duplicates,
        "ambiguous_dropped": selected.ambiguous,
        "max_share": max_share,
        "test_fraction": test_fraction,
        "seed": seed,
        "packages": dict(sorted(corpus.owners.items())),
        "sha256": {n: hashlib.sha256(d.encode()).hexdigest() for n, d in files.items()},
    }
    write_atomic(out / "counts.json", json.dumps(counts, indent=2) + "\n")
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="dataset", required=True)
    deb = sub.add_parser("debian", help="Debian package descriptions labelled by section")
    deb.add_argument("--out", type=Path, required=True, help="folder for train/test.csv")
    deb.add_argument(
        "--dumpavail", type=Path, help="a saved `apt-cache dumpavail` output instead of running it"
    )
    deb.add_argument(
        "--sections",
        nargs="+",
        default=list(DEBIAN_SECTIONS),
        help=f"sections kept as labels (default: {' '.join(DEBIAN_SECTIONS)})",
    )
    man = sub.add_parser("manpages", help="man pages' NAME descriptions labelled by section")
    man.add_argument("--out", type=Path, required=True, help="folder for train/test.csv")
    man.add_argument("--man-root", type=Path, default=MAN_ROOT, help=f"default: {MAN_ROOT}")
    man.add_argument(
        "--any-package",
        action="store_true",
        help="keep pages that no package of `apt-cache dumpavail` installed (default: left out)",
    )
    man.add_argument("--max-share", type=float, default=MAX_SHARE, help="cap on a section's share")
    for each in (deb, man):
        each.add_argument("--seed", type=int, default=SEED, help=f"split seed (default: {SEED})")
    args = parser.parse_args(argv)
    if args.dataset == "manpages":
        if not args.any_package and shutil.which("apt-cache") is None:
            raise SystemExit(
                "datasets.py manpages: apt-cache not found. The pages kept are those of the "
                "packages `apt-cache dumpavail` lists (Debian or Ubuntu); elsewhere pass "
                "--any-package to read every page of --man-root"
            )
        archive = (
            None
            if args.any_package
            else {p.name for p in parse_dumpavail(dumpavail().splitlines())}
        )
        owners = None if args.any_package else page_owners()
        corpus = read_man_corpus(args.man_root, MAN_SECTIONS, owners, archive)
        counts = build_manpages(corpus, args.out, max_share=args.max_share, seed=args.seed)
        print(
            f"{counts['train']} train / {counts['test']} test posts in {len(MAN_SECTIONS)} "
            f"sections written to {args.out}",
            file=sys.stderr,
        )
        return 0
    if args.dumpavail is not None:
        text = args.dumpavail.read_text(encoding="utf-8", errors="replace")
    else:
        text = dumpavail()
    counts = build_debian(text, args.out, args.sections, seed=args.seed)
    print(
        f"{counts['train']} train / {counts['test']} test posts in {len(args.sections)} "
        f"sections and {counts['unlabelled']} unlabelled posts written to {args.out}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
