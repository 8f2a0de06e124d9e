"""The RFB 3.8 session byte for byte, any chunking, the TCP server, and it behind websockify."""

from __future__ import annotations

import asyncio
import struct

import aiohttp
import pytest

from gateway.simulator.framebuffer import BARS, TITLE_BOTTOM, WHITE, Framebuffer, Rect, pixel
from gateway.simulator.pixels import DEFAULT_FORMAT, PixelFormat, RfbError, convert
from gateway.simulator.rfb import MAX_CUT_TEXT, MAX_RECTS, RfbServerSession, serve_rfb_tcp
from tests.rfb_support import (
    RfbClient,
    WebsockifyUpstream,
    stream_rfb_client,
    ws_rfb_client,
)

NAME = b"console-gateway simulator"
DEFAULT_PF = bytes([32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0])
SERVER_INIT = struct.pack(">HH", 640, 400) + DEFAULT_PF + struct.pack(">I", len(NAME)) + NAME
HANDSHAKE = b"RFB 003.008\n" + b"\x01" + b"\x01"  # version, security None, shared
FULL_REQUEST = struct.pack(">BBHHHH", 3, 0, 0, 0, 640, 400)
FULL_UPDATE_SIZE = 4 + 12 + 640 * 400 * 4
NOVNC_PF = bytes([32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 0, 8, 16, 0, 0, 0])  # red in byte 0


def set_pixel_format(pf: bytes) -> bytes:
    return b"\x00\x00\x00\x00" + pf


def key(down: bool, keysym: int) -> bytes:
    return struct.pack(">BBxxI", 4, down, keysym)


def pointer(buttons: int, x: int, y: int) -> bytes:
    return struct.pack(">BBHH", 5, buttons, x, y)


def request(incremental: bool, rect: Rect) -> bytes:
    return struct.pack(">BBHHHH", 3, incremental, *rect)


def ready(fb: Framebuffer | None = None) -> RfbServerSession:
    session = RfbServerSession(fb or Framebuffer())
    session.receive(HANDSHAKE)
    return session


def parse_update(data: bytes) -> list[tuple[Rect, bytes]]:
    kind, count = struct.unpack(">BxH", data[:4])
    assert kind == 0
    rects, at = [], 4
    for _ in range(count):
        x, y, w, h, encoding = struct.unpack(">HHHHi", data[at : at + 12])
        assert encoding == 0
        at += 12
        rects.append((Rect(x, y, w, h), data[at : at + w * h * 4]))
        at += w * h * 4
    assert at == len(data)
    return rects


# -- handshake ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("client_sends", "server_answers"),
    [
        (b"RFB 003.008\n", b"\x01\x01"),
        (b"RFB 003.008\n\x01", b"\x01\x01\x00\x00\x00\x00"),
        (b"RFB 003.008\n\x01\x00", b"\x01\x01\x00\x00\x00\x00" + SERVER_INIT),
        (b"RFB 003.889\n\x01", b"\x01\x01\x00\x00\x00\x00"),  # Apple's 3.8
        (b"RFB 004.001\n\x01", b"\x01\x01\x00\x00\x00\x00"),  # later versions speak 3.8
        (b"RFB 003.007\n\x01\x01", b"\x01\x01" + SERVER_INIT),  # 3.7: no SecurityResult
        (b"RFB 003.003\n\x01", b"\x00\x00\x00\x01" + SERVER_INIT),  # 3.3: server picks None
        (b"RFB 003.005\n", b"\x00\x00\x00\x01"),  # unknown 3.x minors are 3.3
        (b"RFB 003.00", b""),
    ],
)
def test_handshake_bytes(client_sends: bytes, server_answers: bytes) -> None:
    session = RfbServerSession(Framebuffer())
    assert session.greeting() == b"RFB 003.008\n"
    assert session.receive(client_sends) == server_answers


