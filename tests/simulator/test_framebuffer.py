"""The simulated screen: its test pattern, visible reactions to input, and damage tracking."""

from __future__ import annotations

import pytest

from gateway.simulator.framebuffer import (
    ADVANCE,
    BARS,
    BARS_BOTTOM,
    BLACK,
    BRUSHES,
    GREEN,
    HISTORY,
    MARGIN,
    NAVY,
    RED,
    SCALE,
    STATUS_BOTTOM,
    TEXT_COLUMNS,
    TEXT_ROWS,
    TITLE_BOTTOM,
    WHITE,
    XK_BACKSPACE,
    XK_RETURN,
    Framebuffer,
    Rect,
    glyph,
    pixel,
)

TEXT_TOP = STATUS_BOTTOM + 8
INDICATOR = (640 - 40 + 12, BARS_BOTTOM + 20)  # the middle of the key indicator block


def typed(fb: Framebuffer, text: str) -> None:
    for char in text:
        fb.key_event(True, ord(char))


def lit_cells(fb: Framebuffer, x: int, y: int) -> str:
    """The glyph drawn at (x, y), read back from the screen as 15 cells."""
    cells = ""
    for row in range(5):
        for column in range(3):
            lit = fb.pixel_at(x + column * SCALE + 1, y + row * SCALE + 1) != BLACK
            cells += "#" if lit else "."
    return cells


@pytest.mark.parametrize(
    ("x", "y", "colour"),
    [
        (5, 5, NAVY),
        *[(i * 80 + 40, 120, colour) for i, colour in enumerate(BARS)],
        (MARGIN + 200, 390, BLACK),
    ],
)
def test_the_test_pattern(x: int, y: int, colour: tuple[int, int, int]) -> None:
    assert Framebuffer().pixel_at(x, y) == colour


def test_pixels_are_rfb_default_format_rows() -> None:
    fb = Framebuffer()
    assert pixel((1, 2, 3)) == b"\x03\x02\x01\x00"  # little-endian red<<16 | green<<8 | blue
    assert fb.pixels(Rect(0, TITLE_BOTTOM, 2, 1)) == pixel(WHITE) * 2
    block = fb.pixels(Rect(78, TITLE_BOTTOM, 4, 3))  # across the white/yellow border
    assert len(block) == 4 * 3 * 4
    assert block[:16] == pixel(WHITE) * 2 + pixel(BARS[1]) * 2
    assert len(fb.pixels(fb.screen)) == 640 * 400 * 4


def test_the_title_is_drawn_in_the_font() -> None:
    fb = Framebuffer(title="AB")
    assert lit_cells(fb, MARGIN, 12).replace(".", " ") != " " * 15
    assert fb.pixel_at(MARGIN + SCALE + 1, 12 + 1) == WHITE  # the top of "A"


@pytest.mark.parametrize(
    ("char", "same_as"), [("a", "A"), ("z", "Z"), ("~", "?"), ("\u00e9", "?"), (" ", " ")]
)
def test_glyph_fallbacks(char: str, same_as: str) -> None:
    assert glyph(char) == glyph(same_as)
    assert len(glyph(char)) == 15


