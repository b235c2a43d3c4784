"""The explorer's HTTP API over a real in-process chain, and over a real localnet where CometBFT is needed."""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from abci_app.crypto import format_address
from llmnet.devchain import DevChain
from llmnet.node.cometrpc import CometRPC
from llmnet.node.explorer.data import ExplorerData, QueryFailed, QueryFn, router_query
from llmnet.node.explorer.server import STATIC, Explorer
from tests.conftest import free_port
from tests.protocol_harness import ProtocolChain
from tests.test_protocol import DOMAIN, answer_round, score, submit
from tests.test_validators import BOND, FUNDS, chain_keys, operators
from wire.llmnet.query.v1 import query_pb2 as q

T = TypeVar("T")


def _browse(chain: DevChain, visit: Callable[[httpx.AsyncClient], Awaitable[T]],
            query: QueryFn[Any] | None = None) -> T:
    """visit(http) against an explorer over `chain` (or `query`, standing in for its query router) whose
    CometBFT is down (nothing listens on its port)."""
    async def run() -> T:
        rpc = CometRPC(f"http://127.0.0.1:{free_port()}", timeout=2)
        explorer = Explorer(ExplorerData(query or router_query(chain.app), rpc), "127.0.0.1:0")
        port = await explorer.start()
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                return await visit(http)
        finally:
            await explorer.stop()
            await rpc.close()

    return asyncio.run(run())


def _get_all(chain: DevChain, paths: list[str]) -> list[httpx.Response]:
    async def visit(http: httpx.AsyncClient) -> list[httpx.Response]:
        return [await http.get(p) for p in paths]

    return _browse(chain, visit)


async def _walk(http: httpx.AsyncClient, path: str, key: str, go: str, limit: int,
                before: int | None = None) -> list[list[int]]:
    """The numbers (ids or heights) on each page, following the `go` ("older"/"newer") cursor to its end."""
    pages = []
    while True:
        cursor = "" if before is None else f"&before={before}"
        r = await http.get(f"{path}?limit={limit}{cursor}")
        assert r.status_code == 200, r.text
        body = r.json()
        pages.append([item.get("id", item.get("height")) for item in body[key]])
        if body[go] is None:
            return pages
        before = body[go]


@pytest.fixture
def chain(tmp_path: Path) -> ProtocolChain:
    c = ProtocolChain(tmp_path / "s.db", 6, [DOMAIN, "island-herbalism"])
    c.register_all([DOMAIN])
    return c


def test_queries_experts_and_reputation_match_the_chain(chain: ProtocolChain) -> None:
    settled = submit(chain, k=2, rounds=1)
    answer_round(chain, settled, 1)
    score(chain, settled, [90, 40])
    open_query = submit(chain, k=2, rounds=1)
    page, experts, reputation = (r.json() for r in _get_all(chain, ["/api/queries", "/api/experts",
                                                                     "/api/reputation"]))
    queries = page["queries"]
    assert [x["id"] for x in queries] == [open_query, settled]
    assert page["latest"] == open_query and page["older"] is None and page["newer"] is None
    assert queries[0]["phase"] == "answer commit" and not queries[0]["settled"]
    view: dict[str, Any] = queries[1]
    receipt = chain.query("Receipt", q.ReceiptRequest(query_id=settled), q.ReceiptResponse).receipt
    assert view["settled"] and view["final_answer"] == receipt.final_answer
    assert [r["score"] for r in view["respondents"]] == [90, 40]
    assert [r["final"] for r in view["respondents"]] == [True, False]
    assert view["respondents"][0]["answer"].startswith("Marta Vensel")
    paid = {p.address: p.amount for p in receipt.payouts if p.role == "respondent"}
    assert [r["paid"] for r in view["respondents"]] == [paid.get(a, 0) for a in receipt.respondents]
    assert sorted(experts["domains"]) == ["island-herbalism", DOMAIN] and experts["domains"]["island-herbalism"] == []
    ranked = experts["domains"][DOMAIN]
    assert len(ranked) == 6 and ranked[0]["address"] == receipt.respondents[0]
    assert ranked[0]["stake"] == 5_000_000 and ranked[0]["status"] == "active"
    best = reputation["series"][DOMAIN][receipt.respondents[0]]
    assert [p["reason"] for p in best] == ["register", "answer"] and best[-1]["reputation"] == ranked[0]["reputation"]


