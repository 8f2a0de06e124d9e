"""Idle console holder: a separate process that opens and keeps thousands of console WebSockets.

`python -m bench.relay_idle --urls-file F` reads commands on stdin, one a line:
`open N` opens connections (URL i is urls[i % len(urls)]) until N are live, each waiting for
its greeting, then answers `opened N SECONDS` (or `failed N REASON`); EOF closes everything and
exits. Each connection keeps a reader so the gateway's pings are answered, as a browser would.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path

import aiohttp
from aiohttp import WSMsgType

from bench.relay_backends import raise_nofile

CONCURRENCY = 32
_TIMEOUT = aiohttp.ClientWSTimeout(ws_receive=None, ws_close=2.0)


class Holder:
    def __init__(self, http: aiohttp.ClientSession, urls: list[str]) -> None:
        self._http, self._urls = http, urls
        self.sockets: list[aiohttp.ClientWebSocketResponse] = []
        self.readers: list[asyncio.Task[None]] = []
        self.lost = 0

    async def _one(self, url: str, gate: asyncio.Semaphore) -> None:
        async with gate:
            ws = await self._http.ws_connect(
                url, protocols=("binary",), max_msg_size=0, timeout=_TIMEOUT
            )
            msg = await ws.receive(timeout=30)
            if msg.type is not WSMsgType.BINARY:
                raise RuntimeError(f"no greeting: {msg.type.name} {msg.data} {msg.extra}")
        self.sockets.append(ws)
        self.readers.append(asyncio.ensure_future(self._keep(ws)))

    async def _keep(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for _ in ws:  # answers pings; an idle console receives nothing else
            pass
        self.lost += 1

    async def open_until(self, total: int) -> None:
        gate = asyncio.Semaphore(CONCURRENCY)
        start = len(self.sockets)
        await asyncio.gather(
            *(self._one(self._urls[i % len(self._urls)], gate) for i in range(start, total))
        )

    async def close(self) -> None:
        for reader in self.readers:
            reader.cancel()

        async def one(ws: aiohttp.ClientWebSocketResponse) -> None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await ws.close()

        gate = asyncio.Semaphore(256)

        async def gated(ws: aiohttp.ClientWebSocketResponse) -> None:
            async with gate:
                await one(ws)

        await asyncio.gather(*(gated(ws) for ws in self.sockets))


async def serve(urls: list[str]) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        holder = Holder(http, urls)
        try:
            while line := (await reader.readline()).decode().split():
                if line[0] != "open":
                    continue
                total = int(line[1])
                started = time.monotonic()
                try:
                    await holder.open_until(total)
                except Exception as exc:
                    print(f"failed {len(holder.sockets)} {type(exc).__name__}: {exc}", flush=True)
                    continue
                elapsed = time.monotonic() - started
                print(f"opened {len(holder.sockets)} {elapsed:.3f} lost={holder.lost}", flush=True)
        finally:
            await holder.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--urls-file", required=True)
    args = parser.parse_args()
    raise_nofile()
    asyncio.run(serve(json.loads(Path(args.urls_file).read_text())))


if __name__ == "__main__":
    main()
