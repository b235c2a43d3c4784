"""Auth queries: an account record."""

from __future__ import annotations

from abci_app.context import Ctx
from abci_app.errors import ErrNotFound
from abci_app.queries import Route, Routes, request_address
from abci_app.x.auth.keeper import AuthKeeper
from wire.llmnet.query.v1 import query_pb2 as q


class Querier:
    def __init__(self, keeper: AuthKeeper) -> None:
        self.keeper = keeper

    def routes(self) -> Routes:
        return {"Account": Route(q.AccountRequest, q.AccountResponse, self.account)}

    def account(self, ctx: Ctx, req: q.AccountRequest) -> q.AccountResponse:
        address = request_address(req.address)
        if not self.keeper.has_account(ctx, address):
            raise ErrNotFound(f"account {req.address} has never signed a transaction")
        return q.AccountResponse(account=self.keeper.account(ctx, address), height=ctx.env.height)
