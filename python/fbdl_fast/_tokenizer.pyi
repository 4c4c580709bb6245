"""Type stub of the compiled module fbdl_fast._tokenizer (checked by mypy.stubtest)."""

from collections.abc import Sequence
from typing import Optional, final

__all__ = ["FORMAT_VERSION", "Tokenizer", "__version__", "num_threads", "set_num_threads"]

__version__: str
FORMAT_VERSION: int

def set_num_threads(n: int) -> None: ...
def num_threads() -> int: ...

@final
class Tokenizer:
    @staticmethod
    def from_bert_vocab(
        path: str,
        *,
        lowercase: bool = True,
        strip_accents: Optional[bool] = None,
        clean_text: bool = True,
        handle_chinese_chars: bool = True,
        unk_token: str = "[UNK]",
        spell_emoji: bool = False,
    ) -> Tokenizer: ...
    @staticmethod
    def from_str(json: str, source: str = "<string>") -> Tokenizer: ...
    @staticmethod
    def from_file(path: str) -> Tokenizer: ...
    @staticmethod
    def train(
        texts: Sequence[str],
        *,
        vocab_size: int,
        min_frequency: int,
        special_tokens: list[str],
        model: str = "wordpiece",
        files: bool = False,
        lowercase: bool = True,
        strip_accents: Optional[bool] = None,
        clean_text: bool = True,
        handle_chinese_chars: bool = True,
        unicode_normalization: Optional[str] = None,
        pre_tokenizer: str = "bert",
        replace_urls: bool = False,
        replace_mentions: bool = False,
        replace_numbers: bool = False,
        shorten_elongations: bool = False,
        spell_emoji: bool = False,
    ) -> Tokenizer: ...
    def to_str(self) -> str: ...
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...
    def encode_batch(
        self,
        texts: Sequence[str],
        max_length: Optional[int] = None,
        padding: str = "longest",
        truncation: bool = True,
        add_special_tokens: bool = True,
        return_offsets: bool = False,
    ) -> tuple[int, int, bytearray, bytearray, bytearray, Optional[bytearray]]: ...
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str: ...
    def pre_tokenize(self, text: str) -> list[tuple[str, tuple[int, int]]]: ...
    def token_to_id(self, token: str) -> Optional[int]: ...
    def id_to_token(self, id: int) -> Optional[str]: ...
    def get_vocab(self) -> list[str]: ...
    @property
    def spell_emoji(self) -> bool: ...
    @property
    def vocab_size(self) -> int: ...
    @property
    def pad_token_id(self) -> Optional[int]: ...
    @property
    def unk_token_id(self) -> int: ...
    @property
    def cls_token_id(self) -> Optional[int]: ...
    @property
    def sep_token_id(self) -> Optional[int]: ...
    @property
    def special_tokens(self) -> list[str]: ...
