"""The NAME line of a man page, read from its roff source (the man or the mdoc macros).

    .SH NAME
    open, openat, creat \\- open and possibly create a file

-> NameLine(names=("open", "openat", "creat"), description="open and possibly create a file").
Used by datasets.py's `manpages` task. Only what a NAME line needs is read: font and size
escapes are dropped, special characters (\\(em, \\[u00E9], pod2man's \\*(L") are printed,
macro definitions and the requests around the text are skipped; anything fancier (conditionals,
registers) ends the line.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

# Macros whose arguments are text of the NAME line: man's fonts, mdoc's names and words.
_TEXT_MACROS = frozenset({
    "B", "I", "SM", "SB", "BR", "RB", "BI", "IB", "IR", "RI",
    "Nm", "Nd", "Xr", "Tn", "Pa", "Ar", "Fn", "Fa", "Dq", "Sq", "Ql", "Em", "Sy", "Li", "Cm",
    "Fl", "Ic", "Ev", "Va", "Ux", "Bx", "At",
})  # fmt: skip
# Requests whose body runs to a ".." line: macro definitions and ignored blocks.
_DEFINITIONS = frozenset({"de", "de1", "am", "am1", "ig"})
# Font macros whose arguments are printed without spaces between them (".BR open (2)").
_ALTERNATING_MACROS = frozenset(("BR", "RB", "BI", "IB", "IR", "RI"))
# roff special characters (\(xx, \[xx]) that can appear in a description; others print nothing.
_SPECIAL_CHARS = {
    "aq": "'", "dq": '"', "lq": '"', "rq": '"', "oq": "'", "cq": "'", "Aq": "'",
    "em": "\u2014", "en": "\u2013", "hy": "-", "mi": "-", "ga": "`", "ha": "^", "ti": "~",
    "bu": "\u2022", "co": "\u00a9", "rg": "\u00ae", "tm": "\u2122", "->": "\u2192",
    "L\"": '"', "R\"": '"', "C`": '"', "C'": '"',
}  # fmt: skip
# Escapes to drop before reading text: fonts (\fB, \f(CW, \f[B]), sizes (\s-1, \s0) and the
# zero-width ones (\&, \|, \^, \%, \:, \c, \)).
_DROPPED = re.compile(r"\\f(?:\[[^\]]*\]|\(..|.)|\\s(?:[+-]?\d|\(\d\d|\[[^\]]*\])|\\[&|^%:c)]")
# The roff escapes left after those: strings (\*x, \*(xx, \*[name]), special characters
# (\(xx, \[name]) and single characters (\-, \e, \ , ...).
_ESCAPE = re.compile(r"\\\*(?:\(..|\[[^\]]*\]|.)|\\\(..|\\\[[^\]]*\]|\\.")
# The dash between the names and the description: "\-" (also "\(em", "-", "--") with space on
# both sides; a "\-" inside a name ("git\-add") has none.
_SEPARATOR = re.compile(r"(?:^|\s)(?:\\-|\\\(e[mn]|\\\[e[mn]\]|-)+(?:\s|$)")


@dataclass(frozen=True)
class NameLine:
    """The NAME section of a man page: the names it documents and their one-line description."""

    names: tuple[str, ...]
    description: str


def is_redirect(source: str) -> bool:
    """Whether a page is only a `.so other/page` redirect (it duplicates the page it names)."""
    for line in source.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith(('.\\"', "'\\\"", '\\"')):
            return stripped.startswith(".so ")
    return False


def _roff_args(text: str) -> list[str]:
    """A macro's arguments: split on spaces, a double-quoted one may hold spaces ("" is a ")."""
    return [
        m[1].replace('""', '"') if m[1] is not None else m[2]
        for m in re.finditer(r'"((?:[^"]|"")*)"?|(\S+)', text)
    ]


def _unescape(text: str) -> str:
    """The printed text of a roff line (after _DROPPED's escapes are gone)."""

    def one(match: re.Match[str]) -> str:
        escape = match.group()
        body = escape[2:] if escape.startswith("\\*") else escape[1:]
        if escape.startswith("\\*") or (len(body) > 1 and body[0] in "(["):
            name = body[1:] if body[0] == "(" else body[1:-1] if body[0] == "[" else body
            if re.fullmatch(r"u[0-9A-Fa-f]{4,6}", name):  # \[u00E9]
                return chr(int(name[1:], 16))
            return _SPECIAL_CHARS.get(name, "")
        return {"e": "\\", " ": " ", "~": " ", "0": " "}.get(body, body)

    return _ESCAPE.sub(one, text)


def _name_text(lines: Iterable[str]) -> str:
    """The first entry of a NAME section as one roff line: the text lines and text macros'
    arguments up to the first break (a blank line, .br, .PP, any other request) after text;
    requests before the text (.IX, .nh, macro definitions) are skipped."""
    parts: list[str] = []
    in_definition = False
    for line in lines:
        if in_definition:
            in_definition = line.strip() != ".."
            continue
        if not line.strip():
            if parts:
                break
            continue
        line = line.split('\\"', 1)[0]  # a comment runs to the end of the line
        if not line.startswith((".", "'")):
            parts.append(line)
            continue
        macro, _, rest = line[1:].strip().partition(" ")
        args = _roff_args(rest)
        if macro in _DEFINITIONS:
            in_definition = True
        elif macro == "Nd":  # mdoc: ".Nm ls" then ".Nd list directory contents"
            parts.append("\\- " + " ".join(args))
        elif macro in _ALTERNATING_MACROS:
            parts.append("".join(args))
        elif macro in _TEXT_MACROS:
            parts.append(" ".join(args))
        elif macro and parts:  # "hostname \- ...", .br, "domainname \- ...": the first only
            break
    return re.sub(r"\s+,", ",", " ".join(parts))


def parse_name_section(source: str) -> NameLine | None:
    """The NAME line of a man page's roff source (man or mdoc macros); None for a page without
    a NAME section, without a "name \\- description" dash, or with an empty description."""
    lines = source.splitlines()
    start = next(
        (
            i
            for i, line in enumerate(lines)
            if re.fullmatch(r'\.S[Hh]\s+"?NAME"?\s*', line.strip(), re.IGNORECASE)
        ),
        None,
    )
    if start is None:
        return None
    end = next(
        (j for j in range(start + 1, len(lines)) if re.match(r"\.S[HhSs]\b", lines[j])),
        len(lines),
    )
    text = _DROPPED.sub("", _name_text(lines[start + 1 : end]))
    match = _SEPARATOR.search(text)
    if match is None:
        return None
    names = tuple(
        n for n in (" ".join(_unescape(p).split()) for p in text[: match.start()].split(",")) if n
    )
    description = " ".join(_unescape(text[match.end() :]).split())
    if not names or not description:
        return None
    return NameLine(names, description)


def read_page(path: Path) -> str:
    """A man page's roff source: gzip'd (.gz) or plain; bytes that are not UTF-8 replaced."""
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return data.decode("utf-8", errors="replace")
