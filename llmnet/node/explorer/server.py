"""HTTP transport of the explorer: the bundled page and its JSON endpoints, on the node's event loop.

Everything the page needs ships in ./static (no CDN: nodes often have no internet). Errors are JSON
{"error": ...} with 503 when CometBFT cannot be reached and 500 when a query fails.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from aiohttp import web

from llmnet.node.cometrpc import RPCError, RPCUnavailable
from llmnet.node.explorer.data import ExplorerData, QueryFailed

log = logging.getLogger("llmnet.explorer")

STATIC = resources.files("llmnet.node.explorer") / "static"
CONTENT_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(view: Callable[[], Any]) -> Handler:
    """view returns the body, or an awaitable of it (CometBFT reads are async, app queries are not)."""
    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            body = view()
            if inspect.isawaitable(body):
                body = await body
        except RPCUnavailable as exc:
            return web.json_response({"error": str(exc)}, status=503)
        except (RPCError, QueryFailed) as exc:
            log.warning("explorer %s failed: %s", request.path, exc)
            return web.json_response({"error": str(exc)}, status=500)
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    return handle


def _static(name: str) -> Handler:
    data = (STATIC / name).read_bytes()
    content_type = CONTENT_TYPES[name[name.rindex("."):]]

    async def handle(request: web.Request) -> web.StreamResponse:
        return web.Response(body=data, content_type=content_type, charset="utf-8")

    return handle


def make_app(data: ExplorerData) -> web.Application:
    app = web.Application()
    app.router.add_get("/", _static("index.html"))
    for name in ("explorer.js", "explorer.css"):
        app.router.add_get(f"/static/{name}", _static(name))
    app.router.add_get("/api/status", _json(data.status))
    app.router.add_get("/api/blocks", _json(data.blocks))
    app.router.add_get("/api/experts", _json(data.experts))
    app.router.add_get("/api/queries", _json(data.queries))
    app.router.add_get("/api/reputation", _json(data.reputation))
    return app


class Explorer:
    """Serves make_app(data) on host:port (port 0 picks a free one) until stop()."""

    def __init__(self, data: ExplorerData, address: str) -> None:
        self.host, port = address.rsplit(":", 1)
        self.port = int(port)
        self._runner = web.AppRunner(make_app(data), access_log=None)

    async def start(self) -> int:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self.port

    async def stop(self) -> None:
        await self._runner.cleanup()
