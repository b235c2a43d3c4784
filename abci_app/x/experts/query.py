"""Experts queries: an expert, a domain's ranking, reputation history."""

from __future__ import annotations

from abci_app.context import Ctx
from abci_app.errors import ErrNotFound
from abci_app.queries import QUERY_SERVICE, QueryRouter, Route, request_address
from abci_app.x.experts.keeper import ExpertsKeeper
from abci_app.x.experts.types import STORE, reputation_key
from wire.llmnet.query.v1 import query_pb2 as q


def register_queries(router: QueryRouter, keeper: ExpertsKeeper) -> None:
    def expert(ctx: Ctx, req: q.ExpertRequest) -> q.ExpertResponse:
        address = request_address(req.address)
        record = keeper.get(ctx, address)
        if record is None:
            raise ErrNotFound(f"{req.address} is not a registered expert")
        reps = [q.DomainReputation(domain=d, reputation=keeper.reputation(ctx, d, address)) for d in record.domains]
        return q.ExpertResponse(expert=record, reputation=reps, height=ctx.env.height,
                                scorer_reputation=keeper.scorer_reputation(ctx, address))

    def by_domain(ctx: Ctx, req: q.ExpertsByDomainRequest) -> q.ExpertsByDomainResponse:
        prefix = reputation_key(req.domain, b"")
        ranked = []
        for key, raw in ctx.kv(STORE).iterate(prefix):
            record = keeper.get(ctx, key[len(prefix):])
            if record is not None:
                ranked.append(q.RankedExpert(expert=record, reputation=int.from_bytes(raw, "big")))
        ranked.sort(key=lambda r: (-r.reputation, r.expert.address))
        return q.ExpertsByDomainResponse(experts=ranked, height=ctx.env.height)

    def history(ctx: Ctx, req: q.ReputationHistoryRequest) -> q.ReputationHistoryResponse:
        points = keeper.history(ctx, request_address(req.address))
        return q.ReputationHistoryResponse(points=points, height=ctx.env.height)

    router.add(QUERY_SERVICE, "Expert", Route(q.ExpertRequest, q.ExpertResponse, expert))
    router.add(QUERY_SERVICE, "ExpertsByDomain", Route(q.ExpertsByDomainRequest, q.ExpertsByDomainResponse, by_domain))
    router.add(QUERY_SERVICE, "ReputationHistory",
               Route(q.ReputationHistoryRequest, q.ReputationHistoryResponse, history))
