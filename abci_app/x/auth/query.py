"""Auth queries: an account record."""

from __future__ import annotations

from collections.abc import Callable

from abci_app.context import Ctx
from abci_app.errors import ErrNotFound
from abci_app.queries import Route, Routes, request_address
from abci_app.x.auth.keeper import AuthKeeper
from wire.llmnet.query.v1 import query_pb2 as q


class Querier:
    def __init__(self, keeper: AuthKeeper, holds_funds: Callable[[Ctx, bytes], bool]) -> None:
        self.keeper = keeper
        self.holds_funds = holds_funds

    def routes(self) -> Routes:
        return {"Account": Route(q.AccountRequest, q.AccountResponse, self.account)}

    def account(self, ctx: Ctx, req: q.AccountRequest) -> q.AccountResponse:
        address = request_address(req.address)
        # As in Cosmos, an address that received funds has an account (at sequence 0) before it ever signs.
        if not self.keeper.has_account(ctx, address) and not self.holds_funds(ctx, address):
            raise ErrNotFound(f"no account {req.address}: it holds nothing and has never signed")
        return q.AccountResponse(account=self.keeper.account(ctx, address), height=ctx.env.height)
