"""Test helpers: an RFB client over any byte transport, and a real websockify upstream."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import ClientWebSocketResponse, WSMsgType

from gateway.simulator.framebuffer import Framebuffer

TIMEOUT_S = 10.0
SERVER_INIT = struct.Struct(">HH16sI")
UPDATE_HEADER = struct.Struct(">BxH")
RECT_HEADER = struct.Struct(">HHHHi")
_TOKEN_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass
class ServerInit:
    width: int
    height: int
    pixel_format: bytes
    name: str


@dataclass
class RfbClient:
    """The client side of RFB 3.8 over `read_exactly`/`send` callables (a socket or a WebSocket)."""

    read_exactly: Callable[[int], Awaitable[bytes]]
    send: Callable[[bytes], Awaitable[None]]

    async def handshake(self, shared: bool = True) -> ServerInit:
        assert await self.read_exactly(12) == b"RFB 003.008\n"
        await self.send(b"RFB 003.008\n")
        assert await self.read_exactly(2) == b"\x01\x01"  # one security type: None
        await self.send(b"\x01")
        assert await self.read_exactly(4) == b"\x00\x00\x00\x00"  # SecurityResult OK
        await self.send(bytes((shared,)))
        width, height, pixel_format, name_length = SERVER_INIT.unpack(
            await self.read_exactly(SERVER_INIT.size)
        )
        name = (await self.read_exactly(name_length)).decode()
        return ServerInit(width, height, pixel_format, name)

    async def request_update(self, incremental: bool, x: int, y: int, w: int, h: int) -> None:
        await self.send(struct.pack(">BBHHHH", 3, incremental, x, y, w, h))

    async def read_update(self) -> list[tuple[tuple[int, int, int, int], bytes]]:
        """One FramebufferUpdate of Raw rectangles at 32 bpp: [((x, y, w, h), pixels)]."""
        kind, count = UPDATE_HEADER.unpack(await self.read_exactly(UPDATE_HEADER.size))
        assert kind == 0
        rects = []
        for _ in range(count):
            x, y, w, h, encoding = RECT_HEADER.unpack(await self.read_exactly(RECT_HEADER.size))
            assert encoding == 0
            rects.append(((x, y, w, h), await self.read_exactly(w * h * 4)))
        return rects


def ws_rfb_client(ws: ClientWebSocketResponse) -> RfbClient:
    """An RfbClient over binary WebSocket frames, however the server split its bytes."""
    buffer = bytearray()

    async def read_exactly(size: int) -> bytes:
        while len(buffer) < size:
            msg = await asyncio.wait_for(ws.receive(), TIMEOUT_S)
            if msg.type is not WSMsgType.BINARY:
                raise ConnectionError(f"console closed: {msg.type!r} code {ws.close_code}")
            buffer.extend(msg.data)
        data = bytes(buffer[:size])
        del buffer[:size]
        return data

    return RfbClient(read_exactly, ws.send_bytes)


def stream_rfb_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> RfbClient:
    async def read_exactly(size: int) -> bytes:
        return await asyncio.wait_for(reader.readexactly(size), TIMEOUT_S)

    async def send(data: bytes) -> None:
        writer.write(data)
        await writer.drain()

    return RfbClient(read_exactly, send)


@dataclass
class WebsockifyUpstream:
    """Real websockify (TokenFile plugin) in front of serve_rfb_tcp, both on 127.0.0.1."""

    port: int  # websockify's
    vnc_port: int  # serve_rfb_tcp's
    token_dir: Path  # TokenFile source: one `<name>: host:port` file per token
    framebuffer: Framebuffer  # the one screen every token opens
    live: set[asyncio.StreamWriter] = field(default_factory=set)  # open VNC connections
    default_token: str = "sim"

    def add_token(self, name: str, port: int | None = None) -> None:
        """Make `name` a valid token, for the simulated VNC server unless another port."""
        if not _TOKEN_NAME.match(name):
            raise ValueError("token names here are [A-Za-z0-9_-]{1,64}")
        target = port if port is not None else self.vnc_port
        (self.token_dir / f"{name}.conf").write_text(f"{name}: 127.0.0.1:{target}\n")

    def remove_token(self, name: str) -> None:
        (self.token_dir / f"{name}.conf").unlink(missing_ok=True)

    def url_for(self, token_name: str) -> str:
        """The WebSocket URL a client (or the gateway) connects to."""
        return f"ws://127.0.0.1:{self.port}/websockify?token={token_name}"

    def console_url_for(self, token_name: str) -> str:
        """The noVNC page URL a compute API would hand out for this token."""
        return f"http://127.0.0.1:{self.port}/vnc_auto.html?token={token_name}"


async def wait_listening(port: int, proc: asyncio.subprocess.Process, log: Path) -> None:
    deadline = asyncio.get_running_loop().time() + TIMEOUT_S
    while asyncio.get_running_loop().time() < deadline:
        if proc.returncode is not None:
            raise RuntimeError(f"websockify exited: {_tail(log)}")
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            await writer.wait_closed()
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"websockify did not listen on {port}: {_tail(log)}")


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-2000:]


async def stop_process_group(proc: asyncio.subprocess.Process) -> None:
    # websockify forks a child per connection; they share the new session's process group.
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 5)
            return
