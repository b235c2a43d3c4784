"""Typed state queries, addressed by their gRPC full method name.

The node's gRPC QueryService and ABCI Query share this router, so both answer identically:
an ABCI Query with path "/llmnet.query.v1.QueryService/Balance" and a serialized
BalanceRequest as data returns a serialized BalanceResponse. Each module's query.py lists the
methods it answers; the app adds them all here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError, Message

from abci_app.context import Ctx
from abci_app.crypto import check_address
from abci_app.errors import AppError, ErrInvalidRequest, ErrUnknownPath

QUERY_SERVICE = "llmnet.query.v1.QueryService"


@dataclass(frozen=True)
class Route:
    request: type[Message]
    response: type[Message]
    handle: Callable[[Ctx, Any], Message]


Routes = Mapping[str, Route]
"""QueryService method name -> its route, as a module's query.py returns them."""


def query_path(method: str) -> str:
    return f"/{QUERY_SERVICE}/{method}"


class QueryRouter:
    def __init__(self) -> None:
        self._routes: dict[str, Route] = {}

    def add_all(self, routes: Routes) -> None:
        for method, route in routes.items():
            path = query_path(method)
            if path in self._routes:
                raise ValueError(f"query path {path} registered twice")
            self._routes[path] = route

    def run(self, ctx: Ctx, path: str, data: bytes) -> bytes:
        """Answer one query. Raises ErrUnknownPath, ErrInvalidRequest or a handler's AppError."""
        route = self._routes.get(path)
        if route is None:
            raise ErrUnknownPath(f"no query at path {path!r}")
        try:
            request = route.request.FromString(data)
        except (DecodeError, RuntimeError) as exc:
            raise ErrInvalidRequest(f"cannot decode {route.request.DESCRIPTOR.full_name}: {exc}") from None
        return route.handle(ctx, request).SerializeToString()


def request_address(text: str) -> bytes:
    """A request's address field, or ErrInvalidRequest saying what is wrong with it."""
    try:
        return check_address("address", text)
    except AppError as exc:
        raise ErrInvalidRequest(str(exc)) from None