def test_cometbft_down_is_a_clear_503_and_the_page_is_self_contained(chain: ProtocolChain) -> None:
    status, blocks, page, script, missing = _get_all(chain, ["/api/status", "/api/blocks", "/", "/static/explorer.js",
                                                             "/static/nope.js"])
    for r in (status, blocks):
        assert r.status_code == 503 and "unreachable" in r.json()["error"]
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="/static/explorer.js">' in page.text
    assert script.status_code == 200 and "refresh()" in script.text
    assert missing.status_code == 404
    # Nothing is loaded from outside the node: every src/href/url()/fetch points at this server.
    for f in STATIC.iterdir():
        text = f.read_text()
        assert not re.search(r"""(src|href)=["']?(https?:)?//|url\(\s*["']?https?:|fetch\(["'`]https?:""", text), f.name


def _settle(chain: ProtocolChain) -> int:
    """A query taken to its receipt, so its experts are free for the next one."""
    query_id = submit(chain, k=2, rounds=1)
    answer_round(chain, query_id, 1)
    score(chain, query_id, [90, 40])
    return query_id


def test_query_pages_cover_every_query_once_both_ways(chain: ProtocolChain) -> None:
    ids = [_settle(chain) for _ in range(7)]

    async def visit(http: httpx.AsyncClient) -> tuple[list[list[int]], list[list[int]], dict[str, Any]]:
        older = await _walk(http, "/api/queries", "queries", "older", 3)
        # Back up from below the oldest: the newer cursors step up a page at a time, then to the head page.
        newer = await _walk(http, "/api/queries", "queries", "newer", 3, before=ids[0])
        return older, newer, (await http.get("/api/queries?limit=3&before=5")).json()

    older, newer, middle = _browse(chain, visit)
    assert older == [[7, 6, 5], [4, 3, 2], [1]] and sorted(sum(older, [])) == ids
    assert newer == [[], [3, 2, 1], [6, 5, 4], older[0]]
    assert [x["id"] for x in middle["queries"]] == [4, 3, 2]
    assert (middle["older"], middle["newer"], middle["latest"]) == (2, 8, 7)  # 8 > latest: the head page


def test_bad_paging_parameters_are_a_clear_400(chain: ProtocolChain) -> None:
    bad = ["before=abc", "before=0", "before=-1", "before=1.5", "before=", "before=1e3", "before=" + "9" * 25,
           "limit=0", "limit=21", "limit=x", "limit=-3", "limit=" + "1" * 40, "before=５"]
    paths = [f"/api/{panel}?{query}" for panel in ("blocks", "queries") for query in bad]
    for path, r in zip(paths, _get_all(chain, paths), strict=True):
        # blocks too: the parameters are refused before CometBFT (down here) is asked anything
        assert r.status_code == 400, path
        name = path.split("?")[1].split("=")[0]
        assert r.json()["error"].startswith(f"{name} must be a whole number from 1 to "), path
    ok = _get_all(chain, ["/api/queries?limit=20&before=18446744073709551615", "/api/queries?unknown=1"])
    assert [r.status_code for r in ok] == [200, 200]


