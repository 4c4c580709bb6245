"""Tokenizer: the typed Python face of the Rust tokenizer (`fbdl_fast._tokenizer`).

Posts go in as str, ids come out as NumPy arrays filled by Rust. The pipeline is BERT's:

    special tokens matched in the raw text -> normalise (clean-up, CJK spacing, accent stripping,
    lowercase) -> pre-tokenise ("bert": whitespace + punctuation; "social": URLs, e-mails,
    @mentions, #hashtags, numbers, emoticons and emoji sequences kept whole; either one can
    spell emoji out by name, `spell_emoji`) -> WordPiece or word level -> [CLS] ... [SEP]

With a BERT `vocab.txt` (``Tokenizer.from_bert_vocab``) or a Hugging Face BERT
``tokenizer.json`` (``Tokenizer.from_file``) the ids are those of Hugging Face `tokenizers`.

    >>> tok = Tokenizer.train(posts, vocab_size=8000)      # [PAD] is id 0
    >>> batch = tok.encode_batch(posts[:32], max_length=64)
    >>> batch.input_ids.shape, batch.input_ids.dtype        # ((32, L), int64)
    >>> tok.save("tokenizer.json"); tok = Tokenizer.from_file("tokenizer.json")

`encode_batch` splits the batch over threads with the GIL released; `set_num_threads(n)` sets
how many (the ids are the same for any count).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Optional, Union

import numpy as np

from fbdl_fast import _tokenizer
from fbdl_fast.config import as_integer
from fbdl_fast.files import write_atomic

__all__ = [
    "DEFAULT_SPECIAL_TOKENS",
    "BatchEncoding",
    "Tokenizer",
    "num_threads",
    "set_num_threads",
]

#: Special tokens of a trained vocabulary, in id order: [PAD]=0, [UNK]=1, [CLS], [SEP], [MASK].
DEFAULT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

Padding = Union[Literal["longest", "max_length"], bool]
PathLike = Union[str, "os.PathLike[str]"]


# Threads a pool may be asked for: far past any machine's cores, under what an OS will start.
MAX_TOKENIZER_THREADS = 4096


def set_num_threads(n: int) -> None:
    """Set the number of threads batch encoding and training use (1 = no parallelism); at most
    MAX_TOKENIZER_THREADS."""
    number = as_integer(n)
    if number is None or not 1 <= number <= MAX_TOKENIZER_THREADS:
        raise ValueError(
            f"num_threads={n!r} is not accepted; expected an integer in [1, "
            f"{MAX_TOKENIZER_THREADS}]"
        )
    _tokenizer.set_num_threads(number)


def num_threads() -> int:
    """The number of threads batch encoding and training use (default: the CPU count)."""
    return _tokenizer.num_threads()


@dataclass(frozen=True)
class BatchEncoding:
    """A padded batch: row i holds post i.

    input_ids:      int64 (B, L), padded with the tokenizer's pad id.
    attention_mask: int64 (B, L), 1 on real tokens (specials included), 0 on padding.
    lengths:        int64 (B,), real tokens per row.
    offsets:        int64 (B, L, 2) character spans [start, end) into each post, (0, 0) for
                    [CLS]/[SEP]/padding; None unless asked for with return_offsets=True.
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    lengths: np.ndarray
    offsets: Optional[np.ndarray] = None

    def __getitem__(self, key: str) -> np.ndarray:
        value = getattr(self, key, None) if key in _FIELDS else None
        if value is None:
            raise KeyError(f"BatchEncoding has no {key!r}; it has {sorted(self.keys())}")
        return value

    def keys(self) -> list[str]:
        return [k for k in _FIELDS if getattr(self, k) is not None]

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


_FIELDS = ("input_ids", "attention_mask", "lengths", "offsets")


def _as_array(buffer: bytearray, shape: tuple[int, ...]) -> np.ndarray:
    # Zero-copy, writable view of the Rust-filled buffer.
    return np.frombuffer(buffer, dtype=np.int64).reshape(shape)


