"""Inference queries: a query's status, its receipt, why it paid what it paid, how it chose."""

from __future__ import annotations

from abci_app.context import Ctx
from abci_app.crypto import parse_address
from abci_app.errors import ErrInvalidRequest, ErrNotFound
from abci_app.queries import QUERY_SERVICE, QueryRouter, Route
from abci_app.x.inference import selection
from abci_app.x.inference.keeper import InferenceKeeper
from abci_app.x.inference.types import receipt_key
from wire.llmnet.query.v1 import query_pb2 as q

MAX_RECENT = 100


def register_queries(router: QueryRouter, keeper: InferenceKeeper) -> None:
    def _scores(ctx: Ctx, query_id: int, scorers: list[str]) -> list:  # type: ignore[type-arg]
        entries = [keeper.score_entry(ctx, query_id, parse_address(s)) for s in scorers]
        return [e for e in entries if e is not None]

    def status(ctx: Ctx, req: q.QueryStatusRequest) -> q.QueryStatusResponse:
        query = keeper.get(ctx, req.query_id)
        answers = [e for r in range(1, query.round + 1) for a in query.respondents
                   if (e := keeper.answer(ctx, query.id, r, parse_address(a))) is not None]
        return q.QueryStatusResponse(query=query, answers=answers, scores=_scores(ctx, query.id, list(query.scorers)),
                                     height=ctx.env.height)

    def _receipt(ctx: Ctx, query_id: int):  # type: ignore[no-untyped-def]
        keeper.get(ctx, query_id)  # unknown query -> ErrUnknownQuery
        receipt = keeper.receipt(ctx, query_id)
        if receipt is None:
            raise ErrNotFound(f"query {query_id} is not settled yet")
        return receipt

    def receipt(ctx: Ctx, req: q.ReceiptRequest) -> q.ReceiptResponse:
        return q.ReceiptResponse(receipt=_receipt(ctx, req.query_id), store_key=receipt_key(req.query_id),
                                 height=ctx.env.height)

    def explain_payout(ctx: Ctx, req: q.ExplainPayoutRequest) -> q.ExplainPayoutResponse:
        rec = _receipt(ctx, req.query_id)
        query = keeper.get(ctx, req.query_id)
        return q.ExplainPayoutResponse(payouts=rec.payouts, aggregated_scores=rec.scores,
                                       scores=_scores(ctx, query.id, list(query.scorers)), height=ctx.env.height)

    def explain_selection(ctx: Ctx, req: q.ExplainSelectionRequest) -> q.ExplainSelectionResponse:
        query = keeper.get(ctx, req.query_id)
        weighted = [(parse_address(c.address), int(c.weight)) for c in query.candidates]
        respondents = selection.draw(query.seed, weighted, int(query.k), b"respondents")
        rest = [(a, w) for a, w in weighted if a not in respondents]
        scorers = selection.draw(query.seed, rest, len(query.scorers), b"scorers")
        names = {parse_address(c.address): c.address for c in query.candidates}
        got_r, got_s = [names[a] for a in respondents], [names[a] for a in scorers]
        return q.ExplainSelectionResponse(
            seed=query.seed, candidates=query.candidates, respondents=got_r, scorers=got_s,
            matches=got_r == list(query.respondents) and got_s == list(query.scorers), height=ctx.env.height)

    def recent(ctx: Ctx, req: q.RecentQueriesRequest) -> q.RecentQueriesResponse:
        if req.limit > MAX_RECENT:
            raise ErrInvalidRequest(f"limit must be at most {MAX_RECENT}, got {req.limit}")
        return q.RecentQueriesResponse(queries=keeper.recent(ctx, req.limit or 20, req.before_id),
                                       height=ctx.env.height)

    for name, req_cls, resp_cls, fn in (
        ("RecentQueries", q.RecentQueriesRequest, q.RecentQueriesResponse, recent),
        ("QueryStatus", q.QueryStatusRequest, q.QueryStatusResponse, status),
        ("Receipt", q.ReceiptRequest, q.ReceiptResponse, receipt),
        ("ExplainPayout", q.ExplainPayoutRequest, q.ExplainPayoutResponse, explain_payout),
        ("ExplainSelection", q.ExplainSelectionRequest, q.ExplainSelectionResponse, explain_selection),
    ):
        router.add(QUERY_SERVICE, name, Route(req_cls, resp_cls, fn))
