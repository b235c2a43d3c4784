"""The explorer's HTTP API over a real in-process chain (CometBFT itself is exercised in the browser e2e test)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmnet.node.cometrpc import CometRPC
from llmnet.node.explorer.data import ExplorerData, router_query
from llmnet.node.explorer.server import STATIC, Explorer
from tests.conftest import free_port
from tests.protocol_harness import ProtocolChain
from tests.test_protocol import DOMAIN, answer_round, score, submit
from wire.llmnet.query.v1 import query_pb2 as q


def _get_all(chain: ProtocolChain, paths: list[str]) -> list[httpx.Response]:
    async def run() -> list[httpx.Response]:
        rpc = CometRPC(f"http://127.0.0.1:{free_port()}", timeout=2)
        explorer = Explorer(ExplorerData(router_query(chain.app), rpc), "127.0.0.1:0")
        port = await explorer.start()
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                return [await http.get(p) for p in paths]
        finally:
            await explorer.stop()
            await rpc.close()

    return asyncio.run(run())


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
    queries, experts, reputation = (r.json() for r in _get_all(chain, ["/api/queries", "/api/experts",
                                                                        "/api/reputation"]))
    assert [x["id"] for x in queries] == [open_query, settled]
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
