"""HTTP transport of the explorer: the bundled page and its JSON endpoints, on the node's event loop.

Everything the page needs ships in ./static (no CDN: nodes often have no internet). Errors are JSON
{"error": ...}: 400 for input that cannot be read (a bad paging parameter, an unparseable search), 404
for a search that names nothing, 503 when CometBFT cannot be reached and 500 when a query fails.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from importlib import resources
from typing import Any

from aiohttp import web

from llmnet.node.cometrpc import RPCError, RPCUnavailable
from llmnet.node.explorer.data import (
    BLOCKS,
    MAX_BLOCKS,
    MAX_QUERIES,
    MAX_QUERY_ID,
    QUERIES,
    BadRequest,
    ExplorerData,
    NotFound,
    QueryFailed,
)

log = logging.getLogger("llmnet.explorer")

STATIC = resources.files("llmnet.node.explorer") / "static"
CONTENT_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Params = Mapping[str, str]
MAX_HEIGHT = 2**63 - 1  # CometBFT heights are int64
NUMBER = re.compile(r"[0-9]{1,20}", re.ASCII)  # bounded: int() of a huge digit string is slow, then refused


def _json(view: Callable[[Params], Any]) -> Handler:
    """view takes the URL's query parameters and returns the body, or an awaitable of it (CometBFT
    reads are async, app queries are not)."""
    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            body = view(request.query)
            if inspect.isawaitable(body):
                body = await body
        except BadRequest as exc:
            return web.json_response({"error": str(exc)}, status=400)
        except NotFound as exc:
            return web.json_response({"error": str(exc)}, status=404)
        except RPCUnavailable as exc:
            return web.json_response({"error": str(exc)}, status=503)
        except (RPCError, QueryFailed) as exc:
            log.warning("explorer %s failed: %s", request.path, exc)
            return web.json_response({"error": str(exc)}, status=500)
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    return handle


def _number(params: Params, name: str, high: int) -> int | None:
    """params[name] as a whole number in 1..high, None when absent; BadRequest otherwise."""
    raw = params.get(name)
    if raw is None:
        return None
    if not NUMBER.fullmatch(raw) or not 1 <= int(raw) <= high:
        raise BadRequest(f"{name} must be a whole number from 1 to {high}, got {raw!r}")
    return int(raw)


def _limit(params: Params, high: int, default: int) -> int:
    return _number(params, "limit", high) or default


def _routes(data: ExplorerData) -> dict[str, Callable[[Params], Any]]:
    return {
        "status": lambda p: data.status(),
        "blocks": lambda p: data.blocks(_number(p, "before", MAX_HEIGHT), _limit(p, MAX_BLOCKS, BLOCKS)),
        "experts": lambda p: data.experts(),
        "validators": lambda p: data.validators(),
        "queries": lambda p: data.queries(_number(p, "before", MAX_QUERY_ID), _limit(p, MAX_QUERIES, QUERIES)),
        "reputation": lambda p: data.reputation(),
        "search": lambda p: data.search(p.get("q", "")),
    }


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
    for name, view in _routes(data).items():
        app.router.add_get(f"/api/{name}", _json(view))
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
