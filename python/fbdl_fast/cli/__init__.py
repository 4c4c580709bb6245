"""`fbdl-fast`, the command line: it parses, calls the library and prints.

`main` (fbdl_fast.cli.main) builds the parser and maps the library's errors to one line and exit
status 2; each subcommand is a module of its own here.
"""

from __future__ import annotations

from fbdl_fast.cli.main import main

__all__ = ["main"]
