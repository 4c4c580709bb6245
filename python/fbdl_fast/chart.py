"""A horizontal bar chart written as a PNG with the standard library alone.

`fbdl-fast bench` draws its speedups with it. A plotting library would be a heavy run-time
dependency for one picture; a PNG is a zlib stream of rows, and labels need only a 5x7 font.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence

# 5x7 glyphs, one string of 7 rows of 5 bits per character; unknown characters draw as blanks.
_FONT = {
    "0": "01110 10001 10011 10101 11001 10001 01110",
    "1": "00100 01100 00100 00100 00100 00100 01110",
    "2": "01110 10001 00001 00010 00100 01000 11111",
    "3": "11110 00001 00001 01110 00001 00001 11110",
    "4": "00010 00110 01010 10010 11111 00010 00010",
    "5": "11111 10000 11110 00001 00001 10001 01110",
    "6": "00110 01000 10000 11110 10001 10001 01110",
    "7": "11111 00001 00010 00100 01000 01000 01000",
    "8": "01110 10001 10001 01110 10001 10001 01110",
    "9": "01110 10001 10001 01111 00001 00010 01100",
    "a": "00000 00000 01110 00001 01111 10001 01111",
    "b": "10000 10000 10110 11001 10001 10001 11110",
    "c": "00000 00000 01110 10000 10000 10001 01110",
    "d": "00001 00001 01101 10011 10001 10001 01111",
    "e": "00000 00000 01110 10001 11111 10000 01110",
    "f": "00110 01001 01000 11100 01000 01000 01000",
    "g": "00000 01111 10001 10001 01111 00001 01110",
    "h": "10000 10000 10110 11001 10001 10001 10001",
    "i": "00100 00000 01100 00100 00100 00100 01110",
    "j": "00010 00000 00110 00010 00010 10010 01100",
    "k": "10000 10000 10010 10100 11000 10100 10010",
    "l": "01100 00100 00100 00100 00100 00100 01110",
    "m": "00000 00000 11010 10101 10101 10001 10001",
    "n": "00000 00000 10110 11001 10001 10001 10001",
    "o": "00000 00000 01110 10001 10001 10001 01110",
    "p": "00000 00000 11110 10001 11110 10000 10000",
    "q": "00000 00000 01101 10011 01111 00001 00001",
    "r": "00000 00000 10110 11001 10000 10000 10000",
    "s": "00000 00000 01110 10000 01110 00001 11110",
    "t": "01000 01000 11100 01000 01000 01001 00110",
    "u": "00000 00000 10001 10001 10001 10011 01101",
    "v": "00000 00000 10001 10001 10001 01010 00100",
    "w": "00000 00000 10001 10001 10101 10101 01010",
    "x": "00000 00000 10001 01010 00100 01010 10001",
    "y": "00000 00000 10001 10001 01111 00001 01110",
    "z": "00000 00000 11111 00010 00100 01000 11111",
    ".": "00000 00000 00000 00000 00000 01100 01100",
    ",": "00000 00000 00000 00000 01100 00100 01000",
    "-": "00000 00000 00000 11111 00000 00000 00000",
    "_": "00000 00000 00000 00000 00000 00000 11111",
    "/": "00001 00010 00010 00100 01000 01000 10000",
    ":": "00000 01100 01100 00000 01100 01100 00000",
    "(": "00010 00100 01000 01000 01000 00100 00010",
    ")": "01000 00100 00010 00010 00010 00100 01000",
    "+": "00000 00100 00100 11111 00100 00100 00000",
    "=": "00000 00000 11111 00000 11111 00000 00000",
    "|": "00100 00100 00100 00100 00100 00100 00100",
    " ": "00000 00000 00000 00000 00000 00000 00000",
}
_SCALE = 2  # pixels per font dot
_CHAR_W, _CHAR_H = 6 * _SCALE, 8 * _SCALE
WHITE, BLACK, GREY = (255, 255, 255), (40, 40, 40), (170, 170, 170)
FASTER, SLOWER = (46, 125, 50), (198, 40, 40)


class _Canvas:
    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.pixels = bytearray(bytes(WHITE) * (width * height))

    def rect(self, x0: int, y0: int, x1: int, y1: int, color: tuple[int, int, int]) -> None:
        x0, x1 = max(0, min(x0, x1)), min(self.width, max(x0, x1))
        y0, y1 = max(0, min(y0, y1)), min(self.height, max(y0, y1))
        row = bytes(color) * (x1 - x0)
        for y in range(y0, y1):
            start = 3 * (y * self.width + x0)
            self.pixels[start : start + len(row)] = row

    def text(self, x: int, y: int, text: str, color: tuple[int, int, int] = BLACK) -> None:
        for i, char in enumerate(text.lower()):
            rows = _FONT.get(char, _FONT[" "]).split()
            for dy, bits in enumerate(rows):
                for dx, bit in enumerate(bits):
                    if bit == "1":
                        px, py = x + i * _CHAR_W + dx * _SCALE, y + dy * _SCALE
                        self.rect(px, py, px + _SCALE, py + _SCALE, color)

    def png(self) -> bytes:
        stride = 3 * self.width
        raw = b"".join(
            b"\x00" + bytes(self.pixels[y * stride : (y + 1) * stride]) for y in range(self.height)
        )

        def chunk(kind: bytes, data: bytes) -> bytes:
            body = kind + data
            return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)  # 8-bit RGB
        return (
            b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(raw, 9))
            + chunk(b"IEND", b"")
        )


def bar_chart_png(
    title: str, labels: Sequence[str], values: Sequence[float], reference: float = 1.0
) -> bytes:
    """Horizontal bars of `values` (e.g. speedups), a line at `reference`, values printed.

    Bars at or above the reference are green, below it red.
    """
    if len(labels) != len(values):
        raise ValueError(f"bar_chart_png: {len(labels)} labels for {len(values)} values")
    label_w = _CHAR_W * max([len(label) for label in labels] + [1]) + 20
    plot_w, bar_h, gap, top = 420, 2 * _CHAR_H, _CHAR_H // 2, 3 * _CHAR_H
    width = label_w + plot_w + _CHAR_W * 8
    height = top + len(values) * (bar_h + gap) + _CHAR_H
    canvas = _Canvas(width, height)
    canvas.text(10, _CHAR_H // 2, title)
    longest = max([*values, reference]) or 1.0
    scale = plot_w / longest
    for i, (label, value) in enumerate(zip(labels, values)):
        y = top + i * (bar_h + gap)
        canvas.text(10, y + (bar_h - _CHAR_H) // 2 + _SCALE, label)
        color = FASTER if value >= reference else SLOWER
        canvas.rect(label_w, y, label_w + max(1, round(value * scale)), y + bar_h, color)
        canvas.text(
            label_w + round(value * scale) + 6, y + (bar_h - _CHAR_H) // 2 + _SCALE, f"{value:.2f}x"
        )
    ref_x = label_w + round(reference * scale)
    canvas.rect(ref_x, top - 4, ref_x + 2, height - _CHAR_H // 2, GREY)
    return canvas.png()
