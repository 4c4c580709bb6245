"""label_warnings names classes with fewer than MIN_CLASS_POSTS posts (with their counts) and
a data set of fewer than MIN_POSTS posts; a data set above both gets neither warning.
"""

from __future__ import annotations

from fbdl_fast.data import Posts, label_warnings
from fbdl_fast.data.labels import MIN_CLASS_POSTS, MIN_POSTS


def posts(labels: list[str]) -> Posts:
    return Posts([f"post {i}" for i in range(len(labels))], list(labels), list(range(len(labels))))


def test_few_posts_of_a_class_and_few_posts_in_all_are_warned_about() -> None:
    """5 posts of 2 classes: both classes are named with their counts, and the total."""
    train = posts(["spam", "spam", "ham", "ham"])
    val = posts(["spam"])
    warnings = label_warnings(train, val)
    assert (
        f"2 class(es) have fewer than {MIN_CLASS_POSTS} posts, too few to learn reliably (posts "
        "of each in all): ham (2), spam (3)"
    ) in warnings
    assert any(
        w.startswith(f"only 5 posts (4 train / 1 validation), fewer than {MIN_POSTS}")
        for w in warnings
    ), warnings


def test_enough_posts_get_no_size_warning() -> None:
    """MIN_CLASS_POSTS of each class and MIN_POSTS in all: no warning at all."""
    per_class = max(MIN_CLASS_POSTS, MIN_POSTS // 2)
    labels = ["spam"] * per_class + ["ham"] * per_class
    assert label_warnings(posts(labels[1:]), posts(labels[:1])) == []


def test_one_class_just_below_the_minimum_is_named_alone() -> None:
    labels = ["spam"] * MIN_POSTS + ["ham"] * (MIN_CLASS_POSTS - 1)
    warnings = label_warnings(posts(labels), posts(["spam"]))
    assert warnings == [
        f"1 class(es) have fewer than {MIN_CLASS_POSTS} posts, too few to learn reliably (posts "
        f"of each in all): ham ({MIN_CLASS_POSTS - 1})"
    ]
