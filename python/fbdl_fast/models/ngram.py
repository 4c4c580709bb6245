"""NgramClassifier: a fastText-style linear classifier over hashed n-grams of token ids.

    token ids -> unigrams, and bigrams (trigrams too with config.extra["ngram_order"] = 3) of
    consecutive ids hashed into `buckets` rows -> the mean of their rows of one embedding
    table, plus the mean of the rows of the tokens' character n-grams -> dropout -> linear head

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

Character n-grams (config.extra["ngram_char_grams"] = K > 0; new runs have CHAR_GRAMS): the
character 2- to 5-grams of each vocabulary entry's text, a word-start entry marked with "<"
("walk": "<w", "wa", ..., "walk"; "##ings": "in", "ng", "gs", "ing", "ngs"), at most K of
them, hashed (FNV-1a of their UTF-8) into the same bucket rows as the bigrams. They are a
buffer of the model, char_grams (vocab_size, K) of rows, -1 where an entry has fewer, filled
from the run's tokenizer before training (`index_char_ngrams(tokenizer)`; until then no entry
has any) and saved with the weights: the forward only gathers them by id, so ONNX and int8
export them as they do the rest. The post's vector is the mean of its n-grams' rows plus the
mean of all its tokens' character n-grams' rows, each normalised apart as TF-IDF + logistic
regression's word and character features are before they are joined; averaging them into
each token's row instead (fastText's word vectors) lost 3 points of validation macro-F1 on
Debian. Runs made before them have no "ngram_char_grams": no buffer, and they load as they
were.

Measured (validation macro-F1 of seeded splits, benches/studies/ngram_levers.py; the figures in
training.presets.NGRAM_DEFAULTS and docs/training.md): the character n-grams and label smoothing
0.1 took the test macro-F1 from 0.746 to 0.765 on Debian and from 0.717 to 0.748 on man pages,
where TF-IDF + logistic regression gets 0.795 and 0.753. A larger vocabulary, BERT's
pre-tokenizer, idf weights, an L2 norm, more buckets, n-gram dropout, weight decay and a plain
linear model (no hidden layer) gained nothing beyond the splits' noise, or lost.

An n-gram counts where all its tokens are real (attention_mask True): padding, whatever its ids,
never changes the output, and an empty post pools to zeros (its logits are the head's bias).
The pooling is a masked mean written as a batched matrix product, (B, 1, N) @ (B, N, D): plain
ops that ONNX exports as they run (an nn.EmbeddingBag with per_sample_weights exports as a loop).

Initialisation, as fastText's: embeddings uniform in [-1/D, 1/D], head Xavier with a zero bias.

Sizes: `buckets` (NGRAM_BUCKETS, or config.extra["ngram_buckets"]) rows of width
config.input_dim. Every row takes part in each dense AdamW step, so the table's size is the
training cost: see training.presets.NGRAM_DEFAULTS for the sizes measured.

References: Joulin et al. 2017, "Bag of Tricks for Efficient Text Classification" (fastText);
Bojanowski et al. 2017, "Enriching Word Vectors with Subword Information" (character n-grams);
Weinberger et al. 2009, "Feature Hashing for Large Scale Multitask Learning".
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch
from torch import nn

from fbdl_fast.config import ModelConfig
from fbdl_fast.models._common import apply_init, check_inputs

if TYPE_CHECKING:
    from fbdl_fast.tokenizer import Tokenizer

NGRAM_BUCKETS = 1 << 16  # hashed bigram and trigram rows (config.extra["ngram_buckets"] wins)
# Longest n-gram: 1 (unigrams), 2 (+ bigrams) or 3 (+ trigrams). 2: on the Debian task (10,332
# descriptions) trigrams gave 0.752 validation macro-F1 against bigrams' 0.778 (0.733 vs 0.746
# on its test split), and cost a third more rows a post (presets.NGRAM_DEFAULTS).
NGRAM_ORDER = 2
# Odd multipliers near 2**20 for the two hashes (primes, so that no id pattern lines up with
# the bucket count, a power of two).
BIGRAM_PRIME = 1_048_573
TRIGRAM_PRIME = 1_048_571
# Character n-grams of a vocabulary entry: their lengths (TF-IDF's char_wb 2-5 of the reference
# in benches/studies/baselines.py) and the most kept per entry (config.extra["ngram_char_grams"]
# of new runs: presets.NGRAM_DEFAULTS). 48 keeps every n-gram of an entry of up to 13 characters.
CHAR_SIZES = (2, 3, 4, 5)
CHAR_GRAMS = 48
WORD_START = "<"  # marks the n-grams at the start of a word, as fastText's "<"
FNV_OFFSET, FNV_PRIME = 2_166_136_261, 16_777_619  # FNV-1a, 32 bits


def fnv1a(text: str) -> int:
    """The 32-bit FNV-1a hash of `text`'s UTF-8: stable across processes (Python's hash() is
    salted per process), so a tokenizer gives the same rows wherever it is indexed."""
    value = FNV_OFFSET
    for byte in text.encode("utf-8"):
        value = ((value ^ byte) * FNV_PRIME) & 0xFFFFFFFF
    return value


def char_ngrams(token: str, limit: int) -> list[str]:
    """The character n-grams (CHAR_SIZES) of a vocabulary entry, at most `limit`, shortest
    first: a continuation piece ("##ing") gives those of its text, any other entry those of
    WORD_START + its text; the whole marked entry is left out (its id is the unigram)."""
    word = token[2:] if token.startswith("##") else WORD_START + token
    grams = [word[i : i + n] for n in CHAR_SIZES for i in range(len(word) - n + 1)]
    return [gram for gram in grams if gram != word][:limit]


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
        # 0 (runs made before character n-grams, no key): none, and no buffer to load.
        self.char_limit = int(config.extra.get("ngram_char_grams", 0))
        if not 1 <= self.buckets <= 1 << 24:
            raise ValueError(
                f"ngram_buckets={self.buckets} is invalid; accepted: an integer in [1, 2**24]"
            )
        if self.order not in (1, 2, 3):
            raise ValueError(f"ngram_order={self.order} is invalid; accepted: 1, 2 or 3")
        if not 0 <= self.char_limit <= 1024:
            raise ValueError(
                f"ngram_char_grams={self.char_limit} is invalid; accepted: an integer in [0, 1024]"
            )
        if self.char_limit:
            empty = torch.full((config.vocab_size, self.char_limit), -1, dtype=torch.long)
            self.register_buffer("char_grams", empty)
        self._char_cache: Optional[tuple[tuple[int, ...], torch.Tensor, torch.Tensor]] = None
        self.embedding = nn.Embedding(config.vocab_size + self.buckets, config.input_dim)
        self.dropout = nn.Dropout(config.dropout)
        self.output_projection = nn.Linear(config.input_dim, config.num_classes)
        apply_init(self, config.init, self._init_weights)

    def _init_weights(self) -> None:
        bound = 1.0 / self.config.input_dim
        nn.init.uniform_(self.embedding.weight, -bound, bound)
        nn.init.xavier_uniform_(self.output_projection.weight)
        nn.init.zeros_(self.output_projection.bias)

    @torch.no_grad()
    def index_char_ngrams(self, tokenizer: Tokenizer) -> None:
        """Fill char_grams with the rows of each vocabulary entry's character n-grams
        (char_ngrams; none for special tokens). A model without character n-grams is left as
        it is. ValueError when the tokenizer's vocabulary is not the model's size."""
        if not self.char_limit:
            return
        vocab_size = self.config.vocab_size
        if tokenizer.vocab_size != vocab_size:
            raise ValueError(
                f"the tokenizer has {tokenizer.vocab_size} entries, the model's vocabulary "
                f"{vocab_size}: index the run's own tokenizer"
            )
        specials = set(tokenizer.special_tokens)
        table = torch.full((vocab_size, self.char_limit), -1, dtype=torch.long)
        for token_id in range(vocab_size):
            token = tokenizer.id_to_token(token_id)
            if token is None or token in specials:
                continue
            grams = char_ngrams(token, self.char_limit)
            rows = [vocab_size + fnv1a(gram) % self.buckets for gram in grams]
            table[token_id, : len(rows)] = torch.tensor(rows, dtype=torch.long)
        self.char_grams.copy_(table)

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
        pooled = _masked_mean(self.embedding(rows), weights)  # (B, D)
        if self.char_limit:
            pooled = pooled + self._char_mean(input_ids.long(), mask)
        return self.output_projection(self.dropout(pooled))  # (B, C)

    def _char_mean(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, L) ids and mask -> (B, D): the mean of the rows of the real tokens' character
        n-grams. Training (and export, and anything taking gradients) gathers every token's K
        rows; predicting uses each entry's sum of rows, kept until the weights change: the
        same mean, with one row a token instead of K, most of them the -1 slots of short
        entries (Debian's vocabulary: 14 of 48 used on average), which made predict half as
        fast as the model without character n-grams."""
        if self.training or torch.is_grad_enabled() or _tracing():
            grams = self.char_grams[ids].flatten(1)  # (B, L * K) rows, -1: none
            real = (grams >= 0) & mask.repeat_interleave(self.char_limit, dim=1)
            # The padding's ids and the -1 slots read row 0 (clamp) at weight 0: no effect.
            return _masked_mean(self.embedding(grams.clamp(min=0)), real.float())
        sums, counts = self._char_sums()
        real = mask.float()
        total = (counts[ids] * real).sum(dim=1, keepdim=True).clamp(min=1.0)  # (B, 1)
        return torch.bmm((real / total)[:, None, :], sums[ids])[:, 0]

    def _char_sums(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(vocab_size, D) sums of each entry's character n-gram rows and (vocab_size,) their
        counts, computed again whenever the table or char_grams is another tensor or was
        written in place since (load_state_dict, an optimizer step, .to(), a deep copy)."""
        weight, grams = self.embedding.weight, self.char_grams
        key = (weight.data_ptr(), weight._version, grams.data_ptr(), grams._version)
        if self._char_cache is None or self._char_cache[0] != key:
            owner, slot = (grams >= 0).nonzero(as_tuple=True)
            sums = torch.zeros_like(weight[: self.config.vocab_size])
            sums.index_add_(0, owner, weight[grams[owner, slot]])
            counts = (grams >= 0).sum(dim=1).to(weight.dtype)
            self._char_cache = (key, sums, counts)
        return self._char_cache[1], self._char_cache[2]


def _tracing() -> bool:
    """True while torch.export, torch.compile or TorchScript traces the model: the graph they
    record must compute everything from the weights, with no cache of Python's."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def _masked_mean(vectors: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(B, N, D) rows and (B, N) weights -> (B, D): their weighted mean, zeros for a row of
    zero weights."""
    counts = weights.sum(dim=1, keepdim=True).clamp(min=1.0)  # (B, 1)
    return torch.bmm((weights / counts)[:, None, :], vectors)[:, 0]


__all__ = [
    "CHAR_GRAMS",
    "CHAR_SIZES",
    "NGRAM_BUCKETS",
    "NGRAM_ORDER",
    "NgramClassifier",
    "char_ngrams",
    "fnv1a",
    "ngram_rows",
]
