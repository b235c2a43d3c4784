"""Bank queries: one balance, the total supply."""

from __future__ import annotations

from abci_app.context import Ctx
from abci_app.queries import Route, Routes, request_address
from abci_app.x.bank.keeper import BankKeeper
from wire.llmnet.query.v1 import query_pb2 as q


class Querier:
    def __init__(self, keeper: BankKeeper) -> None:
        self.keeper = keeper

    def routes(self) -> Routes:
        return {
            "Balance": Route(q.BalanceRequest, q.BalanceResponse, self.balance),
            "Supply": Route(q.SupplyRequest, q.SupplyResponse, self.supply),
        }

    def balance(self, ctx: Ctx, req: q.BalanceRequest) -> q.BalanceResponse:
        amount = self.keeper.balance(ctx, request_address(req.address))
        return q.BalanceResponse(denom=self.keeper.denom(ctx), amount=amount, height=ctx.env.height)

    def supply(self, ctx: Ctx, req: q.SupplyRequest) -> q.SupplyResponse:
        return q.SupplyResponse(denom=self.keeper.denom(ctx), amount=self.keeper.supply(ctx), height=ctx.env.height)
