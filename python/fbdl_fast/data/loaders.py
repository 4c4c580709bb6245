"""Batches out: splits, tokenisation, length bucketing and dynamic padding.

    train, val = split_posts(posts, val_fraction=0.1, seed=42)
    train_loader, val_loader = build_dataloaders(train, val, tokenizer, label_map, config)

Each corpus is tokenised once, up front (`tokenize_texts`): a batch then only pads the ids it
holds, to its own longest post (`collate`). `BucketBatchSampler` puts posts of similar length in
the same batch, so little padding is computed at all. Its order is a pure function of (seed,
epoch): resuming a run at epoch k replays exactly the batches an uninterrupted run sees.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Optional, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from fbdl_fast.data.labels import LabelMap, balanced_sample_weights
from fbdl_fast.data.readers import Label, LabelSet, Posts

if TYPE_CHECKING:
    from fbdl_fast.config import ModelConfig
    from fbdl_fast.tokenizer import Tokenizer


# ====================
# Splitting
# ====================


def train_val_split(
    labels: Union[int, Sequence[Union[Label, LabelSet]]],
    val_fraction: float = 0.1,
    seed: int = 42,
    stratify: bool = True,
) -> tuple[list[int], list[int]]:
    """Seeded, disjoint train/validation indices, each sorted.

    `labels` is the label list (stratified: each class keeps its share in both parts, and a class
    with two or more posts has at least one in each) or just a count (plain random split).
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction!r} is invalid; expected a value in (0, 1)")
    n = labels if isinstance(labels, int) else len(labels)
    if n < 2:
        raise ValueError(f"cannot split {n} post(s) into train and validation; need at least 2")
    rng = np.random.default_rng(seed)
    if isinstance(labels, int) or not stratify:
        perm = rng.permutation(n)
        n_val = min(max(1, round(n * val_fraction)), n - 1)
        return sorted(perm[n_val:].tolist()), sorted(perm[:n_val].tolist())
    groups: dict[Union[Label, LabelSet], list[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(label, []).append(i)
    keys = sorted(groups, key=lambda v: (isinstance(v, str), v))  # a fixed order: seeded
    # Largest-remainder quotas: each class gives its share, and the total is round(n * fraction).
    shares = [len(groups[k]) * val_fraction for k in keys]
    quotas = [math.floor(s) for s in shares]
    by_remainder = sorted(range(len(keys)), key=lambda j: quotas[j] - shares[j])
    for j in by_remainder[: max(0, round(n * val_fraction) - sum(quotas))]:
        quotas[j] += 1
    train: list[int] = []
    val: list[int] = []
    for key, n_val in zip(keys, quotas):
        members = rng.permutation(groups[key]).tolist()
        if len(members) >= 2:  # a class with two posts is seen in both parts
            n_val = min(max(1, n_val), len(members) - 1)
        val += members[:n_val]
        train += members[n_val:]
    if not val or not train:
        raise ValueError(
            f"val_fraction={val_fraction} leaves an empty part for {n} posts; "
            "use more posts or another fraction"
        )
    return sorted(train), sorted(val)


def split_posts(
    posts: Posts, val_fraction: float = 0.1, seed: int = 42, stratify: bool = True
) -> tuple[Posts, Posts]:
    """`train_val_split` applied to `posts` (stratified by label when it has labels)."""
    keys = len(posts) if posts.labels is None else posts.labels
    train, val = train_val_split(keys, val_fraction, seed, stratify)
    return posts.subset(train), posts.subset(val)


# ====================
# Tokenising, dataset, sampler, collate
# ====================


def tokenize_texts(
    tokenizer: Tokenizer, texts: Sequence[str], max_length: int, chunk_size: int = 4096
) -> list[np.ndarray]:
    """Every text's ids (special tokens included, truncated to `max_length`), unpadded.

    The tokenizer pads each chunk to its longest row; the attention mask says where the real
    tokens end, so rows are cut back to their own length (padding is always on the right).
    """
    out: list[np.ndarray] = []
    for start in range(0, len(texts), chunk_size):
        enc = tokenizer.encode_batch(
            list(texts[start : start + chunk_size]),
            max_length=max_length,
            padding="longest",
            truncation=True,
        )
        ids = np.asarray(enc.input_ids, dtype=np.int64)
        lengths = np.asarray(enc.attention_mask).astype(bool).sum(axis=1)
        out.extend(ids[row, :length].copy() for row, length in enumerate(lengths))
    return out


class PostsDataset(Dataset):
    """Pre-tokenised posts: item i is {"input_ids": int64 array, "label": int (if labelled)}.

    Multi-label posts: `labels` is a (posts, classes) array of 0/1 (LabelMap.multi_hot) and
    "label" is the post's float32 row."""

    def __init__(
        self,
        input_ids: Sequence[np.ndarray],
        labels: Optional[Union[Sequence[int], np.ndarray]] = None,
    ):
        if labels is not None and len(labels) != len(input_ids):
            raise ValueError(
                f"PostsDataset got {len(labels)} labels for {len(input_ids)} posts; "
                "expected one label per post"
            )
        for i, ids in enumerate(input_ids):
            if len(ids) == 0:
                raise ValueError(f"post {i} has no tokens; every post needs at least one token")
        self.input_ids = [np.asarray(ids, dtype=np.int64) for ids in input_ids]
        self.labels: Any = None
        if isinstance(labels, np.ndarray) and labels.ndim == 2:
            self.labels = labels.astype(np.float32)
        elif labels is not None:
            self.labels = [int(v) for v in labels]

    @classmethod
    def from_texts(
        cls,
        tokenizer: Tokenizer,
        texts: Sequence[str],
        labels: Optional[Union[Sequence[int], np.ndarray]] = None,
        max_length: int = 512,
    ) -> PostsDataset:
        return cls(tokenize_texts(tokenizer, texts, max_length), labels)

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item: dict[str, Any] = {"input_ids": self.input_ids[index]}
        if self.labels is not None:
            item["label"] = self.labels[index]
        return item

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.input_ids]


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of indices whose lengths are alike, so padding to the batch's longest is cheap.

    With shuffle: the indices are permuted, cut into pools of `pool_batches` batches, each pool is
    sorted by length and cut into batches, and the batches are shuffled. Without: one sort by
    length, batches in order (evaluation). The generator is seeded with seed + epoch, so an
    epoch's batches depend on nothing else: `set_epoch(k)` after a resume replays epoch k.

    Every index appears exactly once per epoch; only the last batch can be short, and
    drop_last=True drops it.

    weights (one per post, shuffle only): the epoch's posts are len(lengths) draws with
    replacement, post i with probability weights[i] / sum(weights), from the same seed + epoch
    generator, in place of the permutation; pools, batches and the cut between ranks follow as
    above. So each rank still gets its own positions of one global draw, and an epoch's draw
    depends on (seed, epoch) alone (balanced_sample_weights: every class equally likely).

    Sharded for torch.distributed (num_replicas > 1, rank in [0, num_replicas)): the batches are
    built exactly as a single process with batch_size * num_replicas builds them (same seed, same
    epoch), and each is cut into num_replicas near-equal parts; rank r takes part r. So R ranks
    with batch B see together what one process with batch R*B sees, and a test can compare them.
    With shuffle (training) every rank yields the same number of batches, as DDP needs: a final
    batch with fewer posts than ranks repeats its posts so no rank's part is empty. Without
    shuffle (evaluation) nothing is repeated, every post is seen once, and a rank whose part of
    the final batch is empty yields one batch fewer.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        pool_batches: int = 50,
        num_replicas: int = 1,
        rank: int = 0,
        weights: Optional[Union[Sequence[float], np.ndarray]] = None,
    ) -> None:
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} is invalid; expected a positive integer")
        if pool_batches < 1:
            raise ValueError(f"pool_batches={pool_batches!r} is invalid; expected >= 1")
        if not isinstance(num_replicas, int) or num_replicas < 1:
            raise ValueError(f"num_replicas={num_replicas!r} is invalid; expected an integer >= 1")
        if not isinstance(rank, int) or not 0 <= rank < num_replicas:
            raise ValueError(
                f"rank={rank!r} is invalid for num_replicas={num_replicas}; expected "
                f"0..{num_replicas - 1}"
            )
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.pool_batches = pool_batches
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.probabilities: Optional[np.ndarray] = None
        if weights is not None:
            w = np.asarray(weights, dtype=np.float64)
            if not shuffle:
                raise ValueError("weights= draws a training order; it needs shuffle=True")
            if w.shape != self.lengths.shape or not np.all(np.isfinite(w)) or np.any(w < 0):
                raise ValueError(
                    f"weights must be {len(self.lengths)} finite numbers >= 0, one per post; "
                    f"got shape {w.shape}"
                )
            if w.sum() <= 0:
                raise ValueError("weights are all 0; at least one post must be drawable")
            self.probabilities = w / w.sum()

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration yields."""
        self.epoch = epoch

    def __len__(self) -> int:
        n, bs = len(self.lengths), self.batch_size * self.num_replicas
        batches = n // bs if self.drop_last else math.ceil(n / bs)
        if not self.shuffle and not self.drop_last and n % bs and n % bs <= self.rank:
            batches -= 1  # this rank's part of the short final batch is empty
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        if self.num_replicas == 1:
            yield from self._global_batches()
            return
        for batch in self._global_batches():
            if self.shuffle and len(batch) < self.num_replicas:
                batch = [batch[i % len(batch)] for i in range(self.num_replicas)]
            part = np.array_split(np.asarray(batch, dtype=np.int64), self.num_replicas)[self.rank]
            if len(part):
                yield part.tolist()

    def _global_batches(self) -> Iterator[list[int]]:
        """The batches of batch_size * num_replicas posts, before the cut between ranks."""
        n, bs = len(self.lengths), self.batch_size * self.num_replicas
        if not self.shuffle:
            order = np.argsort(self.lengths, kind="stable")
            batches = [order[i : i + bs] for i in range(0, n, bs)]
        else:
            rng = np.random.default_rng(self.seed + self.epoch)
            if self.probabilities is None:
                perm = rng.permutation(n)
            else:
                perm = rng.choice(n, size=n, replace=True, p=self.probabilities)
            pool = bs * self.pool_batches  # a multiple of bs: only the final batch can be short
            batches = []
            for start in range(0, n, pool):
                members = perm[start : start + pool]
                members = members[np.argsort(self.lengths[members], kind="stable")]
                batches += [members[i : i + bs] for i in range(0, len(members), bs)]
            if self.drop_last and batches and len(batches[-1]) < bs:
                batches.pop()
            rng.shuffle(batches)  # the short batch, if kept, lands anywhere
        for batch in batches:
            if len(batch) == bs or not self.drop_last:
                yield batch.tolist()


def collate(samples: Sequence[dict[str, Any]], pad_token_id: int = 0) -> dict[str, torch.Tensor]:
    """Pad a list of dataset items to their longest: the batch dict every model takes.

    Returns input_ids (B, L) int64 padded with `pad_token_id`, attention_mask (B, L) bool, True on
    real tokens, and labels (B,) int64 when the items carry labels ((B, C) float32 multi-hot
    rows for multi-label items).
    """
    if not samples:
        raise ValueError("collate got an empty batch; expected at least one sample")
    lengths = [len(s["input_ids"]) for s in samples]
    # Filled in numpy, one tensor at the end: a torch slice assignment a row took 30% of the
    # n-gram model's predict time (benches/studies/ngram_speed.py), numpy's a fifth of that.
    ids = np.full((len(samples), max(lengths)), pad_token_id, dtype=np.int64)
    for row, (sample, length) in enumerate(zip(samples, lengths)):
        ids[row, :length] = sample["input_ids"]
    input_ids = torch.from_numpy(ids)
    attention_mask = torch.arange(ids.shape[1])[None, :] < torch.tensor(lengths)[:, None]
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if "label" in samples[0] and isinstance(samples[0]["label"], np.ndarray):  # multi-hot rows
        batch["labels"] = torch.from_numpy(np.stack([s["label"] for s in samples]))
    elif "label" in samples[0]:
        batch["labels"] = torch.tensor([s["label"] for s in samples], dtype=torch.long)
    return batch


def make_loader(
    dataset: PostsDataset,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    pad_token_id: int = 0,
    drop_last: bool = False,
    num_replicas: int = 1,
    rank: int = 0,
    weights: Optional[Union[Sequence[float], np.ndarray]] = None,
) -> DataLoader:
    """A DataLoader over `dataset` with a BucketBatchSampler and padding `collate`.

    num_replicas / rank shard it for torch.distributed; weights draw the posts with replacement
    (see BucketBatchSampler)."""
    sampler = BucketBatchSampler(
        dataset.lengths,
        batch_size,
        shuffle=shuffle,
        seed=seed,
        drop_last=drop_last,
        num_replicas=num_replicas,
        rank=rank,
        weights=weights,
    )
    return DataLoader(
        dataset, batch_sampler=sampler, collate_fn=partial(collate, pad_token_id=pad_token_id)
    )


def build_dataloaders(
    train: Posts,
    val: Posts,
    tokenizer: Tokenizer,
    label_map: LabelMap,
    config: ModelConfig,
    num_replicas: int = 1,
    rank: int = 0,
) -> tuple[DataLoader, DataLoader]:
    """Train and validation loaders: tokenised once, bucketed, padded with config.pad_token_id.

    The training order is seeded by config.seed (+ epoch, via set_epoch); with
    config.sampler="balanced" its posts are drawn with replacement, every class equally likely
    (balanced_sample_weights). Validation runs in length order, unshuffled. num_replicas / rank
    give this rank's shard of both (config.batch_size posts per rank and batch; see
    BucketBatchSampler).
    """
    vocab_size = getattr(tokenizer, "vocab_size", None)
    if vocab_size is not None and vocab_size > config.vocab_size:
        # ids >= config.vocab_size would index past the model's embedding table
        raise ValueError(
            f"tokenizer vocab_size={vocab_size} is larger than the model's "
            f"config.vocab_size={config.vocab_size}; build the ModelConfig with "
            "vocab_size=tokenizer.vocab_size"
        )
    max_length = config.max_seq_length
    loaders = []
    for posts, shuffle in ((train, True), (val, False)):
        label_ids: Any = (
            label_map.multi_hot(posts) if config.multi_label else label_map.encode_all(posts)
        )
        dataset = PostsDataset.from_texts(tokenizer, posts.texts, label_ids, max_length=max_length)
        balanced = shuffle and config.sampler == "balanced"
        loaders.append(
            make_loader(
                dataset,
                config.batch_size,
                shuffle=shuffle,
                seed=config.seed,
                pad_token_id=config.pad_token_id,
                num_replicas=num_replicas,
                rank=rank,
                weights=balanced_sample_weights(label_ids) if balanced else None,
            )
        )
    return loaders[0], loaders[1]


def loader_order(loader: DataLoader) -> list[int]:
    """The dataset indices in the order `loader` yields them (to put predictions back in order)."""
    sampler = loader.batch_sampler
    if sampler is None:
        raise ValueError("loader_order needs a DataLoader built with a batch_sampler")
    return [i for batch in sampler for i in batch]
