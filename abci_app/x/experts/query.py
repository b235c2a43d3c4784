"""Experts queries: an expert, a domain's ranking, reputation history."""

from __future__ import annotations

from abci_app.context import Ctx
from abci_app.crypto import format_address
from abci_app.errors import ErrInvalidRequest, ErrNotFound
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
        limit = _limit(req.limit, MAX_EXPERTS_PAGE)
        after = request_address(req.after) if req.after else b""
        page, last = self.keeper.domain_reputations(ctx, req.domain, after, limit)
        ranked = [q.RankedExpert(expert=e, reputation=r) for e, r in page]
        return q.ExpertsByDomainResponse(experts=ranked, height=ctx.env.height,
                                         next_after=format_address(last) if last else "")

    def history(self, ctx: Ctx, req: q.ReputationHistoryRequest) -> q.ReputationHistoryResponse:
        limit = _limit(req.limit, MAX_HISTORY_PAGE)
        page = self.keeper.history(ctx, request_address(req.address), req.cursor, limit + 1, req.newest_first)
        more = len(page) > limit
        return q.ReputationHistoryResponse(points=[p for _, p in page[:limit]], height=ctx.env.height,
                                           next_cursor=page[limit - 1][0] if more else b"")


MAX_EXPERTS_PAGE = 100
MAX_HISTORY_PAGE = 500


def _limit(asked: int, most: int) -> int:
    """A page size: 0 means the most; more than the most is bad input (the answer must stay bounded)."""
    if asked > most:
        raise ErrInvalidRequest(f"limit must be at most {most}, got {asked}")
    return asked or most
