"""What the explorer shows, as JSON-ready dicts, read through the node's own query API and CometBFT RPC.

Queries go through the same router that answers the gRPC QueryService and ABCI Query, so the page
can never show something the API would not. Nothing here writes.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from abci_app.app import Application
from abci_app.crypto import address_of, format_address, parse_address
from abci_app.errors import Missing, registered_errors
from abci_app.queries import QUERY_SERVICE
from llmnet.node.cometrpc import CometRPC, RPCError
from wire.llmnet.experts.v1 import experts_pb2 as ex
from wire.llmnet.inference.v1 import inference_pb2 as inf
from wire.llmnet.query.v1 import query_pb2 as q
from wire.llmnet.tx.v1 import tx_pb2
from wire.llmnet.validators.v1 import validators_pb2 as vpb
from wire.tendermint.abci import types_pb2 as abci

M = TypeVar("M", bound=Message)
QueryFn = Callable[[str, Message, type[M]], M]
"""(method, request, response type) -> response; raises QueryFailed."""


class QueryFailed(Exception):
    def __init__(self, message: str, missing: bool = False) -> None:
        super().__init__(message)
        self.missing = missing  # the app said "no such thing" (unknown account, expert, query)


class BadRequest(ValueError):
    """The caller's input cannot be read (HTTP 400)."""


class NotFound(LookupError):
    """Well-formed input that names nothing on the chain (HTTP 404)."""


def router_query(app: Application) -> QueryFn[Any]:
    """Queries answered by the app's query router: the one behind the gRPC QueryService."""
    def query(method: str, request: Message, response: type[M]) -> M:
        resp = app.query(abci.RequestQuery(path=f"/{QUERY_SERVICE}/{method}", data=request.SerializeToString()))
        if resp.code:
            error = registered_errors().get((resp.codespace, resp.code))
            raise QueryFailed(f"{method}: {resp.log}", missing=error is not None and issubclass(error, Missing))
        return response.FromString(resp.value)

    return query


BLOCKS = 10
MAX_BLOCKS = 20  # CometBFT's /blockchain returns at most 20 headers per call
QUERIES = 10
MAX_QUERIES = 20  # each query shown costs two more app queries (status, receipt)
HISTORY = 200  # latest reputation points per expert in the chart: every answer stays bounded
RANKED_PAGES = 10  # pages of experts per domain in the experts view (1,000 reputation rows at most)
KEPT_SECONDS = 1.0  # the experts and reputation views are computed at most once a second (ExplorerData._recent)
MAX_VALIDATORS = 100  # the Validators query's largest page; the set itself is capped by max_validators
MAX_SEARCH = 200  # longer than any address, id or hash: refused before any parsing
MAX_QUERY_ID = 2**64 - 1
TX_HASH = re.compile(r"(0x)?[0-9a-f]{64}", re.IGNORECASE | re.ASCII)
QUERY_ID = re.compile(r"[0-9]+", re.ASCII)


def page(key: str, items: list[dict[str, Any]], top: int, latest: int, first: int, limit: int) -> dict[str, Any]:
    """A page of `items`, numbered top, top-1, ... (block heights or query ids have no gaps), with the
    `before` cursor of the next older page and of the next newer one (null where there is none). A newer
    cursor above `latest` is the head page: a client may treat it as "follow the newest"."""
    low = top - len(items) + 1
    return {key: items, "latest": latest,
            "older": low if items and low > first else None,
            "newer": min(top + limit, latest) + 1 if top < latest else None}


def phase_name(phase: int) -> str:
    return inf.Phase.Name(phase).removeprefix("PHASE_").lower().replace("_", " ")


def status_name(status: int) -> str:
    return ex.ExpertStatus.Name(status).removeprefix("EXPERT_STATUS_").lower()


def validator_status(status: int) -> str:
    try:
        return vpb.ValidatorStatus.Name(status).removeprefix("VALIDATOR_STATUS_").lower()
    except ValueError:  # a status added by a newer app than this node's protos: still shown, as its number
        return f"unknown ({status})"