def test_search_finds_queries_accounts_and_experts(chain: ProtocolChain) -> None:
    settled = _settle(chain)
    expert = chain.experts[0].address
    found = [r.json() for r in _get_all(chain, [f"/api/search?q={settled}", f"/api/search?q=%20{expert}%20",
                                               f"/api/search?q={expert.upper()}",
                                               f"/api/search?q={chain.requester.address}",
                                               f"/api/search?q={chain.reporter.address}"])]
    assert found[0]["kind"] == "query" and found[0]["query"]["id"] == settled and found[0]["query"]["settled"]
    by_expert = found[1]
    balance = chain.query("Balance", q.BalanceRequest(address=expert), q.BalanceResponse).amount
    assert by_expert["kind"] == "account" and by_expert["address"] == expert and by_expert["balance"] == balance
    assert by_expert["sequence"] == chain.query("Account", q.AccountRequest(address=expert),
                                                q.AccountResponse).account.sequence
    record = chain.query("Expert", q.ExpertRequest(address=expert), q.ExpertResponse)
    assert by_expert["expert"]["status"] == "active" and by_expert["expert"]["stake"] == record.expert.bond
    assert by_expert["expert"]["domains"] == [{"domain": r.domain, "reputation": r.reputation}
                                              for r in record.reputation]
    assert found[2] == by_expert  # upper case is the same bech32 address
    assert found[3]["expert"] is None and found[3]["sequence"] >= 1
    assert found[4]["expert"] is None and found[4]["sequence"] == 0 and found[4]["balance"] > 0  # funded, silent


def test_search_refuses_garbage_and_says_what_is_missing(chain: ProtocolChain) -> None:
    nobody = format_address(bytes(20))
    texts = ["", "%20", "hello", "llm1notanaddress", nobody[:-1] + ("q" if nobody[-1] != "q" else "p"),
             "cosmos1qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqnrql8a", "-1", "1.5", "0x12", "ab" * 31, "ab" * 33,
             "%00", "%E2%80%AE", "x" * 500, "18446744073709551616", "１２"]
    paths = [f"/api/search?q={t}" for t in texts] + ["/api/search"]
    for path, r in zip(paths, _get_all(chain, paths), strict=True):
        assert r.status_code == 400 and r.json()["error"], path
    missing = _get_all(chain, [f"/api/search?q={nobody}", "/api/search?q=999", "/api/search?q=0",
                               "/api/search?q=" + "ab" * 32])
    assert [r.status_code for r in missing[:3]] == [404, 404, 404]
    assert nobody in missing[0].json()["error"] and "no query 999" in missing[1].json()["error"]
    assert missing[3].status_code == 503 and "unreachable" in missing[3].json()["error"]  # tx lookups ask CometBFT


def test_a_tx_this_node_cannot_read_is_still_shown() -> None:
    from google.protobuf import any_pb2

    from llmnet.node.explorer.data import tx_view
    from wire.llmnet.tx.v1 import tx_pb2

    assert tx_view(b"\xff\xff\xff") == {"decoded": False, "messages": []}
    body = tx_pb2.TxBody(memo="m", messages=[any_pb2.Any(type_url="/no.such.Msg", value=b"1"),
                                             any_pb2.Any(type_url="/llmnet.bank.v1.MsgSend", value=b"\xff\xff")])
    view = tx_view(tx_pb2.Tx(body_bytes=body.SerializeToString()).SerializeToString())
    assert view["decoded"] and view["memo"] == "m" and view["signer"] == ""
    assert view["messages"] == [{"type": "no.such.Msg", "fields": None}, {"type": "llmnet.bank.v1.MsgSend",
                                                                           "fields": None}]


MARKUP = '<script>document.title="owned"</script>'
MONIKERS = ["alpha", MARKUP, "b&o <i>", "delta"]


def _bonded(tmp_path: Path) -> DevChain:
    """The DevChain's four consensus keys bonded by their operators, 10, 30, 20 and 10 power, one moniker markup."""
    pairs = zip(operators(), chain_keys(), MONIKERS, [1, 3, 2, 1], strict=True)
    chain = DevChain(tmp_path / "v.db", operators(), FUNDS, app_state={"validators": {"validators": [
        {"operator": o.address, "pub_key": base64.b64encode(bytes(v.verify_key)).decode(), "moniker": m,
         "bond": str(BOND * n)} for o, v, m, n in pairs]}})
    chain.ok()
    return chain


