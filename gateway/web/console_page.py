"""GET /console/{id}: the noVNC console page, its static files and its security headers."""

from __future__ import annotations

import html
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import cast

from aiohttp import web

import gateway
from gateway import errors
from gateway.config import ServerSettings
from gateway.keys import CONSOLES, SETTINGS
from gateway.web.middlewares import Handler, public
from gateway.web.origin import normalize_origin

log = logging.getLogger("gateway.web.console")

STATIC_DIR = Path(__file__).resolve().parent / "static"
# The page imports only these noVNC subtrees; docs, tests and package metadata stay private.
NOVNC_SUBTREES = ("core", "vendor")

# Relative links keep the page working when a proxy serves the gateway under a path prefix.
PAGE_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Console</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="../static/console.css">
<script type="module" src="../static/console.js"></script>
</head>
<body data-state="loading">
<header id="bar"><span id="status" role="status" aria-live="polite">Loading the console…</span>
</header>
<main id="screen"></main>
</body>
</html>
"""

_ERROR_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="../static/console.css">
</head>
<body class="notice" data-state="refused">
<main><h1>{title}</h1><p>{message}</p><p>{hint}</p></main>
</body>
</html>
"""

_TITLES = {
    404: "This console link is not valid",
    410: "This console link has expired",
    503: "The console is unavailable",
}
_NEW_LINK_HINT = "Open the console again from the portal to get a new link."
_RETRY_HINT = "Try again in a moment."


def default_novnc_dir() -> Path:
    """Where scripts/bootstrap's `npm ci` puts noVNC: node_modules next to the package."""
    return Path(gateway.__file__).resolve().parent.parent / "node_modules" / "@novnc" / "novnc"


def novnc_dir(settings: ServerSettings) -> Path:
    return settings.novnc_dir if settings.novnc_dir is not None else default_novnc_dir()


def novnc_installed(path: Path) -> bool:
    return all((path / sub).is_dir() for sub in NOVNC_SUBTREES) and (path / "core/rfb.js").is_file()


def frame_ancestors(origins: Iterable[str]) -> str:
    """The portal origins that may frame the page; 'none' when no portal is configured."""
    normalized = sorted({o for o in map(normalize_origin, origins) if o is not None})
    return " ".join(normalized) if normalized else "'none'"


def content_security_policy(origins: Iterable[str]) -> str:
    # 'self' in connect-src covers same-origin ws:/wss: in CSP3 browsers (checked by the
    # browser test), so no host has to be configured for the WebSocket.
    directives = {
        "default-src": "'none'",
        "script-src": "'self'",
        "style-src": "'self'",
        "img-src": "'self' data:",  # noVNC draws JPEG rects and cursors from data: URLs
        "connect-src": "'self'",
        "base-uri": "'none'",
        "form-action": "'none'",
        "frame-ancestors": frame_ancestors(origins),
    }
    return "; ".join(f"{name} {value}" for name, value in directives.items())


def page_headers(settings: ServerSettings) -> dict[str, str]:
    return {
        "Content-Security-Policy": content_security_policy(settings.allowed_origins),
        "Referrer-Policy": "no-referrer",  # the page URL is the capability
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
    }


def error_page(status: int, message: str) -> str:
    title = _TITLES.get(status, "The console cannot be opened")
    hint = _RETRY_HINT if status >= 500 or status == 429 else _NEW_LINK_HINT
    return _ERROR_HTML.format(
        title=html.escape(title), message=html.escape(message), hint=html.escape(hint)
    )


def _html(status: int, body: str, headers: Mapping[str, str]) -> web.Response:
    return web.Response(
        status=status, text=body, content_type="text/html", charset="utf-8", headers=headers
    )


def _console_page(installed: bool, headers: Mapping[str, str]) -> Handler:
    @public  # the unguessable id in the URL is the credential
    async def console_page(request: web.Request) -> web.StreamResponse:
        consoles = request.app[CONSOLES]
        try:
            record = await consoles.lookup(request.match_info["console_id"])
            consoles.ensure_live(record)
        except errors.GatewayError as exc:
            # A person follows this link, so refusals are pages, not the API's JSON.
            return _html(
                exc.status, error_page(exc.status, exc.message), {**exc.headers, **headers}
            )
        if not installed:
            message = "The console client (noVNC) is not installed on this gateway."
            return _html(503, error_page(503, message), headers)
        return _html(200, PAGE_HTML, headers)

    return console_page


class PublicStaticResource(web.StaticResource):
    """add_static's resource, exempt from JWT auth and served with nosniff."""

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            response = await super()._handle(request)
        except web.HTTPForbidden:
            # aiohttp's answer for directories and files outside the root; whether such a
            # path exists is nobody's business.
            raise web.HTTPNotFound() from None
        response.headers["X-Content-Type-Options"] = "nosniff"
        # Revalidated (ETag/Last-Modified) so an upgraded noVNC is picked up at once.
        response.headers["Cache-Control"] = "no-cache"
        return response


# The auth middleware reads the mark through the bound method the route holds; public()
# only tags the function object, so the cast to a one-argument handler is harmless.
public(cast(Handler, PublicStaticResource._handle))


def _add_static(app: web.Application, prefix: str, directory: Path) -> None:
    resource = PublicStaticResource(prefix, directory, show_index=False, follow_symlinks=False)
    app.router.register_resource(resource)


def add_routes(app: web.Application) -> None:
    settings = app[SETTINGS].server
    novnc = novnc_dir(settings)
    installed = novnc_installed(novnc)
    if installed:
        for sub in NOVNC_SUBTREES:
            _add_static(app, f"/static/novnc/{sub}", novnc / sub)
    else:

        async def warn(_: web.Application) -> None:
            log.warning(
                "noVNC is not installed at %s (run scripts/bootstrap or set server.novnc_dir): "
                "console pages answer 503",
                novnc,
            )

        app.on_startup.append(warn)
    _add_static(app, "/static", STATIC_DIR)
    app.router.add_get("/console/{console_id}", _console_page(installed, page_headers(settings)))