def _positive_int(name: str, value: object) -> int:
    """`value` as an int when it is an integer >= 1; else ValueError naming `name`."""
    number = as_integer(value)
    if number is None or number < 1:
        raise ValueError(f"{name}={value!r} must be a positive int or None")
    return number


def _check_texts(texts: object, what: str) -> None:
    if isinstance(texts, (str, bytes)):
        raise TypeError(f"{what} must be a list of str, not a single {type(texts).__name__}")


class Tokenizer:
    """A trained or loaded tokenizer. Build one with `train`, `from_bert_vocab` or `from_file`."""

    def __init__(self, core: _tokenizer.Tokenizer) -> None:
        if not isinstance(core, _tokenizer.Tokenizer):
            raise TypeError(
                "Tokenizer(...) wraps a compiled tokenizer; build one with Tokenizer.train, "
                "Tokenizer.from_bert_vocab or Tokenizer.from_file"
            )
        self._core = core

    # -- building ---------------------------------------------------------------------------

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int = 30_000,
        min_frequency: int = 2,
        special_tokens: Sequence[str] = DEFAULT_SPECIAL_TOKENS,
        *,
        model: Literal["wordpiece", "wordlevel"] = "wordpiece",
        lowercase: bool = True,
        strip_accents: Optional[bool] = None,
        clean_text: bool = True,
        handle_chinese_chars: bool = True,
        unicode_normalization: Optional[Literal["NFC", "NFKC"]] = None,
        pre_tokenizer: Literal["bert", "social"] = "bert",
        replace_urls: bool = False,
        replace_mentions: bool = False,
        replace_numbers: bool = False,
        shorten_elongations: bool = False,
        spell_emoji: bool = False,
    ) -> Tokenizer:
        """Learn a vocabulary from `texts` (any iterable of str), in parallel in Rust.

        The special tokens come first: [PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4, then any
        others in `special_tokens` (and [URL]/[USER]/[NUM] when the social replace options are
        on). `strip_accents=None` follows `lowercase` (BERT's rule). WordPiece merges need a pair
        to occur `min_frequency` times; word level keeps words seen `min_frequency` times.
        `pre_tokenizer="social"` keeps URLs, e-mails, @mentions, #hashtags, numbers, emoticons
        and emoji sequences whole; the replace options turn URLs/e-mails, mentions and numbers
        into [URL], [USER] and [NUM]; `shorten_elongations` cuts letter runs to three;
        `spell_emoji` spells emoji sequences as their CLDR names (see `from_bert_vocab`).
        """
        _check_texts(texts, "texts")
        items = texts if isinstance(texts, (list, tuple)) else list(texts)
        # locals(): the keyword options above, by name (only _TRAIN_OPTIONS are read).
        return cls._train(items, False, vocab_size, min_frequency, special_tokens, locals())

    @classmethod
    def train_from_files(
        cls,
        paths: Iterable[PathLike],
        vocab_size: int = 30_000,
        min_frequency: int = 2,
        special_tokens: Sequence[str] = DEFAULT_SPECIAL_TOKENS,
        *,
        model: Literal["wordpiece", "wordlevel"] = "wordpiece",
        lowercase: bool = True,
        strip_accents: Optional[bool] = None,
        clean_text: bool = True,
        handle_chinese_chars: bool = True,
        unicode_normalization: Optional[Literal["NFC", "NFKC"]] = None,
        pre_tokenizer: Literal["bert", "social"] = "bert",
        replace_urls: bool = False,
        replace_mentions: bool = False,
        replace_numbers: bool = False,
        shorten_elongations: bool = False,
        spell_emoji: bool = False,
    ) -> Tokenizer:
        """Like `train`, reading one post per line from each UTF-8 file (read in Rust)."""
        _check_texts(paths, "paths")
        items = [os.fspath(p) for p in paths]
        return cls._train(items, True, vocab_size, min_frequency, special_tokens, locals())

    @classmethod
    def _train(
        cls,
        items: Sequence[str],
        files: bool,
        vocab_size: int,
        min_frequency: int,
        special_tokens: Sequence[str],
        options: dict[str, Any],
    ) -> Tokenizer:
        # Below 2**31: the Rust core counts in 32 bits, and no vocabulary comes near it.
        if (
            isinstance(vocab_size, bool)
            or not isinstance(vocab_size, int)
            or not 1 <= vocab_size < 2**31
        ):
            raise ValueError(f"vocab_size={vocab_size!r} must be a positive int below 2**31")
        if (
            isinstance(min_frequency, bool)
            or not isinstance(min_frequency, int)
            or not 0 <= min_frequency < 2**31
        ):
            raise ValueError(f"min_frequency={min_frequency!r} must be an int in [0, 2**31)")
        _check_texts(special_tokens, "special_tokens")
        settings = {k: options[k] for k in _TRAIN_OPTIONS}
        core = _tokenizer.Tokenizer.train(
            items,
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(special_tokens),
            files=files,
            **settings,
        )
        return cls(core)

    @classmethod
    def from_bert_vocab(
        cls,
        path: PathLike,
        *,
        lowercase: bool = True,
        strip_accents: Optional[bool] = None,
        clean_text: bool = True,
        handle_chinese_chars: bool = True,
        unk_token: str = "[UNK]",
        spell_emoji: bool = False,
    ) -> Tokenizer:
        """BERT's tokenizer from a `vocab.txt` (one token per line, line number = id).

        Same ids as Hugging Face `BertWordPieceTokenizer(vocab, lowercase=..., strip_accents=...)`.

        `spell_emoji=True`, for vocabularies without emoji (BERT's maps 😍 to [UNK]): each emoji
        sequence the vocabulary has no token for is spelled as its CLDR short name, from
        Unicode's emoji data ("😍" -> "smiling face with heart-eyes", "👍🏽" -> "thumbs up: medium
        skin tone", "🇺🇸" -> "flag: United States"), then normalised and split like any text
        ("heart", "-", "eyes"). A sequence without a name of its own is spelled from its parts
        (cut at each ZWJ; a part without a name gives its first character's); one with nothing
        named is left as it is. Offsets of the spelled words point at the emoji. The option is
        saved with the tokenizer; text without emoji gets BERT's ids either way.
        """
        return cls(
            _tokenizer.Tokenizer.from_bert_vocab(
                os.fspath(path),
                lowercase=lowercase,
                strip_accents=strip_accents,
                clean_text=clean_text,
                handle_chinese_chars=handle_chinese_chars,
                unk_token=unk_token,
                spell_emoji=spell_emoji,
            )
        )

    @classmethod
    def from_file(cls, path: PathLike) -> Tokenizer:
        """Load our JSON format (see `save`) or a Hugging Face BERT WordPiece `tokenizer.json`.

        A Hugging Face file's own padding/truncation settings are ignored: pass them to
        `encode_batch`.
        """
        return cls(_tokenizer.Tokenizer.from_file(os.fspath(path)))

    @classmethod
    def from_str(cls, json: str) -> Tokenizer:
        """Load from the JSON text `to_str` returns (or a Hugging Face tokenizer.json's text)."""
        return cls(_tokenizer.Tokenizer.from_str(json))

    def to_str(self) -> str:
        """Our JSON format (with a format version), as a string."""
        return self._core.to_str()

    def save(self, path: PathLike) -> None:
        """Write our JSON format atomically (a temporary file in the same folder, then rename)."""
        write_atomic(path, self.to_str())

    # -- encoding ---------------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Ids of one text, with [CLS] ... [SEP] unless `add_special_tokens=False`."""
        if not isinstance(text, str):
            raise TypeError(f"text must be str, not {type(text).__name__}")
        return self._core.encode(text, add_special_tokens)

    def encode_batch(
        self,
        texts: Sequence[str],
        max_length: Optional[int] = None,
        padding: Padding = "longest",
        truncation: bool = True,
        add_special_tokens: bool = True,
        return_offsets: bool = False,
    ) -> BatchEncoding:
        """Encode many texts into padded int64 arrays, in parallel, without the GIL.

        padding: "longest" pads to the longest row; "max_length" to `max_length` (rows that
        are longer, only possible with truncation=False, widen the batch); False pads nothing
        and needs every row to have the same length. truncation=True with `max_length` cuts
        each row to `max_length` ids, [CLS]/[SEP] included.
        """
        _check_texts(texts, "texts")
        if padding is False:
            pad = "none"
        elif padding is True:
            pad = "longest"
        elif padding in ("longest", "max_length"):
            pad = padding
        else:
            raise ValueError(
                f"padding={padding!r} is not supported; use 'longest', 'max_length' or False"
            )
        if max_length is not None:
            max_length = _positive_int("max_length", max_length)
        rows, cols, ids, mask, lengths, offsets = self._core.encode_batch(
            texts, max_length, pad, truncation, add_special_tokens, return_offsets
        )
        return BatchEncoding(
            input_ids=_as_array(ids, (rows, cols)),
            attention_mask=_as_array(mask, (rows, cols)),
            lengths=_as_array(lengths, (rows,)),
            offsets=None if offsets is None else _as_array(offsets, (rows, cols, 2)),
        )

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text from ids: WordPiece continuations glued, BERT's spacing clean-up applied."""
        if isinstance(ids, np.ndarray):
            ids = ids.tolist()
        return self._core.decode(list(ids), skip_special_tokens)

    def pre_tokenize(self, text: str) -> list[tuple[str, tuple[int, int]]]:
        """The words the model sees (normalised), with [start, end) character spans in `text`."""
        if not isinstance(text, str):
            raise TypeError(f"text must be str, not {type(text).__name__}")
        return self._core.pre_tokenize(text)

    # -- vocabulary -------------------------------------------------------------------------

    @property
    def spell_emoji(self) -> bool:
        """Whether emoji sequences the vocabulary lacks are spelled as their CLDR names."""
        return self._core.spell_emoji

    @property
    def vocab_size(self) -> int:
        return self._core.vocab_size

    @property
    def pad_token_id(self) -> int:
        """The [PAD] id (0 in a trained vocabulary); 0 if the vocabulary has no [PAD]."""
        pad = self._core.pad_token_id
        return 0 if pad is None else pad

    @property
    def unk_token_id(self) -> int:
        return self._core.unk_token_id

    @property
    def cls_token_id(self) -> Optional[int]:
        return self._core.cls_token_id

    @property
    def sep_token_id(self) -> Optional[int]:
        return self._core.sep_token_id

    @property
    def special_tokens(self) -> list[str]:
        """The special tokens present in the vocabulary."""
        return self._core.special_tokens

    def token_to_id(self, token: str) -> Optional[int]:
        """The id of `token`, or None if it is not in the vocabulary."""
        return self._core.token_to_id(token)

    def id_to_token(self, id: int) -> Optional[str]:
        """The token with id `id`, or None if out of range."""
        return self._core.id_to_token(int(id))

    def get_vocab(self) -> dict[str, int]:
        """token -> id for the whole vocabulary."""
        return {t: i for i, t in enumerate(self._core.get_vocab())}

    def __len__(self) -> int:
        return self.vocab_size

    def __iter__(self) -> Iterator[str]:
        return iter(self._core.get_vocab())

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size})"

    def __reduce__(self) -> tuple[object, tuple[str]]:
        # Pickle as our JSON (DataLoader workers on spawn-based platforms need this).
        return (Tokenizer.from_str, (self.to_str(),))


# The keyword options of `train`/`train_from_files` forwarded to the compiled trainer.
_TRAIN_OPTIONS = (
    "model",
    "lowercase",
    "strip_accents",
    "clean_text",
    "handle_chinese_chars",
    "unicode_normalization",
    "pre_tokenizer",
    "replace_urls",
    "replace_mentions",
    "replace_numbers",
    "shorten_elongations",
    "spell_emoji",
)