def test_validators_are_the_set_by_power_with_their_shares(tmp_path: Path) -> None:
    chain = _bonded(tmp_path)
    body = _get_all(chain, ["/api/validators"])[0].json()
    resp = chain.query("Validators", q.ValidatorsRequest(), q.ValidatorsResponse)
    shown = body["validators"]
    assert (body["total_power"], body["height"], body["more"]) == (resp.total_power, resp.height, False)
    assert [v["power"] for v in shown] == [30, 20, 10, 10] and sum(v["power"] for v in shown) == body["total_power"]
    assert [v["share"] for v in shown] == [42.9, 28.6, 14.3, 14.3]  # percent of 70, one decimal
    records = {v.address.hex().upper(): v for v in resp.validators}
    assert set(records) == {v["address"] for v in shown} and all(re.fullmatch("[0-9A-F]{40}", a) for a in records)
    for v in shown:
        record = records[v["address"]]
        assert (v["moniker"], v["operator"], v["bond"]) == (record.moniker, record.operator, record.bond)
        assert (v["status"], v["fixed"], v["slashed"], v["jailed_until"]) == ("active", False, 0, 0)
    assert shown[0]["moniker"] == MARKUP  # verbatim: JSON is data, showing it as text is the page's job


def test_fixed_genesis_validators_and_a_set_longer_than_a_page(chain: ProtocolChain) -> None:
    real = router_query(chain.app)
    limits: list[int] = []

    def query(method: str, request: Any, response: Any) -> Any:
        """The chain's answers, but as if more validators followed this page."""
        answer = real(method, request, response)
        if method == "Validators":
            limits.append(request.limit)
            answer.next_cursor = b"\x01" * 20
        return answer

    fixed = _get_all(chain, ["/api/validators"])[0].json()
    paged = _browse(chain, lambda http: http.get("/api/validators"), query).json()
    assert [(v["moniker"], v["operator"], v["fixed"], v["power"], v["share"], v["bond"]) for v in fixed["validators"]
            ] == [("genesis", "", True, 10, 25.0, 0)] * 4
    assert fixed["total_power"] == 40 and fixed["more"] is False
    assert paged["more"] is True and paged["validators"] == fixed["validators"] and limits == [100]


def test_a_moniker_that_is_markup_reaches_the_page_only_as_text(tmp_path: Path) -> None:
    api, page, script = _get_all(_bonded(tmp_path), ["/api/validators", "/", "/static/explorer.js"])
    assert MARKUP in [v["moniker"] for v in api.json()["validators"]]
    assert api.headers["content-type"].startswith("application/json")  # a browser opening it shows text
    assert page.status_code == 200 and "owned" not in page.text  # the page is static: chain data comes as JSON
    # Which the script only ever inserts with el(): text nodes and attribute values, never parsed as HTML.
    for f in STATIC.iterdir():
        text = f.read_text()
        assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|DOMParser|"
                             r"createContextualFragment|srcdoc|\beval\(|new Function", text), f.name
    draw = script.text.split("function renderValidators(set) {")[1].split("\n}\n")[0]
    assert "v.moniker" in draw and "el(" in draw
    assert 'id="validators"' in page.text and "/api/validators" in script.text


