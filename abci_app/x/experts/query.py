"""Experts queries: an expert, a domain's ranking, reputation history."""

from __future__ import annotations

from abci_app.context import Ctx
from abci_app.errors import ErrNotFound
from abci_app.queries import Route, Routes, request_address
from abci_app.x.experts.keeper import ExpertsKeeper
from wire.llmnet.query.v1 import query_pb2 as q


class Querier:
    def __init__(self, keeper: ExpertsKeeper) -> None:
        self.keeper = keeper

    def routes(self) -> Routes:
        return {
            "Expert": Route(q.ExpertRequest, q.ExpertResponse, self.expert),
            "ExpertsByDomain": Route(q.ExpertsByDomainRequest, q.ExpertsByDomainResponse, self.by_domain),
            "ReputationHistory": Route(q.ReputationHistoryRequest, q.ReputationHistoryResponse, self.history),
        }

    def expert(self, ctx: Ctx, req: q.ExpertRequest) -> q.ExpertResponse:
        address = request_address(req.address)
        record = self.keeper.get(ctx, address)
        if record is None:
            raise ErrNotFound(f"{req.address} is not a registered expert")
        reps = [q.DomainReputation(domain=d, reputation=self.keeper.reputation(ctx, d, address))
                for d in record.domains]
        return q.ExpertResponse(expert=record, reputation=reps, height=ctx.env.height,
                                scorer_reputation=self.keeper.scorer_reputation(ctx, address))

    def by_domain(self, ctx: Ctx, req: q.ExpertsByDomainRequest) -> q.ExpertsByDomainResponse:
        ranked = [q.RankedExpert(expert=e, reputation=r) for e, r in self.keeper.domain_reputations(ctx, req.domain)]
        ranked.sort(key=lambda r: (-r.reputation, r.expert.address))
        return q.ExpertsByDomainResponse(experts=ranked, height=ctx.env.height)

    def history(self, ctx: Ctx, req: q.ReputationHistoryRequest) -> q.ReputationHistoryResponse:
        points = self.keeper.history(ctx, request_address(req.address))
        return q.ReputationHistoryResponse(points=points, height=ctx.env.height)
