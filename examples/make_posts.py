"""Write the quick-start's example posts: examples/posts.csv (training) and examples/test.csv.

The posts are the package's synthetic social-media posts (`fbdl_fast.data.synthetic`): four
balanced classes (positive, negative, neutral, spam) with URLs, @mentions, #hashtags, emoji,
misspellings and shouting. They are generated from fixed seeds, so running this script again
rewrites the same bytes (a test checks that the shipped files are this script's output).

    python examples/make_posts.py            # rewrites both files next to this script
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from fbdl_fast.data.synthetic import generate_posts

# (file name, posts, seed). No label noise: a newcomer's first run should learn clean labels.
FILES = (("posts.csv", 400, 2024), ("test.csv", 120, 2025))


def example_rows(count: int, seed: int, exclude: frozenset[str] = frozenset()) -> list[tuple]:
    """`count` rows (id, text, label) of distinct synthetic posts, none of whose texts is in
    `exclude` (a template filled with the same words twice is kept once)."""
    rows: list[tuple] = []
    taken = set(exclude)
    posts = generate_posts(count * 2, seed=seed, label_noise=0.0)
    for text, label in zip(posts.texts, posts.labels):
        if text not in taken and len(rows) < count:
            taken.add(text)
            rows.append((f"p{seed}-{len(rows) + 1:04d}", text, label))
    if len(rows) < count:
        raise ValueError(f"seed {seed} gave {len(rows)} new posts; expected {count}")
    return rows


def write_examples(folder: Path) -> list[Path]:
    """Write every file of FILES into `folder`; the test posts never repeat a training text."""
    written: list[Path] = []
    seen: frozenset[str] = frozenset()
    for name, count, seed in FILES:
        rows = example_rows(count, seed, exclude=seen)
        seen = seen | {text for _, text, _ in rows}
        path = folder / name
        with path.open("w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(("id", "text", "label"))
            writer.writerows(rows)
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write_examples(Path(__file__).resolve().parent):
        print(path, file=sys.stdout)
