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
    deb.add_argument("--seed", type=int, default=SEED, help=f"split seed (default: {SEED})")
    args = parser.parse_args(argv)
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
