"""RFB pixel formats (RFC 6143 section 7.4) and converting the framebuffer's pixels to them."""

from __future__ import annotations

import struct
from dataclasses import astuple, dataclass


class RfbError(Exception):
    """The client broke the protocol; the connection ends."""


@dataclass(frozen=True)
class PixelFormat:
    bits_per_pixel: int = 32
    depth: int = 24
    big_endian: bool = False
    true_colour: bool = True
    red_max: int = 255
    green_max: int = 255
    blue_max: int = 255
    red_shift: int = 16
    green_shift: int = 8
    blue_shift: int = 0

    _STRUCT = struct.Struct(">BBBBHHHBBB3x")

    def pack(self) -> bytes:
        return self._STRUCT.pack(*astuple(self))  # fields are declared in wire order

    @classmethod
    def unpack(cls, data: bytes) -> PixelFormat:
        bpp, depth, big, true, *rest = cls._STRUCT.unpack(data)
        fmt = cls(bpp, depth, bool(big), bool(true), *rest)
        shifts = (fmt.red_shift, fmt.green_shift, fmt.blue_shift)
        maxes = (fmt.red_max, fmt.green_max, fmt.blue_max)
        # Enough for every client we serve: noVNC asks for 32 bpp with red in the low byte.
        if not (fmt.true_colour and bpp == 32 and maxes == (255, 255, 255)):
            raise RfbError("only 32-bit true-colour pixel formats are supported")
        if len(set(shifts)) != 3 or any(shift not in (0, 8, 16, 24) for shift in shifts):
            raise RfbError("only byte-aligned colour shifts are supported")
        return fmt


DEFAULT_FORMAT = PixelFormat()


def convert(raw: bytes, fmt: PixelFormat) -> bytes:
    """Framebuffer pixels (DEFAULT_FORMAT) in the client's format, by moving whole bytes."""
    if fmt == DEFAULT_FORMAT:
        return raw
    out = bytearray(len(raw))
    shifts = (fmt.red_shift, fmt.green_shift, fmt.blue_shift)
    for source, shift in zip((2, 1, 0), shifts, strict=True):
        target = 3 - shift // 8 if fmt.big_endian else shift // 8
        out[target::4] = raw[source::4]
    return bytes(out)