def test_server_init_layout() -> None:
    session = RfbServerSession(Framebuffer(), name="vm-1")
    answer = session.receive(HANDSHAKE)[6:]
    width, height, pf, length = struct.unpack(">HH16sI", answer[:24])
    assert (width, height, length, answer[24:]) == (640, 400, 4, b"vm-1")
    assert pf == DEFAULT_PF == DEFAULT_FORMAT.pack()
    assert PixelFormat.unpack(pf) == DEFAULT_FORMAT
    assert session.shared is True


@pytest.mark.parametrize("garbage", [b"GET / HTTP/1.1\r\n", b"RFB 002.000\n", b"RFB 3.8\n\n\n\n\n"])
def test_a_non_rfb_client_is_refused(garbage: bytes) -> None:
    with pytest.raises(RfbError):
        RfbServerSession(Framebuffer()).receive(garbage)


@pytest.mark.parametrize(
    ("version", "failure"), [(b"RFB 003.008\n", True), (b"RFB 003.007\n", False)]
)
def test_an_unoffered_security_type_fails(version: bytes, failure: bool) -> None:
    session = RfbServerSession(Framebuffer())
    session.receive(version)
    answer = session.receive(b"\x02\x01" + FULL_REQUEST)  # VNC auth, then more: all ignored
    reason = b"security type not offered"
    assert answer == (struct.pack(">II", 1, len(reason)) + reason if failure else b"")
    assert session.closed
    assert session.receive(FULL_REQUEST) == b""


# -- updates -----------------------------------------------------------------------------
def test_a_full_update_is_the_whole_screen_raw() -> None:
    fb = Framebuffer()
    answer = ready(fb).receive(FULL_REQUEST)
    assert len(answer) == FULL_UPDATE_SIZE
    assert answer[:16] == b"\x00\x00\x00\x01" + struct.pack(">HHHHi", 0, 0, 640, 400, 0)
    assert answer[16:] == fb.pixels(fb.screen)


def test_a_partial_request_is_clipped_to_the_screen() -> None:
    [(rect, pixels)] = parse_update(ready().receive(request(False, Rect(600, 390, 100, 100))))
    assert rect == Rect(600, 390, 40, 10)
    assert len(pixels) == 40 * 10 * 4


def test_an_incremental_request_waits_for_a_change() -> None:
    fb = Framebuffer()
    session = ready(fb)
    session.receive(FULL_REQUEST)
    assert session.receive(request(True, fb.screen)) == b""
    assert session.pending_update() == b""
    fb.key_event(True, ord("q"))  # e.g. another viewer typing
    rects = parse_update(session.pending_update())
    assert rects and all(r.y >= 200 for r, _ in rects)
    assert all(pixels == fb.pixels(r) for r, pixels in rects)
    assert session.pending_update() == b""  # answered once


def test_own_input_answers_a_waiting_request_in_the_same_reply() -> None:
    fb = Framebuffer()
    session = ready(fb)
    session.receive(FULL_REQUEST)
    rects = parse_update(session.receive(request(True, fb.screen) + key(True, ord("k"))))
    assert fb.lines == ["k"]
    assert rects and all(pixels == fb.pixels(r) for r, pixels in rects)


def test_changes_outside_the_requested_area_keep_it_waiting() -> None:
    fb = Framebuffer()
    session = ready(fb)
    session.receive(FULL_REQUEST)
    assert session.receive(request(True, Rect(0, 0, 640, 100)) + key(True, 65)) == b""
    fb.pointer_event(0, 50, 50)
    [(rect, _)] = parse_update(session.pending_update())
    assert rect.clip(Rect(0, 0, 640, 100)) == rect


def test_many_changes_arrive_as_their_bounding_box() -> None:
    fb = Framebuffer()
    session = ready(fb)
    session.receive(FULL_REQUEST + request(True, fb.screen))
    for x in range(0, 30 * (MAX_RECTS + 1), 30):  # each cursor position is one rectangle
        fb.pointer_event(0, x + 3, 100)
    [(rect, pixels)] = parse_update(session.pending_update())
    assert rect.x == 1 and rect.x + rect.w >= 30 * MAX_RECTS
    assert pixels == fb.pixels(rect)


