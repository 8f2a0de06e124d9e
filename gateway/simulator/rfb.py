"""An RFB 3.8 server (RFC 6143) for the simulated console: sans-io session, asyncio drivers."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import re
import struct
from typing import Protocol

from gateway.simulator.framebuffer import Framebuffer, Rect
from gateway.simulator.pixels import DEFAULT_FORMAT, PixelFormat, RfbError, convert
from gateway.tasks import spawn

log = logging.getLogger(__name__)

VERSION_3_8 = b"RFB 003.008\n"
SECURITY_NONE = 1
ENCODING_RAW = 0
DEFAULT_NAME = "console-gateway simulator"
MAX_CUT_TEXT = 1 << 20  # a bigger clipboard is treated as an attack, not buffered
MAX_RECTS = 16  # more damaged rectangles than this are sent as their bounding box
_VERSION_RE = re.compile(rb"RFB (\d{3})\.(\d{3})\n")
_FIXED_LENGTHS = {0: 20, 3: 10, 4: 8, 5: 6}  # SetPixelFormat, UpdateRequest, Key, Pointer


class _State(enum.Enum):
    VERSION = enum.auto()
    SECURITY = enum.auto()
    CLIENT_INIT = enum.auto()
    NORMAL = enum.auto()


class RfbServerSession:
    """One client's protocol state: feed it bytes in any chunks, send what it returns."""

    def __init__(self, framebuffer: Framebuffer, *, name: str = DEFAULT_NAME) -> None:
        self.framebuffer, self.name = framebuffer, name
        self.pixel_format = DEFAULT_FORMAT
        self.encodings: tuple[int, ...] = ()
        self.minor_version = 0
        self.shared: bool | None = None
        self.closed = False  # after a refusal has been returned; the caller closes
        self._state = _State.VERSION
        self._buffer = bytearray()
        self._seen = -1  # the framebuffer version the client has
        self._wanted: Rect | None = None  # an incremental request waiting for a change

    def greeting(self) -> bytes:
        return VERSION_3_8

    def receive(self, data: bytes) -> bytes:
        """Consume client bytes; the bytes to answer with (maybe none). Raises RfbError."""
        self._buffer += data
        out = bytearray()
        while not self.closed and (reply := self._step()) is not None:
            out += reply
        return bytes(out + self.pending_update())

    def pending_update(self) -> bytes:
        """A FramebufferUpdate answering a waiting incremental request, if anything changed."""
        if self._wanted is None or self.closed:
            return b""
        changes = self.framebuffer.changes_since(self._seen)
        if changes == []:
            return b""
        rects = [self._wanted] if changes is None else _coalesce(changes, self._wanted)
        self._seen = self.framebuffer.version
        if not rects:
            return b""  # changes elsewhere only; keep waiting
        self._wanted = None
        return self._update(rects)

    def _step(self) -> bytes | None:
        if self._state is _State.VERSION:
            return self._on_version()
        if self._state is _State.SECURITY:
            return self._on_security()
        if self._state is _State.CLIENT_INIT:
            return self._on_client_init()
        return self._on_message()

    def _take(self, size: int | None) -> bytes | None:
        if size is None or len(self._buffer) < size:
            return None
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def _on_version(self) -> bytes | None:
        data = self._take(12)
        if data is None:
            return None
        match = _VERSION_RE.fullmatch(data)
        if match is None or int(match.group(1)) < 3:
            raise RfbError("the client did not send an RFB protocol version")
        major, minor = int(match.group(1)), int(match.group(2))
        # RFC 6143 7.1.1: later versions speak 3.8; 3.3 to 3.6 are all 3.3.
        self.minor_version = 8 if (major, minor) >= (3, 8) else 7 if minor == 7 else 3
        if self.minor_version == 3:
            self._state = _State.CLIENT_INIT  # 3.3: the server decides the security type
            return struct.pack(">I", SECURITY_NONE)
        self._state = _State.SECURITY
        return bytes((1, SECURITY_NONE))

    def _on_security(self) -> bytes | None:
        data = self._take(1)
        if data is None:
            return None
        if data[0] != SECURITY_NONE:
            self.closed = True
            reason = b"security type not offered"
            failed = struct.pack(">II", 1, len(reason)) + reason
            return failed if self.minor_version == 8 else b""
        self._state = _State.CLIENT_INIT
        return struct.pack(">I", 0) if self.minor_version == 8 else b""  # SecurityResult OK

    def _on_client_init(self) -> bytes | None:
        data = self._take(1)
        if data is None:
            return None
        self.shared = bool(data[0])  # every client shares the screen, whatever it asks
        self._state = _State.NORMAL
        name = self.name.encode()
        size = struct.pack(">HH", self.framebuffer.width, self.framebuffer.height)
        return size + DEFAULT_FORMAT.pack() + struct.pack(">I", len(name)) + name

    def _on_message(self) -> bytes | None:
        data = self._take(self._message_length())
        if data is None:
            return None
        kind = data[0]
        if kind == 0:
            self.pixel_format = PixelFormat.unpack(data[4:20])
        elif kind == 2:
            self.encodings = struct.unpack(f">{(len(data) - 4) // 4}i", data[4:])
        elif kind == 3:
            incremental, *rect = struct.unpack(">BHHHH", data[1:10])
            return self._on_update_request(bool(incremental), Rect(*rect))
        elif kind == 4:
            down, keysym = struct.unpack(">B2xI", data[1:8])
            self.framebuffer.key_event(bool(down), keysym)
        elif kind == 5:
            self.framebuffer.pointer_event(*struct.unpack(">BHH", data[1:6]))
        return b""  # ClientCutText: read and ignored

    def _message_length(self) -> int | None:
        if not self._buffer:
            return None
        kind = self._buffer[0]
        if kind in _FIXED_LENGTHS:
            return _FIXED_LENGTHS[kind]
        if kind == 2:  # SetEncodings: a count of 32-bit encodings follows
            if len(self._buffer) < 4:
                return None
            count: int = struct.unpack(">H", self._buffer[2:4])[0]
            return 4 + 4 * count
        if kind == 6:  # ClientCutText; a negative length is the extended-clipboard form
            if len(self._buffer) < 8:
                return None
            size = abs(int(struct.unpack(">i", self._buffer[4:8])[0]))
            if size > MAX_CUT_TEXT:
                raise RfbError("client cut text too large")
            return 8 + size
        raise RfbError(f"unsupported client message type {kind}")

    def _on_update_request(self, incremental: bool, rect: Rect) -> bytes:
        area = rect.clip(self.framebuffer.screen)
        if area is None:
            return b""
        if incremental:
            self._wanted = area
            return b""  # answered by pending_update once something changed
        if area == self.framebuffer.screen:
            self._seen = self.framebuffer.version
        self._wanted = None
        return self._update([area])

    def _update(self, rects: list[Rect]) -> bytes:
        parts = [struct.pack(">BxH", 0, len(rects))]
        for rect in rects:
            parts.append(struct.pack(">HHHHi", *rect, ENCODING_RAW))
            parts.append(convert(self.framebuffer.pixels(rect), self.pixel_format))
        return b"".join(parts)