def test_glyphs_are_distinct() -> None:
    shapes = [glyph(c) for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"]
    assert len(set(shapes)) == len(shapes)


def test_a_key_press_types_counts_and_toggles_the_indicator() -> None:
    fb = Framebuffer()
    before = fb.pixel_at(*INDICATOR)
    fb.key_event(True, ord("H"))
    assert fb.keys == 1
    assert lit_cells(fb, MARGIN, TEXT_TOP) == glyph("H")
    assert fb.pixel_at(*INDICATOR) != before
    fb.key_event(True, ord("i"))
    assert fb.pixel_at(*INDICATOR) == before
    assert lit_cells(fb, MARGIN + ADVANCE, TEXT_TOP) == glyph("I")
    assert fb.lines == ["Hi"]


def test_a_key_release_changes_nothing() -> None:
    fb = Framebuffer()
    version = fb.version
    fb.key_event(False, ord("x"))
    assert fb.version == version and fb.keys == 0


def test_backspace_and_return_edit_the_text() -> None:
    fb = Framebuffer()
    typed(fb, "AB")
    fb.key_event(True, XK_BACKSPACE)
    assert fb.lines == ["A"]
    assert lit_cells(fb, MARGIN + ADVANCE, TEXT_TOP).count("#") <= 3  # only the text cursor
    fb.key_event(True, XK_RETURN)
    typed(fb, "C")
    assert fb.lines == ["A", "C"]
    assert lit_cells(fb, MARGIN, TEXT_TOP + 20) == glyph("C")


def test_long_lines_wrap_and_old_lines_scroll_away() -> None:
    fb = Framebuffer()
    typed(fb, "X" * TEXT_COLUMNS)
    assert fb.lines == ["X" * TEXT_COLUMNS, ""]
    for row in range(TEXT_ROWS + 2):
        typed(fb, str(row % 10))
        fb.key_event(True, XK_RETURN)
    assert len(fb.lines) == TEXT_ROWS
    assert fb.lines[-2] == str((TEXT_ROWS + 1) % 10)
    assert lit_cells(fb, MARGIN, TEXT_TOP + (TEXT_ROWS - 2) * 20) == glyph(fb.lines[-2])


def test_the_pointer_draws_a_cursor_that_leaves_no_trace() -> None:
    fb = Framebuffer()
    fb.pointer_event(0, 40, 100)
    assert fb.pixel_at(40, 100) == WHITE and fb.pixel_at(38, 98) == BLACK
    fb.pointer_event(0, 300, 100)
    assert fb.pixel_at(38, 98) == BARS[0]  # the background came back
    assert fb.pixel_at(300, 100) == WHITE
    assert fb.clicks == 0


@pytest.mark.parametrize(("buttons", "colour"), [(1, BRUSHES[0]), (2, BRUSHES[1]), (4, BRUSHES[2])])
def test_a_held_button_paints(buttons: int, colour: tuple[int, int, int]) -> None:
    fb = Framebuffer()
    fb.pointer_event(buttons, 120, 100)
    assert fb.pixel_at(117, 97) == colour  # the brush shows round the cursor
    fb.pointer_event(0, 500, 100)
    assert fb.pixel_at(120, 100) == colour  # and stays when the cursor leaves
    assert fb.clicks == 1


def test_a_drag_paints_a_continuous_stroke() -> None:
    fb = Framebuffer()
    fb.pointer_event(1, 100, 60)
    fb.pointer_event(1, 300, 120)  # pointer events arrive far apart when the hand is fast
    fb.pointer_event(0, 600, 190)
    assert all(fb.pixel_at(x, 60 + (x - 100) * 60 // 200) == BRUSHES[0] for x in range(100, 301))
    fb.pointer_event(0, 100, 180)
    fb.pointer_event(1, 300, 180)  # pressed only here: no stroke from the last position
    assert fb.pixel_at(200, 180) != BRUSHES[0]


def test_clicks_count_presses_not_drags() -> None:
    fb = Framebuffer()
    for x in range(100, 110):
        fb.pointer_event(1, x, 100)
    fb.pointer_event(0, 110, 100)
    fb.pointer_event(1, 110, 100)
    assert fb.clicks == 2


def test_the_pointer_is_clamped_to_the_screen() -> None:
    fb = Framebuffer()
    fb.pointer_event(1, 65535, 65535)
    assert fb.pixel_at(638, 398) == WHITE  # the cursor's middle; its edge is clipped off


def test_typing_keeps_the_cursor_on_top() -> None:
    fb = Framebuffer()
    fb.pointer_event(0, MARGIN + 1, TEXT_TOP + 1)
    typed(fb, "M")
    assert fb.pixel_at(MARGIN + 1, TEXT_TOP + 1) == WHITE
    fb.pointer_event(0, 400, 100)
    assert lit_cells(fb, MARGIN, TEXT_TOP) == glyph("M")


def test_changes_since_reports_damaged_rectangles() -> None:
    fb = Framebuffer()
    start = fb.version
    assert fb.changes_since(start) == []
    fb.key_event(True, ord("a"))
    changes = fb.changes_since(start)
    assert changes is not None and changes
    assert all(rect.y >= BARS_BOTTOM for rect in changes)  # status and text only
    assert fb.changes_since(fb.version) == []


def test_a_client_too_far_behind_gets_none() -> None:
    fb = Framebuffer()
    start = fb.version
    for x in range(HISTORY):
        fb.pointer_event(0, x, 100)
    assert fb.changes_since(start) is None
    assert fb.changes_since(fb.version - 1) is not None


def test_watchers_hear_every_change_until_they_leave() -> None:
    fb = Framebuffer()
    calls: list[int] = []

    def watcher() -> None:
        calls.append(fb.version)

    fb.subscribe(watcher)
    fb.key_event(True, ord("a"))
    fb.pointer_event(0, 1, 1)
    assert len(calls) == 2
    fb.unsubscribe(watcher)
    fb.unsubscribe(watcher)
    fb.key_event(True, ord("b"))
    assert len(calls) == 2


@pytest.mark.parametrize(
    ("a", "b", "clip", "union"),
    [
        (Rect(0, 0, 10, 10), Rect(5, 5, 10, 10), Rect(5, 5, 5, 5), Rect(0, 0, 15, 15)),
        (Rect(0, 0, 10, 10), Rect(10, 0, 5, 5), None, Rect(0, 0, 15, 10)),
        (Rect(2, 3, 4, 5), Rect(0, 0, 100, 100), Rect(2, 3, 4, 5), Rect(0, 0, 100, 100)),
        (Rect(-5, -5, 10, 10), Rect(0, 0, 640, 400), Rect(0, 0, 5, 5), Rect(-5, -5, 645, 405)),
    ],
)
def test_rect_clip_and_union(a: Rect, b: Rect, clip: Rect | None, union: Rect) -> None:
    assert a.clip(b) == clip
    assert a.union(b) == union


def test_indicator_colours() -> None:
    fb = Framebuffer()
    assert fb.pixel_at(*INDICATOR) == RED
    fb.key_event(True, 0xFFE1)  # Shift: counted, though it types nothing
    assert fb.pixel_at(*INDICATOR) == GREEN and fb.lines == [""]
