"""Type stub of the compiled module fbdl_fast._tokenizer (checked by mypy.stubtest)."""

__version__: str

def pre_tokenize(text: str) -> list[tuple[str, tuple[int, int]]]: ...
