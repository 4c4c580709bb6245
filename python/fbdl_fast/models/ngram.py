"""NgramClassifier: a fastText-style linear classifier over hashed n-grams of token ids.

    token ids -> unigrams, and bigrams (trigrams too with config.extra["ngram_order"] = 3) of
    consecutive ids hashed into `buckets` rows -> the mean of their rows of one embedding
    table, plus the mean of the rows of the tokens' character n-grams -> dropout -> linear head

The n-grams are formed inside the model from the run tokenizer's ids, with integer arithmetic
only (multiply, add, modulo), so that the model takes (input_ids, attention_mask) like every
other model and exports to ONNX and int8 the same way. Row of an n-gram, with the pair hash of
new runs (config.extra["ngram_hash"] = 2, presets.NGRAM_DEFAULTS), M = 2**31 - 1 a prime and
K = PAIR_MULTIPLIER:

    unigram a          a                                     (the id itself: [0, vocab_size))
    bigram  a b        vocab_size + g(a, b) % buckets,  g(a, b) = (a * K + b) % M
    trigram a b c      vocab_size + g(g(a, b), c) % buckets

Ids below 2**24 (config's limit) and K, g below 2**31 keep every product below 2**62: int64
never overflows. Runs made before it (no "ngram_hash", or 1) hash a pair as (a * P2 + b) %
buckets, P2 = BIGRAM_PRIME, and a trigram as (that * P3 + c) % buckets, and keep doing so: their
weights were trained on those rows. That hash was a near-linear one: P2 is 2**20 - 3, so modulo
any power of two up to 2**20 it is -3, and (a * P2 + b) % 2**16 = (b - 3a) % 2**16: 20,000
distinct bigrams of a 3,000-entry vocabulary fell into 8,744 of the 65,536 rows, where random
rows fill 17,236, whole families of pairs ((a, b), (a + 1, b + 3), ...) sharing one. The pair
hash fills 17,288, as a random hash would, and gave the model more test macro-F1 on both real
tasks (docs/training.md). A WordPiece tokenizer's pieces ("walk",
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

Whole-word character n-grams (config.extra["ngram_word_chars"] = True; off by default): besides
each piece's own n-grams, those that span the boundary between two pieces of a word ("lki" of
"wal ##king") and those that end the word ("ing>"), as TF-IDF's char_wb sees whole words
(word_char_ngrams says which). Every character n-gram is then hashed with a polynomial hash,
which composes across a boundary, so the forward builds the spanning ones from per-entry
buffers of the pieces' first and last 1-4 characters' hashes (char_heads, char_tails), with
integer arithmetic that exports to ONNX like the rest. With scikit-learn's logistic regression
they were the missing features (Debian's validation macro-F1 0.776 -> 0.781, man pages' 0.710 ->
0.731); in this model they moved neither task beyond its splits' noise (+0.2 points on both,
over five splits: docs/training.md), so the defaults leave them off.

Measured (validation macro-F1 of seeded splits, benches/studies/ngram_levers.py; the figures in
training.presets.NGRAM_DEFAULTS and docs/training.md): the character n-grams and label smoothing
0.1 took the test macro-F1 from 0.746 to 0.765 on Debian and from 0.717 to 0.748 on man pages,
where TF-IDF + logistic regression gets 0.795 and 0.753. A larger vocabulary, BERT's
pre-tokenizer, idf weights, an L2 norm, more buckets, n-gram dropout, weight decay and a plain
linear model (no hidden layer) gained nothing beyond the splits' noise, or lost.

The convex model (config.extra["ngram_fit"] = "convex", the default of new runs:
training.presets.NGRAM_CONVEX_EXTRA) pools the same rows as TF-IDF weighs its features: each
row by its inverse document frequency among the training posts (the row_idf buffer, one row of
idfs for the n-grams and one for the character n-grams, 0 for a row no training post had), each
group's weighted sum divided by the L2 norm of its weights, the table as wide as the classes and
an identity head carrying the bias: a linear model, which training.ngram_fit fits to convergence
instead of over epochs. It reached TF-IDF + logistic regression's test macro-F1 on both real
tasks where the fit over epochs stayed 1.4-1.6 points under (docs/training.md). Runs made before
it (no "ngram_fit") are the fit over epochs, and load as they were.

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

from collections.abc import Sequence
from typing import TYPE_CHECKING, Optional

import torch
from torch import nn

from fbdl_fast.config import ModelConfig
from fbdl_fast.models._common import apply_init, check_inputs, tracing

if TYPE_CHECKING:
    from fbdl_fast.tokenizer import Tokenizer

NGRAM_BUCKETS = 1 << 16  # hashed bigram and trigram rows (config.extra["ngram_buckets"] wins)
# Longest n-gram: 1 (unigrams), 2 (+ bigrams) or 3 (+ trigrams). 2: on the Debian task (10,332
# descriptions) trigrams gave 0.752 validation macro-F1 against bigrams' 0.778 (0.733 vs 0.746
# on its test split), and cost a third more rows a post (presets.NGRAM_DEFAULTS).
NGRAM_ORDER = 2
# The hash of a pair of ids (bigrams; a trigram is a bigram's hash paired with the next id):
# version 2, g(a, b) = (a * PAIR_MULTIPLIER + b) % HASH_MODULUS, then % buckets; new runs have
# it (config.extra["ngram_hash"], presets.NGRAM_DEFAULTS). Version 1, that of runs made before,
# multiplied by these primes modulo the bucket count itself, which, 2**20 - 3 and 2**20 - 5
# being -3 and -5 modulo every power of two up to 2**20, made the hash nearly linear in the ids.
NGRAM_HASHES = (1, 2)
# How the model is weighted and fitted (config.extra["ngram_fit"]): "gradient", the fastText-style
# model above, trained by the trainer's optimizer over epochs (runs made before the key: none
# means "gradient"); "convex", a linear model over TF-IDF-weighted rows fitted to convergence
# (training.ngram_fit).
NGRAM_FITS = ("gradient", "convex")
LEGACY_NGRAM_HASH = 1  # a config without "ngram_hash": a run made before version 2
PAIR_MULTIPLIER = 1_234_567_891  # below HASH_MODULUS, far from any power of two
BIGRAM_PRIME = 1_048_573
TRIGRAM_PRIME = 1_048_571
# Character n-grams of a vocabulary entry: their lengths (TF-IDF's char_wb 2-5 of the reference
# in benches/studies/baselines.py) and the most kept per entry (config.extra["ngram_char_grams"]
# of new runs: presets.NGRAM_DEFAULTS). 48 keeps every n-gram of an entry of up to 13 characters.
CHAR_SIZES = (2, 3, 4, 5)
CHAR_GRAMS = 48
WORD_START = "<"  # marks the n-grams at the start of a word, as fastText's "<"
WORD_END = ">"  # and at its end (whole-word character n-grams only)
FNV_OFFSET, FNV_PRIME = 2_166_136_261, 16_777_619  # FNV-1a, 32 bits
# Whole-word character n-grams hash with a polynomial hash, h(s) = sum of ord(c) * BASE**k mod
# MODULUS, because it composes across a piece boundary: h(x + y) = h(x) * BASE**len(y) + h(y).
# Values stay below 2**31, so h(x) * BASE**len(y) mod MODULUS (< 2**31) + h(y) < 2**63: int64.
HASH_MODULUS = 2_147_483_647  # 2**31 - 1, a prime
HASH_BASE = 1_000_003
EDGE = max(CHAR_SIZES) - 1  # a piece's first and last characters kept: 4
# (characters from the end of one piece, from the start of the next) of an n-gram that spans
# the boundary between two pieces of a word: every split of 2 to 5 characters.
SPANS = tuple((a, b) for a in range(1, EDGE + 1) for b in range(1, EDGE + 1) if a + b <= EDGE + 1)
# Per span, the slot of the tail and head buffers it reads and the factor that shifts the tail's
# hash past the head's b characters: every span's hash in one vectorised step (_word_parts).
SPAN_TAIL_SLOTS = [a - 1 for a, _ in SPANS]
SPAN_HEAD_SLOTS = [b - 1 for _, b in SPANS]
SPAN_SHIFTS = [HASH_BASE**b % HASH_MODULUS for _, b in SPANS]


def fnv1a(text: str) -> int:
    """The 32-bit FNV-1a hash of `text`'s UTF-8: stable across processes (Python's hash() is
    salted per process), so a tokenizer gives the same rows wherever it is indexed."""
    value = FNV_OFFSET
    for byte in text.encode("utf-8"):
        value = ((value ^ byte) * FNV_PRIME) & 0xFFFFFFFF
    return value


def poly_hash(text: str) -> int:
    """The polynomial hash of `text`'s code points (HASH_BASE, HASH_MODULUS): what the
    whole-word character n-grams hash with, in Python here and from pieces in the forward."""
    value = 0
    for char in text:
        value = (value * HASH_BASE + ord(char)) % HASH_MODULUS
    return value


def word_char_ngrams(pieces: Sequence[str]) -> list[str]:
    """The character n-grams the model pools for one word given as its WordPiece pieces
    ("wal", "##king"): each piece's own (char_ngrams, no limit), those ending at the word's end
    (the last piece's 1-4 last characters + WORD_END) and those spanning one boundary between
    two pieces (SPANS: "l" + "k", "al" + "ki", ...). An n-gram over three pieces (a short piece
    between two others) is left out: the forward builds n-grams from two pieces at most."""
    marked = [WORD_START + pieces[0], *(piece[2:] for piece in pieces[1:])]
    grams = [gram for piece in pieces for gram in char_ngrams(piece, 1 << 30)]
    last = marked[-1]
    grams += [last[-a:] + WORD_END for a in range(1, EDGE + 1) if a <= len(last)]
    for x, y in zip(marked, marked[1:]):
        grams += [x[-a:] + y[:b] for a, b in SPANS if a <= len(x) and b <= len(y)]
    return grams


def char_ngrams(token: str, limit: int) -> list[str]:
    """The character n-grams (CHAR_SIZES) of a vocabulary entry, at most `limit`, shortest
    first: a continuation piece ("##ing") gives those of its text, any other entry those of
    WORD_START + its text; the whole marked entry is left out (its id is the unigram)."""
    word = token[2:] if token.startswith("##") else WORD_START + token
    grams = [word[i : i + n] for n in CHAR_SIZES for i in range(len(word) - n + 1)]
    return [gram for gram in grams if gram != word][:limit]


def ngram_rows(
    input_ids: torch.Tensor,
    mask: torch.Tensor,
    vocab_size: int,
    buckets: int,
    order: int,
    hashing: int = 2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The embedding rows of a batch's n-grams and their weights (1.0 real, 0.0 not).

    input_ids (B, L) integer ids and mask (B, L) bool -> rows (B, N) int64 and weights (B, N)
    float32, N = L + (L - 1) + (L - 2) for order 3 (fewer for shorter posts' padding only: the
    shapes depend on L alone). `hashing`: the pair hash, 2 (new runs) or 1 (runs made before
    it: NGRAM_HASHES).
    """
    ids = input_ids.long()
    rows, weights = [ids], [mask]
    if order >= 2:
        pairs = _pair_hash(ids[:, :-1], ids[:, 1:], buckets, hashing)
        rows.append(vocab_size + _bucket(pairs, buckets, hashing))
        weights.append(mask[:, :-1] & mask[:, 1:])
    if order >= 3:
        pairs = _pair_hash(ids[:, :-2], ids[:, 1:-1], buckets, hashing)
        triples = _pair_hash(pairs, ids[:, 2:], buckets, hashing, TRIGRAM_PRIME)
        rows.append(vocab_size + _bucket(triples, buckets, hashing))
        weights.append(mask[:, :-2] & mask[:, 1:-1] & mask[:, 2:])
    return torch.cat(rows, dim=1), torch.cat(weights, dim=1).float()


def _pair_hash(
    first: torch.Tensor, second: torch.Tensor, buckets: int, hashing: int, prime: int = BIGRAM_PRIME
) -> torch.Tensor:
    """Version 2: g(first, second) in [0, HASH_MODULUS), before the bucket; version 1: the
    bucket itself, (first * prime + second) % buckets."""
    if hashing == 1:
        return (first * prime + second) % buckets
    return (first * PAIR_MULTIPLIER + second) % HASH_MODULUS


def _bucket(hashed: torch.Tensor, buckets: int, hashing: int) -> torch.Tensor:
    return hashed if hashing == 1 else hashed % buckets


class NgramClassifier(nn.Module):
    # Buffers, registered only where the config asks for them: char_grams with character
    # n-grams, the others with whole-word character n-grams (see __init__).
    char_grams: torch.Tensor
    char_heads: torch.Tensor
    char_tails: torch.Tensor
    char_ends: torch.Tensor
    char_continues: torch.Tensor
    row_idf: torch.Tensor

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.buckets = int(config.extra.get("ngram_buckets", NGRAM_BUCKETS))
        self.order = int(config.extra.get("ngram_order", NGRAM_ORDER))
        self.hashing = config.extra.get("ngram_hash", LEGACY_NGRAM_HASH)
        # 0 (runs made before character n-grams, no key): none, and no buffer to load.
        self.char_limit = int(config.extra.get("ngram_char_grams", 0))
        if not 1 <= self.buckets <= 1 << 24:
            raise ValueError(
                f"ngram_buckets={self.buckets} is invalid; accepted: an integer in [1, 2**24]"
            )
        if self.order not in (1, 2, 3):
            raise ValueError(f"ngram_order={self.order} is invalid; accepted: 1, 2 or 3")
        if self.hashing not in NGRAM_HASHES or isinstance(self.hashing, bool):
            raise ValueError(f"ngram_hash={self.hashing!r} is invalid; accepted: 1 or 2")
        if not 0 <= self.char_limit <= 1024:
            raise ValueError(
                f"ngram_char_grams={self.char_limit} is invalid; accepted: an integer in [0, 1024]"
            )
        # Whole-word character n-grams (config.extra["ngram_word_chars"]; off by default): the
        # n-grams across the pieces of a word and at its end, every character n-gram hashed
        # with poly_hash; without it the pieces' n-grams hash with FNV-1a, as in every run before.
        self.word_chars = bool(config.extra.get("ngram_word_chars", False))
        if self.word_chars and not self.char_limit:
            raise ValueError(
                "ngram_word_chars needs character n-grams; accepted: with ngram_char_grams > 0"
            )
        if self.char_limit:
            empty = torch.full((config.vocab_size, self.char_limit), -1, dtype=torch.long)
            self.register_buffer("char_grams", empty)
        if self.word_chars:
            # Per entry: the poly_hash of its first (continuation pieces only) and last 1-4
            # characters, the rows of its last 1-4 characters + WORD_END, -1 where it has
            # fewer; and whether it continues the previous piece's word ("##...").
            for name in ("char_heads", "char_tails", "char_ends"):
                self.register_buffer(name, torch.full((config.vocab_size, EDGE), -1).long())
            self.register_buffer("char_continues", torch.zeros(config.vocab_size, dtype=torch.bool))
        self.fit_kind = config.extra.get("ngram_fit", "gradient")
        if self.fit_kind not in NGRAM_FITS:
            raise ValueError(
                f"ngram_fit={self.fit_kind!r} is invalid; accepted: 'gradient' or 'convex'"
            )
        self.convex = self.fit_kind == "convex"
        rows = config.vocab_size + self.buckets
        if self.convex:
            # Each row's inverse document frequency over the training posts, among the n-grams
            # (0) and among the character n-grams (1), which share the hashed rows; 0 for a row
            # no training post has. Zeros until fitted: training.ngram_fit writes them.
            self.register_buffer("row_idf", torch.zeros(2, rows))
        self._char_cache: dict[str, tuple[tuple[int, ...], torch.Tensor, torch.Tensor]] = {}
        # A convex model's rows are its logits (a linear model); the head is the identity and
        # carries the bias, so that export and int8 treat it as every model's head.
        width = config.num_classes if self.convex else config.input_dim
        self.embedding = nn.Embedding(rows, width)
        self.dropout = nn.Dropout(config.dropout)
        self.output_projection = nn.Linear(width, config.num_classes)
        apply_init(self, config.init, self._init_weights)

    def _init_weights(self) -> None:
        if self.convex:  # the convex fit's starting point: every post at the bias, zero
            nn.init.zeros_(self.embedding.weight)
            nn.init.eye_(self.output_projection.weight)
            nn.init.zeros_(self.output_projection.bias)
            return
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
        hashed = poly_hash if self.word_chars else fnv1a
        table = torch.full((vocab_size, self.char_limit), -1, dtype=torch.long)
        edges = torch.full((3, vocab_size, EDGE), -1, dtype=torch.long)  # heads, tails, ends
        continues = torch.zeros(vocab_size, dtype=torch.bool)
        for token_id in range(vocab_size):
            token = tokenizer.id_to_token(token_id)
            if token is None or token in specials:
                continue
            grams = char_ngrams(token, self.char_limit)
            rows = [vocab_size + hashed(gram) % self.buckets for gram in grams]
            table[token_id, : len(rows)] = torch.tensor(rows, dtype=torch.long)
            if not self.word_chars:
                continue
            continues[token_id] = token.startswith("##")
            marked = token[2:] if continues[token_id] else WORD_START + token
            for k in range(1, min(EDGE, len(marked)) + 1):
                if continues[token_id]:
                    edges[0, token_id, k - 1] = poly_hash(marked[:k])
                edges[1, token_id, k - 1] = poly_hash(marked[-k:])
                edges[2, token_id, k - 1] = (
                    vocab_size + poly_hash(marked[-k:] + WORD_END) % self.buckets
                )
        self.char_grams.copy_(table)
        if self.word_chars:
            for name, values in zip(("char_heads", "char_tails", "char_ends"), edges):
                getattr(self, name).copy_(values)
            self.char_continues.copy_(continues)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """input_ids (B, L) and attention_mask (B, L), True on real tokens -> logits (B, C).

        Without attention_mask, every id other than config.pad_token_id counts as a real token.
        """
        mask = check_inputs(input_ids, attention_mask, self.config)  # (B, L) bool
        rows, weights = ngram_rows(
            input_ids, mask, self.config.vocab_size, self.buckets, self.order, self.hashing
        )
        pooled = self._pool(self.embedding(rows), weights, rows, group=0)  # (B, D)
        if self.char_limit:
            pooled = pooled + self._char_pool(input_ids.long(), mask)
        return self.output_projection(self.dropout(pooled))  # (B, C)

    def _pool(
        self, vectors: torch.Tensor, weights: torch.Tensor, rows: torch.Tensor, group: int
    ) -> torch.Tensor:
        """(B, N, D) rows' vectors, (B, N) weights (1.0 real, 0.0 not) and the rows (B, N) ->
        (B, D): their mean, or (convex) their sum weighted by the rows' idf of `group` over
        the weights' L2 norm, as TF-IDF weighs each block of its features."""
        if not self.convex:
            return _masked_mean(vectors, weights)
        weights = weights * self.row_idf[group][rows]
        return _scaled_sum(vectors, weights, _norm(weights.pow(2).sum(dim=1, keepdim=True)))

    def _char_pool(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, L) ids and mask -> (B, D): the mean of the rows of the real tokens' character
        n-grams (with word_chars, also those at each word's end and across its pieces'
        boundaries), or (convex) their idf-weighted sum over its L2 norm. Training (and
        export, and anything taking gradients) gathers every token's K rows; predicting uses
        each entry's sum of rows, kept until the weights change: the same result, with one row
        a token instead of K, most of them the -1 slots of short entries (Debian's vocabulary:
        14 of 48 used on average), which made predict half as fast as the model without
        character n-grams. The n-grams across a boundary depend on two pieces, so they are
        gathered either way: predicting, only those inside a word."""
        if self.training or torch.is_grad_enabled() or tracing():
            grams, real = self.char_rows(ids, mask)
            # The padding's ids and the -1 slots read row 0 (clamp) at weight 0: no effect.
            rows = grams.clamp(min=0)
            return self._pool(self.embedding(rows), real.float(), rows, group=1)
        parts: list[tuple[str, torch.Tensor]] = [("char_grams", mask)]
        if self.word_chars:
            # Only the boundaries inside a word have span n-grams: those few gathered alone.
            joined, word_end = self._word_joins(ids, mask)
            parts.append(("char_ends", word_end))
            at, gap = joined.nonzero(as_tuple=True)  # J boundaries inside a word
            span_rows, long_enough = self._span_rows(ids[at, gap], ids[at, gap + 1])  # (J, S)
            post, rows = at[:, None].expand_as(span_rows)[long_enough], span_rows[long_enough]
        # (entry sums (B, L, D), their weights (B, L)), the count (of a convex model: the
        # squared weights) first: each weight is divided before the product, the order of the
        # arithmetic in every run's predictions since the cached sums came.
        pooled = []
        count = self.embedding.weight.new_zeros(ids.shape[0], 1)
        for name, where in parts:
            sums, counts = self._entry_sums(name)
            real = where.to(count.dtype)
            pooled.append((sums[ids], real))
            count += (counts[ids] * real).sum(dim=1, keepdim=True)
        if self.word_chars:  # the spans' rows, each added to its post
            weights = (
                self.row_idf[1][rows] if self.convex else torch.ones_like(rows, dtype=count.dtype)
            )
            count.index_add_(0, post, (weights.pow(2) if self.convex else weights)[:, None])
        scale = _norm(count) if self.convex else count.clamp(min=1.0)
        pooled_sum = _scaled_sum(pooled[0][0], pooled[0][1], scale)
        for vectors, real in pooled[1:]:
            pooled_sum = pooled_sum + _scaled_sum(vectors, real, scale)
        if self.word_chars:
            spread = self.embedding.weight[rows] * (weights / scale[post, 0])[:, None]
            pooled_sum = pooled_sum.index_add(0, post, spread)
        return pooled_sum

    def char_rows(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) ids and mask -> the rows (B, N) of every character n-gram the model pools and
        whether each counts (B, N) bool: False for padding and for an entry's unused -1 slots."""
        parts, spans = self._char_parts(ids, mask)
        rows = [getattr(self, name)[ids].flatten(1) for name, _ in parts]  # (B, L * K), -1: none
        real = [
            (grams >= 0) & where.repeat_interleave(getattr(self, name).shape[1], dim=1)
            for grams, (name, where) in zip(rows, parts)
        ]
        if spans is not None:
            rows.append(spans[0])
            real.append(spans[1])
        return torch.cat(rows, dim=1), torch.cat(real, dim=1)

    def _char_parts(
        self, ids: torch.Tensor, mask: torch.Tensor
    ) -> tuple[list[tuple[str, torch.Tensor]], Optional[tuple[torch.Tensor, torch.Tensor]]]:
        """The per-entry tables pooled, each with where it counts ((buffer name, (B, L) bool):
        every piece's own n-grams, and with word_chars the end n-grams at a word's last piece),
        and with word_chars the rows and weights of the n-grams across boundaries."""
        if not self.word_chars:
            return [("char_grams", mask)], None
        word_end, spans = self._word_parts(ids, mask)
        return [("char_grams", mask), ("char_ends", word_end)], spans

    def _word_parts(
        self, ids: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """(B, L) ids and mask -> where a word ends (B, L) bool, and the rows (B, (L-1) * S)
        and weights (bool) of the n-grams spanning each boundary inside a word (S = SPANS)."""
        joined, word_end = self._word_joins(ids, mask)
        rows, real = self._span_rows(ids[:, :-1], ids[:, 1:])  # (B, L-1, S)
        real = real & joined[..., None]
        return word_end, (rows.flatten(1), real.flatten(1))

    def _word_joins(
        self, ids: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) ids and mask -> (B, L-1) whether each boundary is inside a word (the next
        piece continues it), and (B, L) whether each token ends a word."""
        joined = self.char_continues[ids[:, 1:]] & mask[:, 1:] & mask[:, :-1]
        word_end = mask & ~torch.cat([joined, torch.zeros_like(joined[:, :1])], dim=1)
        return joined, word_end

    def _span_rows(
        self, left: torch.Tensor, right: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Ids of the pieces on each side of boundaries (any shape (...)) -> the rows (..., S)
        of every span's n-gram, in SPANS' order, and whether both pieces are long enough."""
        tail = self.char_tails[left][..., SPAN_TAIL_SLOTS]
        head = self.char_heads[right][..., SPAN_HEAD_SLOTS]
        hashed = (tail * left.new_tensor(SPAN_SHIFTS) + head) % HASH_MODULUS
        return self.config.vocab_size + hashed % self.buckets, (tail >= 0) & (head >= 0)

    def _entry_sums(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(vocab_size, D) sums of the rows each entry of the buffer `name` (char_grams or
        char_ends) names and (vocab_size,) their counts (of a convex model: the sums weighted
        by the rows' idf, and the sums of the squared idfs), computed again whenever the
        embedding table, the buffer or the idf is another tensor or was written in place since
        (load_state_dict, an optimizer step, a fit, .to(), a deep copy)."""
        weight, table = self.embedding.weight, getattr(self, name)
        key: tuple[int, ...] = (weight.data_ptr(), weight._version, table.data_ptr())
        key += (table._version,)
        if self.convex:
            key += (self.row_idf.data_ptr(), self.row_idf._version)
        if name not in self._char_cache or self._char_cache[name][0] != key:
            owner, slot = (table >= 0).nonzero(as_tuple=True)
            rows = table[owner, slot]
            scale = (
                self.row_idf[1][rows] if self.convex else torch.ones_like(rows, dtype=weight.dtype)
            )
            sums = torch.zeros_like(weight[: self.config.vocab_size])
            sums.index_add_(0, owner, weight[rows] * scale[:, None])
            counts = torch.zeros(self.config.vocab_size, dtype=weight.dtype, device=weight.device)
            counts.index_add_(0, owner, scale.pow(2) if self.convex else scale)
            self._char_cache[name] = (key, sums, counts)
        return self._char_cache[name][1], self._char_cache[name][2]


def _masked_mean(vectors: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(B, N, D) rows and (B, N) weights -> (B, D): their weighted mean, zeros for a row of
    zero weights."""
    return _scaled_sum(vectors, weights, weights.sum(dim=1, keepdim=True).clamp(min=1.0))


def _scaled_sum(vectors: torch.Tensor, weights: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """(B, N, D) rows, (B, N) weights and (B, 1) scale -> (B, D): sum of weight / scale * row,
    written as a batched matrix product (plain ops that export to ONNX as they run)."""
    return torch.bmm((weights / scale)[:, None, :], vectors)[:, 0]


def _norm(squares: torch.Tensor) -> torch.Tensor:
    """(B, 1) sums of squared weights -> their L2 norm, 1e-12 at least (TfidfVectorizer's
    floor): a post with no weighted row pools to zeros."""
    return squares.sqrt().clamp(min=1e-12)


__all__ = [
    "CHAR_GRAMS",
    "CHAR_SIZES",
    "NGRAM_BUCKETS",
    "NGRAM_FITS",
    "NGRAM_HASHES",
    "NGRAM_ORDER",
    "NgramClassifier",
    "char_ngrams",
    "fnv1a",
    "ngram_rows",
]