def power_share(power: int, total: int) -> float:
    """power as a percentage of total, one decimal; 0 when nothing has power (harnesses without CometBFT)."""
    return round(100 * power / total, 1) if total > 0 else 0.0


def validator_view(v: vpb.Validator, total_power: int) -> dict[str, Any]:
    # Upper-case hex: the form CometBFT's RPC (block proposers, /validators) uses, so the two can be compared.
    return {"moniker": v.moniker, "address": v.address.hex().upper(), "operator": v.operator,
            "fixed": not v.operator, "status": validator_status(v.status), "power": int(v.power),
            "share": power_share(v.power, total_power), "bond": int(v.bond), "slashed": int(v.slashed),
            "jailed_until": int(v.jailed_until)}


def expert_view(e: ex.Expert) -> dict[str, Any]:
    return {"address": e.address, "stake": int(e.bond), "status": status_name(e.status), "earned": int(e.earned),
            "slashed": int(e.slashed), "answered": int(e.answered), "endpoint": e.endpoint,
            "base_model": e.model.base_model, "adapter_sha256": e.model.adapter_sha256}


def tx_view(raw: bytes) -> dict[str, Any]:
    """The signed envelope's contents; a tx the chain could not decode is still shown, as undecodable."""
    try:
        tx = tx_pb2.Tx.FromString(raw)
        body = tx_pb2.TxBody.FromString(tx.body_bytes)
        auth = tx_pb2.AuthInfo.FromString(tx.auth_info_bytes)
    except (DecodeError, RuntimeError, ValueError):  # what protobuf raises on bytes it cannot parse
        return {"decoded": False, "messages": []}
    messages = []
    for packed in body.messages:
        try:
            fields = json_format.MessageToDict(packed, preserving_proto_field_name=True)
            fields.pop("@type", None)
        except (TypeError, DecodeError, RuntimeError, ValueError):  # a type this node does not know, or bad bytes
            fields = None
        messages.append({"type": packed.type_url.removeprefix("/"), "fields": fields})
    return {"decoded": True, "signer": address_of(auth.public_key) if auth.public_key else "",
            "sequence": int(auth.sequence), "fee_offered": int(auth.fee.amount), "memo": body.memo,
            "messages": messages}


def fee_paid(events: Any) -> str:
    """The fee the chain took, from the tx's `tx` event ("" when it has none: a tx refused before its fee). A tx
    pays the minimum fee for its gas limit, whatever it offered (README, Transactions), so the offer alone
    overstates what a sender paid."""
    for e in events if isinstance(events, list) else []:
        if isinstance(e, dict) and e.get("type") == "tx":
            for a in e.get("attributes") or []:
                if isinstance(a, dict) and a.get("key") == "fee" and isinstance(a.get("value"), str):
                    return a["value"]
    return ""


