"""Posts in, batches out: the data side of a run.

- `readers`: CSV/TSV/JSON-lines files into `Posts`, checked line by line;
- `labels`: the label map, class balance, warnings about labels;
- `loaders`: splits, tokenisation, length-bucketed batches;
- `synthetic`: the embedded synthetic dataset (the demo's posts).

The names below are re-exported so that `from fbdl_fast.data import LabelMap` works whichever
module defines them.
"""

from __future__ import annotations

from fbdl_fast.data.labels import (
    LabelMap,
    balanced_sample_weights,
    class_counts,
    describe_labels,
    label_warnings,
    read_class_weights,
    weights_in_label_order,
)
from fbdl_fast.data.loaders import (
    BucketBatchSampler,
    PostsDataset,
    build_dataloaders,
    collate,
    loader_order,
    make_loader,
    split_posts,
    tokenize_texts,
    train_val_split,
)
from fbdl_fast.data.readers import (
    ENCODING_ERRORS,
    FORMATS,
    Label,
    LabelSet,
    Post,
    Posts,
    canonical_label,
    iter_posts,
    label_set,
    load_posts,
)

__all__ = [
    "ENCODING_ERRORS",
    "FORMATS",
    "BucketBatchSampler",
    "Label",
    "LabelMap",
    "LabelSet",
    "Post",
    "Posts",
    "PostsDataset",
    "balanced_sample_weights",
    "build_dataloaders",
    "canonical_label",
    "class_counts",
    "collate",
    "describe_labels",
    "iter_posts",
    "label_set",
    "label_warnings",
    "load_posts",
    "loader_order",
    "make_loader",
    "read_class_weights",
    "split_posts",
    "tokenize_texts",
    "train_val_split",
    "weights_in_label_order",
]