@pytest.mark.e2e
def test_blocks_page_and_a_tx_is_found_on_a_real_chain(make_localnet) -> None:  # type: ignore[no-untyped-def]
    """The explorer `llmnetd start` serves, over real CometBFT: block pages and tx lookups by hash."""
    import time

    from llmnet.client.sdk import Client, Sender
    from llmnet.client.txbuilder import DEFAULT_GAS_LIMIT, send_msg
    from tests.e2e import keys

    net = make_localnet(1)
    node = net.manifest()["nodes"][0]
    sender, recipient = keys(net)[:2]
    with Client(node["grpc"]) as client:
        signer = Sender(client, sender, client.status().chain_id)
        minimum = signer.fee_for(DEFAULT_GAS_LIMIT)
        sent = signer.send([send_msg(sender.address, recipient.address, 7)], fee=minimum + 1234,
                           gas_limit=DEFAULT_GAS_LIMIT, memo="explorer test")  # offers more than it pays
        included = client.wait_tx(sent.tx_hash, timeout=60)
        while client.status().height < 12:  # enough blocks for a few pages
            time.sleep(0.2)

    async def visit() -> tuple[list[list[int]], list[httpx.Response]]:
        async with httpx.AsyncClient(base_url=node["explorer"], timeout=10) as http:
            pages = await _walk(http, "/api/blocks", "blocks", "older", 5)
            paths = [f"/api/search?q={sent.tx_hash.lower()}", f"/api/search?q=0x{sent.tx_hash}",
                     "/api/search?q=" + "0" * 64, "/api/blocks?before=1", "/api/blocks?limit=21",
                     f"/api/blocks?before={pages[0][0] - 1}&limit=3"]
            return pages, [await http.get(p) for p in paths]

    pages, (by_hash, prefixed, unknown, none, too_many, some) = asyncio.run(visit())
    top = pages[0][0]
    assert sum(pages, []) == list(range(top, 0, -1)) and all(len(p) == 5 for p in pages[:-1])  # no gap, no overlap
    tx = by_hash.json()
    assert tx == prefixed.json() and tx["kind"] == "tx" and tx["hash"] == sent.tx_hash
    assert (tx["height"], tx["code"], tx["signer"], tx["memo"]) == (included.height, 0, sender.address,
                                                                   "explorer test")
    assert (tx["fee_offered"], tx["fee_paid"]) == (minimum + 1234, f"{minimum}ullm") and minimum > 0
    assert tx["messages"] == [{"type": "llmnet.bank.v1.MsgSend", "fields": {
        "from_address": sender.address, "to_address": recipient.address, "amount": "7"}}]
    assert unknown.status_code == 404 and "no tx" in unknown.json()["error"]
    assert none.json()["blocks"] == [] and none.json()["older"] is None
    assert too_many.status_code == 400
    assert [b["height"] for b in some.json()["blocks"]] == [top - 2, top - 3, top - 4]
    after = some.json()
    assert after["older"] == top - 4 and after["newer"] == min(top + 1, after["latest"]) + 1  # next 3 up


def test_a_flood_of_chart_requests_costs_one_computation_a_second(chain: ProtocolChain) -> None:
    """The experts and reputation views make a query per domain or per expert, on the event loop that answers
    CometBFT: each is computed at most once every KEPT_SECONDS, whatever the rate of requests."""
    from llmnet.node.explorer.data import KEPT_SECONDS

    asked: list[str] = []
    real = router_query(chain.app)

    def counting(method: str, request: Any, response: Any) -> Any:
        asked.append(method)
        return real(method, request, response)

    now = [100.0]
    data = ExplorerData(counting, CometRPC("http://127.0.0.1:1", timeout=1), clock=lambda: now[0])
    first = data.reputation()
    per_view = len(asked)
    assert per_view > 6 and asked.count("ReputationHistory") == 6
    for _ in range(50):
        assert data.reputation() == first
    assert len(asked) == per_view  # the same view, no query made
    data.experts()
    both = len(asked)
    for _ in range(10):
        data.experts()
    assert len(asked) == both
    now[0] += KEPT_SECONDS  # a second later: computed again
    data.reputation()
    data.experts()
    assert len(asked) == 2 * both

    def failing(method: str, request: Any, response: Any) -> Any:
        asked.append(method)
        raise QueryFailed(f"{method}: the store is gone")

    broken = ExplorerData(failing, CometRPC("http://127.0.0.1:1", timeout=1), clock=lambda: now[0])
    del asked[:]
    for _ in range(20):
        with pytest.raises(QueryFailed, match="store is gone"):
            broken.reputation()
    assert len(asked) == 1  # a failing view is not asked again for every request either
