"""What the explorer shows, as JSON-ready dicts, read through the node's own query API and CometBFT RPC.

Queries go through the same router that answers the gRPC QueryService and ABCI Query, so the page
can never show something the API would not. Nothing here writes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from google.protobuf.message import Message

from abci_app.app import Application
from abci_app.queries import QUERY_SERVICE
from llmnet.node.cometrpc import CometRPC
from wire.llmnet.experts.v1 import experts_pb2 as ex
from wire.llmnet.inference.v1 import inference_pb2 as inf
from wire.llmnet.query.v1 import query_pb2 as q
from wire.tendermint.abci import types_pb2 as abci

M = TypeVar("M", bound=Message)
QueryFn = Callable[[str, Message, type[M]], M]
"""(method, request, response type) -> response; raises QueryFailed."""


class QueryFailed(Exception):
    pass


def router_query(app: Application) -> QueryFn[Any]:
    """Queries answered by the app's query router: the one behind the gRPC QueryService."""
    def query(method: str, request: Message, response: type[M]) -> M:
        resp = app.query(abci.RequestQuery(path=f"/{QUERY_SERVICE}/{method}", data=request.SerializeToString()))
        if resp.code:
            raise QueryFailed(f"{method}: {resp.log}")
        return response.FromString(resp.value)

    return query


BLOCKS = 10
QUERIES = 10
HISTORY = 200  # latest reputation points per expert in the chart: every answer stays bounded


def phase_name(phase: int) -> str:
    return inf.Phase.Name(phase).removeprefix("PHASE_").lower().replace("_", " ")


def status_name(status: int) -> str:
    return ex.ExpertStatus.Name(status).removeprefix("EXPERT_STATUS_").lower()


class ExplorerData:
    def __init__(self, query: QueryFn[Any], rpc: CometRPC) -> None:
        self.query = query
        self.rpc = rpc

    async def status(self) -> dict[str, Any]:
        st = await self.rpc.call("status")
        sync = st["sync_info"]
        return {"chain_id": st["node_info"]["network"], "moniker": st["node_info"]["moniker"],
                "height": int(sync["latest_block_height"]), "app_hash": sync["latest_app_hash"],
                "block_time": sync["latest_block_time"], "catching_up": bool(sync["catching_up"])}

    async def blocks(self, count: int = BLOCKS) -> list[dict[str, Any]]:
        height = int((await self.rpc.call("status"))["sync_info"]["latest_block_height"])
        if height < 1:
            return []
        res = await self.rpc.call("blockchain", minHeight=str(max(1, height - count + 1)), maxHeight=str(height))
        return [{"height": int(m["header"]["height"]), "time": m["header"]["time"], "hash": m["block_id"]["hash"],
                 "txs": int(m["num_txs"]), "proposer": m["header"]["proposer_address"],
                 "app_hash": m["header"]["app_hash"]}
                for m in res["block_metas"]]

    def _params(self) -> q.ParamsResponse:
        params: q.ParamsResponse = self.query("Params", q.ParamsRequest(), q.ParamsResponse)
        return params

    def _ranked(self, params: q.ParamsResponse) -> dict[str, list[q.RankedExpert]]:
        """Each domain's experts (the first page: up to 100, a bounded answer), best reputation first."""
        ranked = {}
        for d in params.experts.domains:
            page = self.query("ExpertsByDomain", q.ExpertsByDomainRequest(domain=d), q.ExpertsByDomainResponse)
            ranked[d] = sorted(page.experts, key=lambda r: (-r.reputation, r.expert.address))
        return ranked

    def experts(self) -> dict[str, Any]:
        params = self._params()
        domains: dict[str, list[dict[str, Any]]] = {}
        for domain, ranked in self._ranked(params).items():
            domains[domain] = [{
                "address": r.expert.address, "reputation": int(r.reputation), "stake": int(r.expert.bond),
                "status": status_name(r.expert.status), "earned": int(r.expert.earned),
                "slashed": int(r.expert.slashed), "answered": int(r.expert.answered),
                "endpoint": r.expert.endpoint, "base_model": r.expert.model.base_model,
                "adapter_sha256": r.expert.model.adapter_sha256,
            } for r in ranked]
        return {"reputation_scale": int(params.experts.reputation_scale), "denom": params.bank.denom,
                "domains": domains}

    def queries(self, limit: int = QUERIES) -> list[dict[str, Any]]:
        recent = self.query("RecentQueries", q.RecentQueriesRequest(limit=limit), q.RecentQueriesResponse)
        return [self._query_view(query) for query in recent.queries]

    def _query_view(self, query: inf.Query) -> dict[str, Any]:
        st = self.query("QueryStatus", q.QueryStatusRequest(query_id=query.id), q.QueryStatusResponse)
        final_round = {a.respondent: a for a in st.answers if a.round == query.round}
        view: dict[str, Any] = {
            "id": int(query.id), "domain": query.domain, "prompt": query.prompt, "requester": query.requester,
            "phase": phase_name(query.phase), "round": int(query.round), "rounds": int(query.rounds),
            "max_fee": int(query.max_fee), "created_height": int(query.created_height),
            "scorers": list(query.scorers), "settled": query.phase == inf.PHASE_SETTLED,
            "respondents": [{"address": a, "answer": final_round[a].answer if a in final_round else "",
                             "revealed": a in final_round and final_round[a].revealed}
                            for a in query.respondents],
        }
        if query.phase != inf.PHASE_SETTLED:
            return view
        rec = self.query("Receipt", q.ReceiptRequest(query_id=query.id), q.ReceiptResponse).receipt
        paid: dict[str, int] = {}
        for p in rec.payouts:
            if p.role == "respondent":
                paid[p.address] = paid.get(p.address, 0) + int(p.amount)
        for i, r in enumerate(view["respondents"]):
            r["score"] = int(rec.scores[i]) if i < len(rec.scores) else None
            r["paid"] = paid.get(r["address"], 0)
            r["final"] = i == rec.final_index
        view.update(final_answer=rec.final_answer, final_index=int(rec.final_index),
                    settled_height=int(rec.settled_height), slashed=list(rec.slashed),
                    payouts=[{"address": p.address, "role": p.role, "amount": int(p.amount), "reason": p.reason}
                             for p in rec.payouts])
        return view

    def reputation(self) -> dict[str, Any]:
        """Each shown expert's latest reputation points per domain, oldest first: one chart series each."""
        params = self._params()
        addresses = {r.expert.address for ranked in self._ranked(params).values() for r in ranked}
        series: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for address in sorted(addresses):
            hist = self.query("ReputationHistory", q.ReputationHistoryRequest(address=address, limit=HISTORY,
                                                                              newest_first=True),
                              q.ReputationHistoryResponse)
            for p in reversed(hist.points):
                series.setdefault(p.domain, {}).setdefault(address, []).append(
                    {"height": int(p.height), "query_id": int(p.query_id), "reputation": int(p.reputation),
                     "reason": p.reason})
        return {"reputation_scale": int(params.experts.reputation_scale), "series": series}
