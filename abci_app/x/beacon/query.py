"""Beacon queries: the validators whose extension signatures make the beacon, and since when."""

from __future__ import annotations

from abci_app.context import Ctx
from abci_app.queries import Route, Routes
from abci_app.x.beacon.keeper import BeaconKeeper
from wire.llmnet.query.v1 import query_pb2 as q


class Querier:
    def __init__(self, keeper: BeaconKeeper) -> None:
        self.keeper = keeper

    def routes(self) -> Routes:
        return {"Beacon": Route(q.BeaconRequest, q.BeaconResponse, self.beacon)}

    def beacon(self, ctx: Ctx, req: q.BeaconRequest) -> q.BeaconResponse:
        validators = [v for _, v in sorted(self.keeper.validators(ctx).items())]
        return q.BeaconResponse(validators=validators, height=ctx.env.height,
                                vote_extensions_enable_height=self.keeper.enable_height(ctx))
