"""A small simulated VM screen: a test pattern that visibly answers keys and the pointer."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import NamedTuple

WIDTH, HEIGHT = 640, 400
BYTES_PER_PIXEL = 4  # RFB's default format: 32 bpp little-endian, red<<16 | green<<8 | blue
TITLE_BOTTOM, BARS_BOTTOM, STATUS_BOTTOM = 40, 200, 240
SCALE, ADVANCE, LINE_HEIGHT, MARGIN = 3, 12, 20, 12
TEXT_COLUMNS = (WIDTH - 2 * MARGIN) // ADVANCE
TEXT_ROWS = (HEIGHT - STATUS_BOTTOM - 8) // LINE_HEIGHT
CURSOR_SIZE, BRUSH_SIZE = 5, 8  # both centred on the pointer; the brush shows round it
HISTORY = 256  # damage entries kept; a client further behind gets the whole screen

Colour = tuple[int, int, int]
BLACK, WHITE, NAVY, GREY = (0, 0, 0), (255, 255, 255), (20, 30, 90), (50, 50, 50)
GREEN, YELLOW, RED = (60, 220, 90), (250, 220, 40), (230, 40, 40)
BARS: tuple[Colour, ...] = (
    WHITE,
    (255, 255, 0),
    (0, 255, 255),
    (0, 255, 0),
    (255, 0, 255),
    (255, 0, 0),
    (0, 0, 255),
    BLACK,
)
BRUSHES: tuple[Colour, ...] = (RED, GREEN, (60, 120, 255))  # left, middle, right button
XK_BACKSPACE, XK_RETURN, XK_KP_ENTER = 0xFF08, 0xFF0D, 0xFF8D

# A 3x5 bitmap font: each glyph is drawn under its character; lower case is drawn as upper case.
_FONT = """
 A   B   C   D   E   F   G   H   I   J   K   L   M   N   O   P
.#. ##. .## ##. ### ### .## #.# ### ..# #.# #.. #.# ##. .#. ##.
#.# #.# #.. #.# #.. #.. #.. #.# .#. ..# #.# #.. ### #.# #.# #.#
### ##. #.. #.# ##. ##. #.# ### .#. ..# ##. #.. ### #.# #.# ##.
#.# #.# #.. #.# #.. #.. #.# #.# .#. #.# #.# #.. #.# #.# #.# #..
#.# ##. .## ##. ### #.. .## #.# ### .#. #.# ### #.# #.# .#. #..
 Q   R   S   T   U   V   W   X   Y   Z   0   1   2   3   4   5
.#. ##. .## ### #.# #.# #.# #.# #.# ### ### .#. ##. ##. #.# ###
#.# #.# #.. .#. #.# #.# #.# #.# #.# ..# #.# ##. ..# ..# #.# #..
#.# ##. .#. .#. #.# #.# ### .#. .#. .#. #.# .#. .#. .#. ### ##.
##. #.# ..# .#. #.# #.# ### #.# .#. #.. #.# .#. #.. ..# ..# ..#
.## #.# ##. .#. ### .#. #.# #.# .#. ### ### ### ### ##. ..# ##.
 6   7   8   9       -   .   :   /   _   ?   !   =   +   ,
