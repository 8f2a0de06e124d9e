"""A nova-novncproxy look-alike: accept the WebSocket, check token and Origin, then speak RFB."""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from aiohttp import WSCloseCode, WSMsgType, web

from gateway.simulator.framebuffer import Framebuffer
from gateway.simulator.pixels import RfbError
from gateway.simulator.rfb import RfbServerSession, run_session
from gateway.simulator.state import ComputeSimulator, ConsoleProxyState, SimServer

log = logging.getLogger(__name__)

CONSOLE_SIM = web.AppKey("console_sim", ComputeSimulator)
SCREENS = web.AppKey("console_screens", dict[str, Framebuffer])  # server id -> its screen
SOCKETS: web.AppKey[set[web.WebSocketResponse]] = web.AppKey("console_sockets")
MAX_CLIENT_MESSAGE = 2 * 1024 * 1024  # the largest RFB client message we accept is 1 MiB


def create_console_proxy_app(sim: ComputeSimulator) -> web.Application:
    app = web.Application()
    app[CONSOLE_SIM] = sim
    app[SCREENS] = {}
    app[SOCKETS] = set()
    app.router.add_get("/{tail:.*}", handle_console)  # like nova, any path; only the token counts
    app.on_shutdown.append(_close_sockets)
    return app


def origin_allowed(origin: str | None, host: str | None, scheme: str) -> bool:
    """nova's check: a sent Origin must name the Host header's host and the proxy's scheme."""
    if origin is None:
        return True
    parts = urlsplit(origin)
    expected = urlsplit(f"//{host}").hostname if host else None
    return expected is not None and parts.hostname == expected and parts.scheme == scheme


def request_token(request: web.Request) -> str | None:
    """The `token` query parameter, else the `token` cookie noVNC's pages set."""
    return request.query.get("token") or request.cookies.get("token") or None


async def handle_console(request: web.Request) -> web.StreamResponse:
    sim = request.app[CONSOLE_SIM]
    ws = web.WebSocketResponse(protocols=("binary",), max_msg_size=MAX_CLIENT_MESSAGE)
    if not ws.can_prepare(request).ok:
        return web.Response(status=400, text="this is a WebSocket endpoint\n")
    # nova answers 101 before it looks at the token; a refusal is a bare close afterwards.
    await ws.prepare(request)
    state = sim.console_proxy
    state.upgrades += 1
    state.origins.append(request.headers.get("Origin"))
    state.subprotocols.append(ws.ws_protocol)
    server = _admitted(request, sim)
    if server is None:
        state.refused += 1
        _drop(request)
        return ws
    await _serve(request, ws, server)
    return ws


def _admitted(request: web.Request, sim: ComputeSimulator) -> SimServer | None:
    scheme = urlsplit(sim.console_base_url).scheme
    if not origin_allowed(request.headers.get("Origin"), request.headers.get("Host"), scheme):
        log.info("simulated console refused: origin not allowed")
        return None
    token = request_token(request)
    server = None if token is None else sim.check_console_token(token)
    if server is None or sim.console_proxy.refuse_all_tokens:
        log.info("simulated console refused: token unknown or expired")
        return None
    return server


def _drop(request: web.Request) -> None:
    """Close the TCP connection without a WebSocket close frame, as nova does."""
    if request.transport is not None:
        request.transport.close()  # close, not abort: the 101 already written must get out


async def _serve(request: web.Request, ws: web.WebSocketResponse, server: SimServer) -> None:
    sim, screens, sockets = request.app[CONSOLE_SIM], request.app[SCREENS], request.app[SOCKETS]
    screen = screens.get(server.server_id)
    if screen is None:
        screen = screens[server.server_id] = Framebuffer(title=f"SIM {server.server_id}")
    stream = _WebSocketStream(request, ws, sim.console_proxy)
    sim.console_proxy.total += 1
    sim.console_proxy.live += 1
    sockets.add(ws)
    try:
        await run_session(RfbServerSession(screen), stream)
    except RfbError as exc:
        log.info("simulated console closed: %s", exc)
        await ws.close(code=WSCloseCode.PROTOCOL_ERROR, message=b"RFB protocol error")
    finally:
        sim.console_proxy.live -= 1
        sockets.discard(ws)
    if not stream.dropped:
        await ws.close()


class _WebSocketStream:
    """RFB bytes over binary frames, with the close-after-N-bytes fault."""

    def __init__(
        self, request: web.Request, ws: web.WebSocketResponse, state: ConsoleProxyState
    ) -> None:
        self._request, self._ws = request, ws
        self._budget = state.close_after_bytes
        self.dropped = False

    async def read(self) -> bytes | None:
        while True:
            msg = await self._ws.receive()
            if msg.type is WSMsgType.BINARY:
                if msg.data:
                    return bytes(msg.data)
            elif msg.type is WSMsgType.TEXT:
                raise RfbError("a text frame carries no RFB")
            else:
                return None  # closed, closing or broken

    async def write(self, data: bytes) -> None:
        if self._budget is None:
            await self._ws.send_bytes(data)
            return
        chunk = data[: self._budget]
        if chunk:
            await self._ws.send_bytes(chunk)
        self._budget -= len(chunk)
        if self._budget <= 0:
            self.dropped = True
            _drop(self._request)
            raise ConnectionResetError("fault: close_after_bytes reached")


async def _close_sockets(app: web.Application) -> None:
    sockets = app[SOCKETS]
    for ws in list(sockets):  # a copy: each handler removes its socket as it ends
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")
