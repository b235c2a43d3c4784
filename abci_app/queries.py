"""Typed state queries, addressed by their gRPC full method name.

The node's gRPC QueryService and ABCI Query share this router, so both answer identically:
an ABCI Query with path "/llmnet.query.v1.QueryService/Balance" and a serialized
BalanceRequest as data returns a serialized BalanceResponse.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError, Message

from abci_app.context import Ctx
from abci_app.errors import ErrInvalidRequest, ErrNotFound, ErrUnknownPath
from abci_app.x.auth.keeper import AuthKeeper
from abci_app.x.bank.keeper import BankKeeper
from abci_app.x.bank.types import check_address
from abci_app.x.experts.keeper import ExpertsKeeper
from abci_app.x.inference.keeper import InferenceKeeper
from wire.llmnet.query.v1 import query_pb2

QUERY_SERVICE = "llmnet.query.v1.QueryService"


@dataclass(frozen=True)
class Route:
    request: type[Message]
    response: type[Message]
    handle: Callable[[Ctx, Any], Message]


class QueryRouter:
    def __init__(self) -> None:
        self._routes: dict[str, Route] = {}

    def add(self, service: str, method: str, route: Route) -> None:
        path = f"/{service}/{method}"
        if path in self._routes:
            raise ValueError(f"query path {path} registered twice")
        self._routes[path] = route

    def paths(self) -> list[str]:
        return sorted(self._routes)

    def route(self, path: str) -> Route | None:
        return self._routes.get(path)

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
    except Exception as exc:  # noqa: BLE001 - any address defect is the caller's bad input
        raise ErrInvalidRequest(str(exc)) from None


def register_core(router: QueryRouter, auth: AuthKeeper, bank: BankKeeper, experts: ExpertsKeeper,
                  inference: InferenceKeeper) -> None:
    def account(ctx: Ctx, req: query_pb2.AccountRequest) -> query_pb2.AccountResponse:
        address = request_address(req.address)
        if not auth.has_account(ctx, address):
            raise ErrNotFound(f"account {req.address} has never signed a transaction")
        return query_pb2.AccountResponse(account=auth.account(ctx, address), height=ctx.env.height)

    def balance(ctx: Ctx, req: query_pb2.BalanceRequest) -> query_pb2.BalanceResponse:
        amount = bank.balance(ctx, request_address(req.address))
        return query_pb2.BalanceResponse(denom=bank.denom(ctx), amount=amount, height=ctx.env.height)

    def supply(ctx: Ctx, req: query_pb2.SupplyRequest) -> query_pb2.SupplyResponse:
        return query_pb2.SupplyResponse(denom=bank.denom(ctx), amount=bank.supply(ctx), height=ctx.env.height)

    def params(ctx: Ctx, req: query_pb2.ParamsRequest) -> query_pb2.ParamsResponse:
        return query_pb2.ParamsResponse(auth=auth.params(ctx), bank=bank.params(ctx), experts=experts.params(ctx),
                                        inference=inference.params(ctx), height=ctx.env.height)

    for name, req_cls, resp_cls, fn in (
        ("Account", query_pb2.AccountRequest, query_pb2.AccountResponse, account),
        ("Balance", query_pb2.BalanceRequest, query_pb2.BalanceResponse, balance),
        ("Supply", query_pb2.SupplyRequest, query_pb2.SupplyResponse, supply),
        ("Params", query_pb2.ParamsRequest, query_pb2.ParamsResponse, params),
    ):
        router.add(QUERY_SERVICE, name, Route(req_cls, resp_cls, fn))