.## ### ### ### ... ... ... ... ..# ... ##. .#. ... ... ...
#.. ..# #.# #.# ... ... ... .#. ..# ... ..# .#. ### .#. ...
### .#. ### ### ... ### ... ... .#. ... .#. .#. ... ### ...
#.# .#. #.# ..# ... ... ... .#. #.. ... ... ... ### .#. .#.
### .#. ### ##. ... ... .#. ... #.. ### .#. .#. ... ... #..
"""


def _parse_font(picture: str) -> dict[str, str]:
    lines, glyphs = picture.strip("\n").split("\n"), {}
    for top in range(0, len(lines), 6):
        header, rows = lines[top], lines[top + 1 : top + 6]
        for column in range(0, len(rows[0]), 4):
            char = header[column + 1] if column + 1 < len(header) else " "
            glyphs[char] = "".join(row[column : column + 3] for row in rows)
    return glyphs


_GLYPHS = _parse_font(_FONT)  # character -> 15 cells, "#" lit, row by row


class Rect(NamedTuple):
    x: int
    y: int
    w: int
    h: int

    def clip(self, other: Rect) -> Rect | None:
        x0, y0 = max(self.x, other.x), max(self.y, other.y)
        x1 = min(self.x + self.w, other.x + other.w)
        y1 = min(self.y + self.h, other.y + other.h)
        return Rect(x0, y0, x1 - x0, y1 - y0) if x1 > x0 and y1 > y0 else None

    def union(self, other: Rect) -> Rect:
        x0, y0 = min(self.x, other.x), min(self.y, other.y)
        x1 = max(self.x + self.w, other.x + other.w)
        y1 = max(self.y + self.h, other.y + other.h)
        return Rect(x0, y0, x1 - x0, y1 - y0)


def pixel(colour: Colour) -> bytes:
    red, green, blue = colour
    return bytes((blue, green, red, 0))


def glyph(char: str) -> str:
    return _GLYPHS.get(char.upper(), _GLYPHS["?"])


class Framebuffer:
    """The screen of one simulated server; every change is recorded as a damaged rectangle."""

    def __init__(self, title: str = "CONSOLE-GATEWAY SIMULATOR") -> None:
        self.width, self.height, self.title = WIDTH, HEIGHT, title
        self.screen = Rect(0, 0, WIDTH, HEIGHT)
        self._pixels = bytearray(WIDTH * HEIGHT * BYTES_PER_PIXEL)
        self.version = 0
        self._damage: deque[tuple[int, Rect]] = deque(maxlen=HISTORY)
        self._watchers: list[Callable[[], None]] = []
        self.keys, self.clicks, self.lines = 0, 0, [""]
        self._cursor: tuple[Rect, bytes] | None = None
        self._buttons, self._pointer = 0, (0, 0)
        self._draw_pattern()
        self._damage.clear()

    # -- reading -------------------------------------------------------------------------
    def pixels(self, rect: Rect) -> bytes:
        """Raw pixels of rect, row by row, in the stored (RFB default) format."""
        stride, row = self.width * BYTES_PER_PIXEL, rect.w * BYTES_PER_PIXEL
        start = (rect.y * self.width + rect.x) * BYTES_PER_PIXEL
        return b"".join(
            self._pixels[start + i * stride : start + i * stride + row] for i in range(rect.h)
        )

    def pixel_at(self, x: int, y: int) -> Colour:
        offset = (y * self.width + x) * BYTES_PER_PIXEL
        blue, green, red = self._pixels[offset : offset + 3]
        return red, green, blue

    def changes_since(self, version: int) -> list[Rect] | None:
        """Rectangles changed after `version`; None when that is too old to know."""
        if version >= self.version:
            return []
        if not self._damage or self._damage[0][0] > version + 1:
            return None
        return [rect for seen, rect in self._damage if seen > version]

    def subscribe(self, watcher: Callable[[], None]) -> None:
        self._watchers.append(watcher)

    def unsubscribe(self, watcher: Callable[[], None]) -> None:
        if watcher in self._watchers:
            self._watchers.remove(watcher)

    # -- input ---------------------------------------------------------------------------
    def key_event(self, down: bool, keysym: int) -> None:
        """A key press counts, toggles the indicator block and edits the text area."""
        if not down:
            return
        self.keys += 1
        self._change(lambda: self._apply_key(keysym))

    def pointer_event(self, buttons: int, x: int, y: int) -> None:
        """The pointer draws a cursor; a held button paints, in strokes while it stays held."""
        x, y = min(max(x, 0), self.width - 1), min(max(y, 0), self.height - 1)
        pressed, held = buttons & ~self._buttons & 0b111, buttons & self._buttons & 0b111
        self.clicks += bool(pressed)
        self._buttons = buttons
        start = self._pointer if held else (x, y)
        self._change(lambda: self._apply_pointer(buttons, start, (x, y), bool(pressed)))

    # -- drawing -------------------------------------------------------------------------
    def _change(self, draw: Callable[[], None]) -> None:
        # The cursor is an overlay: lift it so drawing never lands in its saved background.
        shown = self._cursor is not None
        self._hide_cursor()
        draw()
        if shown and self._cursor is None:
            self._show_cursor(*self._pointer)
        for watcher in list(self._watchers):
            watcher()

    def _apply_key(self, keysym: int) -> None:
        line_break = keysym in (XK_RETURN, XK_KP_ENTER)
        if keysym == XK_BACKSPACE:
            self.lines[-1] = self.lines[-1][:-1]
        elif 0x20 <= keysym <= 0x7E:
            self.lines[-1] += chr(keysym)
            line_break = len(self.lines[-1]) >= TEXT_COLUMNS
        self._draw_status()
        if line_break:
            self.lines.append("")
            del self.lines[:-TEXT_ROWS]
            self._draw_text_area()
        else:
            self._draw_line(len(self.lines) - 1)  # an edit within a line repaints only that line

    def _apply_pointer(
        self, buttons: int, start: tuple[int, int], end: tuple[int, int], pressed: bool
    ) -> None:
        for bit, colour in enumerate(BRUSHES):
            if buttons & (1 << bit):
                self._stroke(start, end, colour)
        if pressed:
            self._draw_status()
        self._show_cursor(*end)

    def _stroke(self, start: tuple[int, int], end: tuple[int, int], colour: Colour) -> None:
        # Brush stamps half a brush apart, so fast drags (pointer events ~10 px apart) stay lines.
        (x0, y0), (x1, y1), half = start, end, BRUSH_SIZE // 2
        steps = max(abs(x1 - x0), abs(y1 - y0)) // half + 1
        for i in range(steps + 1):
            x, y = x0 + (x1 - x0) * i // steps, y0 + (y1 - y0) * i // steps
            self._paint(Rect(x - half, y - half, BRUSH_SIZE, BRUSH_SIZE), colour)
        box = Rect(min(x0, x1) - half, min(y0, y1) - half, abs(x1 - x0) + BRUSH_SIZE,
                   abs(y1 - y0) + BRUSH_SIZE).clip(self.screen)  # fmt: skip
        if box is not None:
            self._mark(box)

    def _show_cursor(self, x: int, y: int) -> None:
        half = CURSOR_SIZE // 2
        rect = Rect(x - half, y - half, CURSOR_SIZE, CURSOR_SIZE).clip(self.screen)
        if rect is None:
            return
        self._pointer, self._cursor = (x, y), (rect, self.pixels(rect))
        self._fill(rect, BLACK)
        self._paint(Rect(rect.x + 1, rect.y + 1, rect.w - 2, rect.h - 2), WHITE)

    def _hide_cursor(self) -> None:
        if self._cursor is None:
            return
        rect, saved = self._cursor
        self._cursor = None
        stride, row = self.width * BYTES_PER_PIXEL, rect.w * BYTES_PER_PIXEL
        start = (rect.y * self.width + rect.x) * BYTES_PER_PIXEL
        for i in range(rect.h):
            at = start + i * stride
            self._pixels[at : at + row] = saved[i * row : (i + 1) * row]
        self._mark(rect)

    def _draw_pattern(self) -> None:
        self._fill(self.screen, BLACK)
        self._paint(Rect(0, 0, self.width, TITLE_BOTTOM), NAVY)
        self._text(MARGIN, 12, self.title[:TEXT_COLUMNS], WHITE)
        bar_width = self.width // len(BARS)
        for i, colour in enumerate(BARS):
            self._paint(
                Rect(i * bar_width, TITLE_BOTTOM, bar_width, BARS_BOTTOM - TITLE_BOTTOM), colour
            )
        self._draw_status()
        self._draw_text_area()

    def _draw_status(self) -> None:
        self._fill(Rect(0, BARS_BOTTOM, self.width, STATUS_BOTTOM - BARS_BOTTOM), GREY)
        self._text(MARGIN, BARS_BOTTOM + 12, f"KEYS {self.keys}  CLICKS {self.clicks}", YELLOW)
        indicator = GREEN if self.keys % 2 else RED  # flips on every key press
        self._paint(Rect(self.width - 40, BARS_BOTTOM + 8, 24, 24), indicator)

    def _draw_text_area(self) -> None:
        self._fill(Rect(0, STATUS_BOTTOM, self.width, self.height - STATUS_BOTTOM), BLACK)
        for row in range(len(self.lines)):
            self._draw_line(row)

    def _draw_line(self, row: int) -> None:
        top = STATUS_BOTTOM + 8 + row * LINE_HEIGHT
        self._fill(Rect(0, top, self.width, LINE_HEIGHT), BLACK)
        self._text(MARGIN, top, self.lines[row], GREEN)
        if row == len(self.lines) - 1:  # the text cursor, an underline after the last character
            left = MARGIN + len(self.lines[row]) * ADVANCE
            self._paint(Rect(left, top + 5 * SCALE + 1, 3 * SCALE, 2), GREEN)

    def _text(self, x: int, y: int, text: str, colour: Colour) -> None:
        for index, char in enumerate(text):
            bits = glyph(char)
            for cell, bit in enumerate(bits):
                if bit == "#":
                    row, column = divmod(cell, 3)
                    left = x + index * ADVANCE + column * SCALE
                    self._paint(Rect(left, y + row * SCALE, SCALE, SCALE), colour)

    def _fill(self, rect: Rect, colour: Colour) -> None:
        """Paint and record the damage; inner details are painted unrecorded, inside it."""
        self._paint(rect, colour)
        clipped = rect.clip(self.screen)
        if clipped is not None:
            self._mark(clipped)

    def _paint(self, rect: Rect, colour: Colour) -> None:
        clipped = rect.clip(self.screen)
        if clipped is None:
            return
        line = pixel(colour) * clipped.w
        stride = self.width * BYTES_PER_PIXEL
        start = (clipped.y * self.width + clipped.x) * BYTES_PER_PIXEL
        for i in range(clipped.h):
            self._pixels[start + i * stride : start + i * stride + len(line)] = line

    def _mark(self, rect: Rect) -> None:
        self.version += 1
        self._damage.append((self.version, rect))