def test_a_client_far_behind_gets_the_requested_area() -> None:
    fb = Framebuffer()
    session = ready(fb)
    session.receive(FULL_REQUEST + request(True, Rect(0, 0, 100, 100)))
    for x in range(300):
        fb.pointer_event(0, x, 150)
    [(rect, _)] = parse_update(session.pending_update())
    assert rect == Rect(0, 0, 100, 100)


# -- other client messages -------------------------------------------------------------
def test_key_and_pointer_events_change_pixels() -> None:
    fb = Framebuffer()
    session = ready(fb)
    before = session.receive(FULL_REQUEST)
    session.receive(key(True, ord("Z")) + key(False, ord("Z")) + pointer(1, 200, 100))
    after = session.receive(FULL_REQUEST)
    assert before != after and len(after) == FULL_UPDATE_SIZE
    assert fb.lines == ["Z"] and fb.keys == 1 and fb.clicks == 1


def test_set_encodings_is_parsed_and_raw_is_still_sent() -> None:
    session = ready()
    encodings = (7, -260, 5, 0, -223, -224)
    message = struct.pack(f">BxH{len(encodings)}i", 2, len(encodings), *encodings)
    assert session.receive(message) == b""
    assert session.encodings == encodings
    assert len(session.receive(FULL_REQUEST)) == FULL_UPDATE_SIZE


@pytest.mark.parametrize("length", [0, 5, -12])  # negative: the extended-clipboard form
def test_client_cut_text_is_read_and_ignored(length: int) -> None:
    session = ready()
    message = struct.pack(">Bxxxi", 6, length) + b"x" * abs(length)
    assert len(session.receive(message + FULL_REQUEST)) == FULL_UPDATE_SIZE


@pytest.mark.parametrize(
    "message",
    [
        struct.pack(">Bxxxi", 6, MAX_CUT_TEXT + 1),
        b"\x96" + b"\x00" * 9,  # EnableContinuousUpdates, never offered
        set_pixel_format(bytes([16, 16, 0, 1, 0, 31, 0, 63, 0, 31, 11, 5, 0, 0, 0, 0])),
        set_pixel_format(bytes([8, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])),
        set_pixel_format(bytes([32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 4, 12, 20, 0, 0, 0])),
    ],
)
def test_unsupported_messages_end_the_session(message: bytes) -> None:
    with pytest.raises(RfbError):
        ready().receive(message)


@pytest.mark.parametrize(
    ("pf", "white_bar", "red_bar"),
    [
        (DEFAULT_PF, b"\xff\xff\xff\x00", b"\x00\x00\xff\x00"),
        (NOVNC_PF, b"\xff\xff\xff\x00", b"\xff\x00\x00\x00"),
        (bytes([32, 24, 1, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0]),
         b"\x00\xff\xff\xff", b"\x00\xff\x00\x00"),
    ],
)  # fmt: skip
def test_set_pixel_format_converts_the_pixels(pf: bytes, white_bar: bytes, red_bar: bytes) -> None:
    session = ready()
    session.receive(set_pixel_format(pf))
    assert session.pixel_format == PixelFormat.unpack(pf)
    white = parse_update(session.receive(request(False, Rect(0, TITLE_BOTTOM, 1, 1))))
    red = parse_update(session.receive(request(False, Rect(5 * 80, TITLE_BOTTOM, 1, 1))))
    assert (white[0][1], red[0][1]) == (white_bar, red_bar)


def test_convert_keeps_the_default_format_as_is() -> None:
    raw = pixel(WHITE) + pixel(BARS[5])
    assert convert(raw, DEFAULT_FORMAT) is raw