def _coalesce(changes: list[Rect], area: Rect) -> list[Rect]:
    clipped = [rect for change in changes if (rect := change.clip(area)) is not None]
    unique = list(dict.fromkeys(clipped))
    if len(unique) <= MAX_RECTS:
        return unique
    box = unique[0]
    for rect in unique[1:]:
        box = box.union(rect)
    return [box]


class ByteStream(Protocol):
    async def read(self) -> bytes | None: ...  # None once the client is gone

    async def write(self, data: bytes) -> None: ...


async def run_session(session: RfbServerSession, stream: ByteStream) -> None:
    """Serve one client until it leaves; RfbError propagates when it breaks the protocol."""
    lock = asyncio.Lock()  # one writer at a time keeps every message whole and in order
    changed = asyncio.Event()
    session.framebuffer.subscribe(changed.set)
    pusher = spawn(_push_updates(session, stream, lock, changed), name="rfb-push-updates")
    try:
        with contextlib.suppress(ConnectionError):
            await stream.write(session.greeting())
            while not session.closed and (data := await stream.read()) is not None:
                async with lock:
                    reply = session.receive(data)
                    if reply:
                        await stream.write(reply)
    finally:
        session.framebuffer.unsubscribe(changed.set)
        pusher.cancel()
        await asyncio.wait({pusher})


async def _push_updates(
    session: RfbServerSession, stream: ByteStream, lock: asyncio.Lock, changed: asyncio.Event
) -> None:
    """Answers a waiting incremental request when the screen changes (e.g. another viewer)."""
    with contextlib.suppress(ConnectionError):
        while True:
            await changed.wait()
            changed.clear()
            async with lock:
                update = session.pending_update()
                if update:
                    await stream.write(update)


class _TcpStream:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer

    async def read(self) -> bytes | None:
        return await self._reader.read(65536) or None

    async def write(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()


async def serve_rfb_tcp(
    host: str,
    port: int,
    *,
    framebuffer: Framebuffer | None = None,
    live: set[asyncio.StreamWriter] | None = None,
) -> asyncio.Server:
    """A plain TCP VNC server on one shared screen; `live` collects open connections."""
    screen = framebuffer or Framebuffer()
    connections: set[asyncio.StreamWriter] = set() if live is None else live

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.add(writer)
        try:
            await run_session(RfbServerSession(screen), _TcpStream(reader, writer))
        except RfbError as exc:
            log.info("simulated console closed: %s", exc)
        finally:
            connections.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    return await asyncio.start_server(handle, host, port)