class ExplorerData:
    def __init__(self, query: QueryFn[Any], rpc: CometRPC, clock: Callable[[], float] = time.monotonic) -> None:
        self.query = query
        self.rpc = rpc
        self._clock = clock
        self._kept: dict[str, tuple[float, dict[str, Any] | QueryFailed]] = {}

    def _recent(self, name: str, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """compute(), or its result from less than KEPT_SECONDS ago. The experts and reputation views cost one
        query per domain or per expert (hundreds on a busy chain), run on the event loop that answers
        CometBFT: requests in a loop would delay the node's consensus replies; now they cost one computation
        every KEPT_SECONDS, whatever their rate."""
        now = self._clock()
        kept = self._kept.get(name)
        if kept is None or now - kept[0] >= KEPT_SECONDS:
            try:
                kept = (now, compute())
            except QueryFailed as failed:  # a failure too: asking again in a loop must not cost more
                kept = (now, failed)
            self._kept[name] = kept
        if isinstance(kept[1], QueryFailed):
            raise kept[1]
        return kept[1]

    async def status(self) -> dict[str, Any]:
        st = await self.rpc.call("status")
        sync = st["sync_info"]
        return {"chain_id": st["node_info"]["network"], "moniker": st["node_info"]["moniker"],
                "height": int(sync["latest_block_height"]), "app_hash": sync["latest_app_hash"],
                "block_time": sync["latest_block_time"], "catching_up": bool(sync["catching_up"])}

    async def blocks(self, before: int | None = None, limit: int = BLOCKS) -> dict[str, Any]:
        """Up to limit blocks below height `before` (default: from the newest), newest first."""
        sync = (await self.rpc.call("status"))["sync_info"]
        latest = int(sync["latest_block_height"])
        # A pruned node keeps blocks from its base only; asking below it is a CometBFT error.
        earliest = max(1, int(sync.get("earliest_block_height") or 1))
        top = latest if before is None else min(before - 1, latest)
        metas = []
        if top >= earliest:
            res = await self.rpc.call("blockchain", minHeight=str(max(earliest, top - limit + 1)), maxHeight=str(top))
            metas = res["block_metas"]
        blocks = [{"height": int(m["header"]["height"]), "time": m["header"]["time"], "hash": m["block_id"]["hash"],
                   "txs": int(m["num_txs"]), "proposer": m["header"]["proposer_address"],
                   "app_hash": m["header"]["app_hash"]}
                  for m in metas]
        return page("blocks", blocks, top, latest, earliest, limit)

    def _params(self) -> q.ParamsResponse:
        params: q.ParamsResponse = self.query("Params", q.ParamsRequest(), q.ParamsResponse)
        return params

    def _ranked(self, params: q.ParamsResponse) -> dict[str, list[q.RankedExpert]]:
        """Each domain's experts (up to RANKED_PAGES pages of 100 reputation rows: a bounded answer; rows of
        experts gone count too), best reputation first."""
        ranked = {}
        for d in params.experts.domains:
            experts: list[q.RankedExpert] = []
            request = q.ExpertsByDomainRequest(domain=d)
            for _ in range(RANKED_PAGES):
                page = self.query("ExpertsByDomain", request, q.ExpertsByDomainResponse)
                experts += page.experts
                if not page.next_after:
                    break
                request.after = page.next_after
            ranked[d] = sorted(experts, key=lambda r: (-r.reputation, r.expert.address))
        return ranked

    def experts(self) -> dict[str, Any]:
        return self._recent("experts", self._experts)

    def _experts(self) -> dict[str, Any]:
        params = self._params()
        domains: dict[str, list[dict[str, Any]]] = {}
        for domain, ranked in self._ranked(params).items():
            domains[domain] = [dict(expert_view(r.expert), reputation=int(r.reputation)) for r in ranked]
        return {"reputation_scale": int(params.experts.reputation_scale), "denom": params.bank.denom,
                "domains": domains}

    def validators(self) -> dict[str, Any]:
        """The validator set by power, highest first, from one page of the query: bounded, and the whole set unless
        more than MAX_VALIDATORS validators have power (then `more` is true and the rest is not shown)."""
        resp = self.query("Validators", q.ValidatorsRequest(limit=MAX_VALIDATORS, in_set_only=True),
                          q.ValidatorsResponse)
        total = int(resp.total_power)  # (the query ranks a page by power)
        return {"validators": [validator_view(v, total) for v in resp.validators], "total_power": total,
                "height": int(resp.height), "more": bool(resp.next_cursor), "denom": self._params().bank.denom}

    def queries(self, before: int | None = None, limit: int = QUERIES) -> dict[str, Any]:
        """Up to limit queries with ids below `before` (default: from the newest), newest first."""
        newest = self.query("RecentQueries", q.RecentQueriesRequest(limit=1), q.RecentQueriesResponse).queries
        latest = int(newest[0].id) if newest else 0
        top = latest if before is None else min(before - 1, latest)
        recent = self.query("RecentQueries", q.RecentQueriesRequest(limit=limit, before_id=top + 1),
                            q.RecentQueriesResponse) if top >= 1 else q.RecentQueriesResponse()
        return page("queries", [self._query_view(query) for query in recent.queries], top, latest, 1, limit)

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
                    settled_height=int(rec.settled_height), missed=list(rec.missed),
                    payouts=[{"address": p.address, "role": p.role, "amount": int(p.amount), "reason": p.reason}
                             for p in rec.payouts])
        return view

    def reputation(self) -> dict[str, Any]:
        """Each shown expert's latest reputation points per domain, oldest first: one chart series each."""
        return self._recent("reputation", self._reputation)

    def _reputation(self) -> dict[str, Any]:
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

    async def search(self, text: str) -> dict[str, Any]:
        """What `text` names: a tx (64 hex digits), a query (its id) or an account (its llm1… address)."""
        text = text.strip()
        if len(text) > MAX_SEARCH:
            raise BadRequest(f"search text is {len(text)} characters; an address, id or hash is far shorter")
        if TX_HASH.fullmatch(text):  # before ids: 64 decimal digits are a hash, no query id is that long
            return await self._tx(text[-64:])
        if QUERY_ID.fullmatch(text):
            return self._query(int(text))
        if text.lower().startswith("llm1"):
            return self._account(text)
        raise BadRequest("search for an address (llm1…), a query id (a number) or a tx hash (64 hex digits)")

    def _maybe(self, method: str, request: Message, response: type[M]) -> M | None:
        """The answer, or None where the app says there is no such thing."""
        try:
            answer: M = self.query(method, request, response)
            return answer
        except QueryFailed as exc:
            if exc.missing:
                return None
            raise

    def _query(self, query_id: int) -> dict[str, Any]:
        if query_id > MAX_QUERY_ID:
            raise BadRequest(f"query id {query_id} is out of range (ids are 64-bit)")
        st = self._maybe("QueryStatus", q.QueryStatusRequest(query_id=query_id), q.QueryStatusResponse)
        if st is None:
            raise NotFound(f"no query {query_id} on this chain")
        return {"kind": "query", "query": self._query_view(st.query)}

    def _account(self, text: str) -> dict[str, Any]:
        try:
            address = format_address(parse_address(text))  # canonical lower case, whatever was typed
        except ValueError as exc:
            raise BadRequest(f"{text!r} is not an address: {exc}") from None
        account = self._maybe("Account", q.AccountRequest(address=address), q.AccountResponse)
        expert = self._maybe("Expert", q.ExpertRequest(address=address), q.ExpertResponse)
        balance = self.query("Balance", q.BalanceRequest(address=address), q.BalanceResponse)
        if account is None and expert is None and not balance.amount:
            raise NotFound(f"{address} has no balance, no transaction and no expert record on this chain")
        view: dict[str, Any] = {"kind": "account", "address": address, "balance": int(balance.amount),
                                "denom": balance.denom, "sequence": int(account.account.sequence) if account else 0,
                                "expert": None}
        if expert is not None:
            view["expert"] = dict(
                expert_view(expert.expert), domains=[{"domain": r.domain, "reputation": int(r.reputation)}
                                                     for r in expert.reputation],
                scorer_reputation=int(expert.scorer_reputation), capacity=int(expert.expert.capacity),
                open_assignments=int(expert.expert.open_assignments),
                reputation_scale=int(self._params().experts.reputation_scale))
        return view

    async def _tx(self, hex_hash: str) -> dict[str, Any]:
        try:
            res = await self.rpc.tx(bytes.fromhex(hex_hash))
        except RPCError as exc:
            if "not found" in str(exc):
                raise NotFound(f"no tx {hex_hash.upper()} on this chain") from None
            raise
        r = res["tx_result"]
        return {"kind": "tx", "hash": res["hash"], "height": int(res["height"]), "index": int(res.get("index", 0)),
                "code": int(r.get("code", 0)), "codespace": r.get("codespace", ""), "log": r.get("log", ""),
                "gas_wanted": int(r.get("gas_wanted", 0)), "gas_used": int(r.get("gas_used", 0)),
                "fee_paid": fee_paid(r.get("events")), **tx_view(base64.b64decode(res["tx"]))}
