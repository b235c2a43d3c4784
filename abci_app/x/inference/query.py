"""Inference queries: a query's status, its receipt, why it paid what it paid, how it chose."""

from __future__ import annotations

from abci_app.context import Ctx
from abci_app.crypto import parse_address
from abci_app.errors import ErrInvalidRequest, ErrNotFound
from abci_app.queries import Route, Routes
from abci_app.x.inference import selection
from abci_app.x.inference.keeper import InferenceKeeper
from abci_app.x.inference.types import receipt_key
from wire.llmnet.inference.v1 import inference_pb2 as inf
from wire.llmnet.query.v1 import query_pb2 as q

MAX_RECENT = 100


class Querier:
    def __init__(self, keeper: InferenceKeeper) -> None:
        self.keeper = keeper

    def routes(self) -> Routes:
        return {
            "RecentQueries": Route(q.RecentQueriesRequest, q.RecentQueriesResponse, self.recent),
            "QueryStatus": Route(q.QueryStatusRequest, q.QueryStatusResponse, self.status),
            "Receipt": Route(q.ReceiptRequest, q.ReceiptResponse, self.receipt),
            "ExplainPayout": Route(q.ExplainPayoutRequest, q.ExplainPayoutResponse, self.explain_payout),
            "ExplainSelection": Route(q.ExplainSelectionRequest, q.ExplainSelectionResponse, self.explain_selection),
        }

    def _scores(self, ctx: Ctx, query: inf.Query) -> list[inf.ScoreEntry]:
        entries = [self.keeper.score_entry(ctx, query.id, parse_address(s)) for s in query.scorers]
        return [e for e in entries if e is not None]

    def _receipt(self, ctx: Ctx, query_id: int) -> inf.Receipt:
        self.keeper.get(ctx, query_id)  # unknown query -> ErrUnknownQuery
        receipt = self.keeper.receipt(ctx, query_id)
        if receipt is None:
            raise ErrNotFound(f"query {query_id} is not settled yet")
        return receipt

    def status(self, ctx: Ctx, req: q.QueryStatusRequest) -> q.QueryStatusResponse:
        query = self.keeper.get(ctx, req.query_id)
        answers = [e for r in range(1, query.round + 1) for a in query.respondents
                   if (e := self.keeper.answer(ctx, query.id, r, parse_address(a))) is not None]
        return q.QueryStatusResponse(query=query, answers=answers, scores=self._scores(ctx, query),
                                     height=ctx.env.height)

    def receipt(self, ctx: Ctx, req: q.ReceiptRequest) -> q.ReceiptResponse:
        return q.ReceiptResponse(receipt=self._receipt(ctx, req.query_id), store_key=receipt_key(req.query_id),
                                 height=ctx.env.height)

    def explain_payout(self, ctx: Ctx, req: q.ExplainPayoutRequest) -> q.ExplainPayoutResponse:
        rec = self._receipt(ctx, req.query_id)
        query = self.keeper.get(ctx, req.query_id)
        return q.ExplainPayoutResponse(payouts=rec.payouts, aggregated_scores=rec.scores,
                                       scores=self._scores(ctx, query), height=ctx.env.height)

    def explain_selection(self, ctx: Ctx, req: q.ExplainSelectionRequest) -> q.ExplainSelectionResponse:
        query = self.keeper.get(ctx, req.query_id)
        picks = [(d.role, int(d.weight), int(d.point), int(d.total)) for d in query.draws]
        by_role = {role: [d.address for d in query.draws if d.role == role] for role in ("respondent", "scorer")}
        matches = (query.seed == selection.query_seed(query.block_seed, query.id)
                   and selection.points_follow(query.seed, picks) and by_role["respondent"] == list(query.respondents)
                   and by_role["scorer"] == list(query.scorers))
        return q.ExplainSelectionResponse(seed=query.seed, draws=query.draws, respondents=by_role["respondent"],
                                          scorers=by_role["scorer"], matches=matches, height=ctx.env.height)

    def recent(self, ctx: Ctx, req: q.RecentQueriesRequest) -> q.RecentQueriesResponse:
        if req.limit > MAX_RECENT:
            raise ErrInvalidRequest(f"limit must be at most {MAX_RECENT}, got {req.limit}")
        return q.RecentQueriesResponse(queries=self.keeper.recent(ctx, req.limit or 20, req.before_id),
                                       height=ctx.env.height)