# -- chunking ------------------------------------------------------------------------------
TRANSCRIPT = (
    HANDSHAKE
    + set_pixel_format(NOVNC_PF)
    + struct.pack(">BxH3i", 2, 3, 0, -223, -224)
    + FULL_REQUEST
    + struct.pack(">Bxxxi", 6, 3) + b"abc"
    + key(True, ord("a")) + key(False, ord("a"))
    + pointer(1, 10, 60) + pointer(0, 12, 61)
    + request(False, Rect(0, 200, 640, 200))
)  # fmt: skip


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64, len(TRANSCRIPT)])
def test_any_chunking_gives_the_same_answers(chunk: int) -> None:
    whole_fb = Framebuffer()
    whole = RfbServerSession(whole_fb).receive(TRANSCRIPT)
    fb = Framebuffer()
    session = RfbServerSession(fb)
    pieces = [TRANSCRIPT[i : i + chunk] for i in range(0, len(TRANSCRIPT), chunk)]
    assert b"".join(session.receive(piece) for piece in pieces) == whole
    assert fb.lines == whole_fb.lines == ["a"] and fb.clicks == 1
    assert len(whole) == 6 + len(SERVER_INIT) + FULL_UPDATE_SIZE + 16 + 640 * 200 * 4


# -- the TCP server --------------------------------------------------------------------------
async def test_serve_rfb_tcp_speaks_rfb_and_shares_one_screen() -> None:
    live: set[asyncio.StreamWriter] = set()
    server = await serve_rfb_tcp("127.0.0.1", 0, live=live)
    port = server.sockets[0].getsockname()[1]
    first_io = await asyncio.open_connection("127.0.0.1", port)
    second_io = await asyncio.open_connection("127.0.0.1", port)
    try:
        first, second = stream_rfb_client(*first_io), stream_rfb_client(*second_io)
        init = await first.handshake()
        assert (init.width, init.height, init.name) == (640, 400, NAME.decode())
        await second.handshake(shared=True)
        await second.request_update(False, 0, 0, 640, 400)
        [(rect, pixels)] = await second.read_update()
        assert rect == (0, 0, 640, 400) and len(pixels) == 640 * 400 * 4
        await second.request_update(True, 0, 0, 640, 400)
        await first.send(key(True, ord("w")))  # typed on one viewer, seen on the other
        rects = await second.read_update()
        assert rects and all(r[1] >= 200 for r, _ in rects)
        assert len(live) == 2
    finally:
        for _, writer in (first_io, second_io):
            writer.close()
            await writer.wait_closed()
        server.close()
        await server.wait_closed()
    for _ in range(200):
        if not live:
            break
        await asyncio.sleep(0.01)
    assert not live


async def test_serve_rfb_tcp_drops_a_client_that_breaks_the_protocol() -> None:
    server = await serve_rfb_tcp("127.0.0.1", 0)
    reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
    try:
        assert await reader.readexactly(12) == b"RFB 003.008\n"
        writer.write(b"HELLO WORLD!")
        assert await asyncio.wait_for(reader.read(), 10) == b""
    finally:
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()


async def test_real_websockify_in_front_of_serve_rfb_tcp(
    websockify_upstream: WebsockifyUpstream,
) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(
            websockify_upstream.url_for("sim"), protocols=("binary",), max_msg_size=0
        ) as ws,
    ):
        assert ws.protocol == "binary"
        client: RfbClient = ws_rfb_client(ws)
        init = await client.handshake()
        assert (init.width, init.height) == (640, 400)
        await client.request_update(False, 0, 0, 640, 400)
        [(_, pixels)] = await client.read_update()
        assert pixels == websockify_upstream.framebuffer.pixels(Rect(0, 0, 640, 400))
        await client.request_update(True, 0, 0, 640, 400)
        await client.send(pointer(1, 320, 100))
        rects = await client.read_update()
        assert rects and websockify_upstream.framebuffer.clicks == 1


async def test_websockify_refuses_an_unknown_token(
    websockify_upstream: WebsockifyUpstream,
) -> None:
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientError):
            async with http.ws_connect(websockify_upstream.url_for("nope")) as ws:
                await ws_rfb_client(ws).read_exactly(12)
