"""NgramClassifier: a fastText-style linear classifier over hashed n-grams of token ids.

    token ids -> unigrams, and bigrams (trigrams too with config.extra["ngram_order"] = 3) of
    consecutive ids hashed into `buckets` rows -> the mean of their rows of one embedding
    table -> dropout -> linear head

The n-grams are formed inside the model from the run tokenizer's ids, with integer arithmetic
only (multiply, add, modulo), so that the model takes (input_ids, attention_mask) like every
other model and exports to ONNX and int8 the same way. Row of an n-gram:

    unigram a          a                                     (the id itself: [0, vocab_size))
    bigram  a b        vocab_size + h(a, b),  h(a, b) = (a * P2 + b) % buckets
    trigram a b c      vocab_size + (h(a, b) * P3 + c) % buckets

With ids below 2**24 (config's limit), buckets at most 2**24 and primes below 2**20, every
product stays below 2**45: int64 never overflows. A WordPiece tokenizer's pieces ("walk",
"##ing") make the unigrams and bigrams also the sub-word n-grams that fastText gets from
character n-grams.

An n-gram counts where all its tokens are real (attention_mask True): padding, whatever its ids,
never changes the output, and an empty post pools to zeros (its logits are the head's bias).
The pooling is a masked mean written as a batched matrix product, (B, 1, N) @ (B, N, D): plain
ops that ONNX exports as they run (an nn.EmbeddingBag with per_sample_weights exports as a loop).

Initialisation, as fastText's: embeddings uniform in [-1/D, 1/D], head Xavier with a zero bias.

Sizes: `buckets` (NGRAM_BUCKETS, or config.extra["ngram_buckets"]) rows of width
config.input_dim. Every row takes part in each dense AdamW step, so the table's size is the
training cost: see training.presets.NGRAM_DEFAULTS for the sizes measured.

References: Joulin et al. 2017, "Bag of Tricks for Efficient Text Classification" (fastText);
Weinberger et al. 2009, "Feature Hashing for Large Scale Multitask Learning".
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from fbdl_fast.config import ModelConfig
from fbdl_fast.models._common import apply_init, check_inputs

NGRAM_BUCKETS = 1 << 16  # hashed bigram and trigram rows (config.extra["ngram_buckets"] wins)
# Longest n-gram: 1 (unigrams), 2 (+ bigrams) or 3 (+ trigrams). 2: on the Debian task (10,332
# descriptions) trigrams gave 0.752 validation macro-F1 against bigrams' 0.778 (0.733 vs 0.746
# on its test split), and cost a third more rows a post (presets.NGRAM_DEFAULTS).
NGRAM_ORDER = 2
# Odd multipliers near 2**20 for the two hashes (primes, so that no id pattern lines up with
# the bucket count, a power of two).
BIGRAM_PRIME = 1_048_573
TRIGRAM_PRIME = 1_048_571


def ngram_rows(
    input_ids: torch.Tensor, mask: torch.Tensor, vocab_size: int, buckets: int, order: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The embedding rows of a batch's n-grams and their weights (1.0 real, 0.0 not).

    input_ids (B, L) integer ids and mask (B, L) bool -> rows (B, N) int64 and weights (B, N)
    float32, N = L + (L - 1) + (L - 2) for order 3 (fewer for shorter posts' padding only: the
    shapes depend on L alone).
    """
    ids = input_ids.long()
    rows, weights = [ids], [mask]
    if order >= 2:
        rows.append(vocab_size + (ids[:, :-1] * BIGRAM_PRIME + ids[:, 1:]) % buckets)
        weights.append(mask[:, :-1] & mask[:, 1:])
    if order >= 3:
        pairs = (ids[:, :-2] * BIGRAM_PRIME + ids[:, 1:-1]) % buckets
        rows.append(vocab_size + (pairs * TRIGRAM_PRIME + ids[:, 2:]) % buckets)
        weights.append(mask[:, :-2] & mask[:, 1:-1] & mask[:, 2:])
    return torch.cat(rows, dim=1), torch.cat(weights, dim=1).float()


class NgramClassifier(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.buckets = int(config.extra.get("ngram_buckets", NGRAM_BUCKETS))
        self.order = int(config.extra.get("ngram_order", NGRAM_ORDER))
        if not 1 <= self.buckets <= 1 << 24:
            raise ValueError(
                f"ngram_buckets={self.buckets} is invalid; accepted: an integer in [1, 2**24]"
            )
        if self.order not in (1, 2, 3):
            raise ValueError(f"ngram_order={self.order} is invalid; accepted: 1, 2 or 3")
        self.embedding = nn.Embedding(config.vocab_size + self.buckets, config.input_dim)
        self.dropout = nn.Dropout(config.dropout)
        self.output_projection = nn.Linear(config.input_dim, config.num_classes)
        apply_init(self, config.init, self._init_weights)

    def _init_weights(self) -> None:
        bound = 1.0 / self.config.input_dim
        nn.init.uniform_(self.embedding.weight, -bound, bound)
        nn.init.xavier_uniform_(self.output_projection.weight)
        nn.init.zeros_(self.output_projection.bias)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """input_ids (B, L) and attention_mask (B, L), True on real tokens -> logits (B, C).

        Without attention_mask, every id other than config.pad_token_id counts as a real token.
        """
        mask = check_inputs(input_ids, attention_mask, self.config)  # (B, L) bool
        rows, weights = ngram_rows(
            input_ids, mask, self.config.vocab_size, self.buckets, self.order
        )
        vectors = self.embedding(rows)  # (B, N, D)
        counts = weights.sum(dim=1, keepdim=True).clamp(min=1.0)  # (B, 1)
        pooled = torch.bmm((weights / counts)[:, None, :], vectors)[:, 0]  # (B, D)
        return self.output_projection(self.dropout(pooled))  # (B, C)


__all__ = ["NGRAM_BUCKETS", "NGRAM_ORDER", "NgramClassifier", "ngram_rows"]
