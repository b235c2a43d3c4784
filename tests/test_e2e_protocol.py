"""The protocol on a real 4-validator CometBFT net, with scripted experts acting over gRPC.

Six experts: two good, two mediocre, one that commits but never reveals, one that equivocates (signs
two different answers; a watcher reports it). A requester submits 20 two-round queries in two
domains. Everything goes through the nodes' gRPC API as signed txs.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from abci_app.crypto import parse_address
from abci_app.store.links import proves_absence
from abci_app.x.bank.types import balance_key
from abci_app.x.inference.types import receipt_key
from llmnet.client import protocol
from llmnet.client.events import query_ids
from llmnet.client.keys import Key
from llmnet.client.sdk import Client, ClientError, Sender
from llmnet.node.localnet import Localnet
from tests.e2e import header_app_hash, keys, light_proxy, prove_key, rpc
from wire.llmnet.bank.v1 import bank_pb2
from wire.llmnet.experts.v1 import experts_pb2 as ex
from wire.llmnet.inference.v1 import inference_pb2 as inf
from wire.llmnet.query.v1 import query_pb2 as q

pytestmark = pytest.mark.e2e
DOMAINS = ["kestrel-lang", "orbital-logistics"]
ROLES = ["good", "good", "mediocre", "mediocre", "silent", "equivocator"]
QUALITY = {"good": 90, "mediocre": 40}
N_QUERIES = 20


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory, cometbft: str) -> Iterator[Localnet]:
    from tests.conftest import free_base_port

    network = Localnet(tmp_path_factory.mktemp("proto"), cometbft)
    network.create(4, base_port=free_base_port(4), accounts=9, timeout_commit="200ms", timeout_propose="1s",
                   params={"inference": {"scorers": 2, "commit_blocks": 8, "reveal_blocks": 8},
                           "experts": {"max_missed": 2, "default_capacity": 64}})
    try:
        network.start()
        yield network
    finally:
        network.stop()


def answer_text(role: str, query_id: int, round_: int, peers: list[str]) -> str:
    tag = "GOOD" if role in ("good", "equivocator") else "MEH"
    return f"{tag} answer to {query_id}, round {round_}" + (f" (after reading {len(peers)} peers)" if peers else "")


def judge(answer: str) -> int:
    """The scripted scorers' rubric: the answer's quality tag."""
    return 90 if answer.startswith("GOOD") else 40 if answer.startswith("MEH") else 0


class Expert:
    def __init__(self, key, role: str, client: Client, chain_id: str) -> None:  # type: ignore[no-untyped-def]
        self.key, self.role, self.sender, self.chain_id = key, role, Sender(client, key, chain_id), chain_id
        self.done: set[tuple[int, str, int]] = set()
        self.signed: dict[tuple[int, int], list[tuple[str, bytes]]] = {}

    def act(self, st: q.QueryStatusResponse) -> None:
        query = st.query
        me = self.key.address
        step = (query.id, inf.Phase.Name(query.phase), query.round)
        if step in self.done:
            return
        if query.phase in (inf.PHASE_ANSWER_COMMIT, inf.PHASE_ANSWER_REVEAL) and me in query.respondents:
            peers = [a.answer for a in st.answers if a.round == query.round - 1 and a.revealed and a.respondent != me]
            text = answer_text(self.role, query.id, query.round, peers)
            if query.phase == inf.PHASE_ANSWER_COMMIT:
                self.sender.send([protocol.commit_answer(self.key, self.chain_id, query.id, query.round, text)])
                sig = protocol.sign_answer(self.key, self.chain_id, query.id, query.round, text)
                self.signed.setdefault((query.id, query.round), []).append((text, sig))
                if self.role == "equivocator":  # tells another party something else, also signed
                    other = "BAD " + text
                    self.signed[(query.id, query.round)].append(
                        (other, protocol.sign_answer(self.key, self.chain_id, query.id, query.round, other)))
            elif self.role != "silent":
                self.sender.send([protocol.reveal_answer(self.key, self.chain_id, query.id, query.round, text)])
        elif query.phase in (inf.PHASE_SCORE_COMMIT, inf.PHASE_SCORE_REVEAL) and me in query.scorers:
            finals = {a.respondent: a.answer for a in st.answers if a.round == query.rounds and a.revealed}
            scores = [judge(finals.get(r, "")) for r in query.respondents]
            if query.phase == inf.PHASE_SCORE_COMMIT:
                self.sender.send([protocol.commit_scores(self.key, self.chain_id, query.id, scores)])
            elif self.role != "silent":  # silent everywhere: scores delivered would break its run of misses
                self.sender.send([protocol.reveal_scores(self.key, self.chain_id, query.id, scores)])
        else:
            return
        self.done.add(step)


def test_twenty_queries_settle_with_slashing_and_reputation(net: Localnet, proofcheck: str) -> None:
    ks = keys(net)
    requester, reporter, expert_keys = ks[0], ks[7], ks[1:7]
    nodes = [Client(n["grpc"]) for n in net.manifest()["nodes"]]
    try:
        chain_id = nodes[0].status().chain_id
        experts = [Expert(k, role, nodes[i % 4], chain_id) for i, (k, role) in enumerate(zip(expert_keys, ROLES,
                                                                                              strict=True))]
        regs = [e.sender.send([protocol.register_expert(e.key, DOMAINS, f"127.0.0.1:{7100 + i}", "smollm2-135m",
                                                        f"{i:02d}" * 32, 5_000_000)]) for i, e in enumerate(experts)]
        for r in regs:
            assert nodes[0].wait_tx(r.tx_hash, timeout=60).result.code == 0
        asker = Sender(nodes[1], requester, chain_id)
        sent = [asker.send([protocol.submit_query(requester, DOMAINS[n % 2], f"question {n}", 100_000, 2, 2)])
                for n in range(N_QUERIES)]
        ids = []
        for s in sent:
            res = nodes[1].wait_tx(s.tx_hash, timeout=60)
            assert res.result.code == 0, res.result.log
            ids += query_ids(res.result.events)
        reporter_sender = Sender(nodes[2], reporter, chain_id)
        reported: set[tuple[int, int]] = set()
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            statuses = [nodes[0].query.QueryStatus(q.QueryStatusRequest(query_id=i)) for i in ids]
            if all(st.query.phase == inf.PHASE_SETTLED for st in statuses):
                break
            for st in statuses:
                for e in experts:
                    try:
                        e.act(st)
                    except ClientError:
                        pass  # a window closed under us; the chain records the miss
            for e in experts:  # a watcher who got both of an equivocator's answers reports it
                for (qid, rnd), signed in e.signed.items():
                    if len(signed) == 2 and (qid, rnd) not in reported:
                        (a, sa), (b, sb) = signed
                        reporter_sender.send([protocol.report_equivocation(reporter, e.key.address, qid, rnd,
                                                                           a, sa, b, sb)])
                        reported.add((qid, rnd))
            time.sleep(0.2)
        else:
            pytest.fail("not every query settled within 10 minutes")

        receipts = [nodes[0].query.Receipt(q.ReceiptRequest(query_id=i)).receipt for i in ids]
        assert all(r.settled_height > 0 for r in receipts)
        by_role = {role: [nodes[0].query.Expert(q.ExpertRequest(address=e.key.address)) for e in experts
                          if e.role == role] for role in set(ROLES)}
        for role in ("silent", "equivocator"):
            for resp in by_role[role]:
                assert resp.expert.slashed > 0, role
                assert resp.expert.status == ex.EXPERT_STATUS_JAILED, role
        compared = 0
        for domain in DOMAINS:
            def rep(resp: q.ExpertResponse, d: str = domain) -> int:
                return next(r.reputation for r in resp.reputation if r.domain == d)

            # Selection is seeded by block hashes, so an expert may never be drawn to answer in a
            # domain; its reputation there is still the initial one and says nothing. Compare the rest.
            def answered(resp: q.ExpertResponse, d: str = domain) -> bool:
                points = nodes[0].reputation_history(resp.expert.address).points
                return any(p.domain == d and p.reason != "register" for p in points)

            good = [rep(r) for r in by_role["good"] if answered(r)]
            mediocre = [rep(r) for r in by_role["mediocre"] if answered(r)]
            if good and mediocre:
                assert min(good) > max(mediocre), domain
                compared += 1
        assert compared >= 1
        assert reported  # the equivocator was caught at least once
        # all four nodes hold byte-identical receipts, and agree on the app hash
        for i in ids:
            copies = {n.query.Receipt(q.ReceiptRequest(query_id=i)).receipt.SerializeToString() for n in nodes}
            assert len(copies) == 1
        # a receipt is in the Merkle state: prove one against a header's app hash
        proven = prove_key(net, 3, "inference", receipt_key(ids[0]), proofcheck)
        assert proven == receipts[0].SerializeToString()
        top = min(n.status().height for n in nodes)
        net.wait_height(top + 1)
        assert len({header_app_hash(net, j, top + 1) for j in range(4)}) == 1
    finally:
        for n in nodes:
            n.close()


def _proxied(proxy: str, store: str, key: bytes, height: int | None = None) -> dict:  # type: ignore[type-arg]
    """abci_query through the light proxy; it verifies the proof against a header it verified itself."""
    params = {"path": f'"/store/{store}/key"', "data": "0x" + key.hex()}
    if height is not None:
        params["height"] = str(height)
    return httpx.get(f"{proxy}/abci_query", params=params, timeout=60).json()


def test_cometbft_light_proxy_serves_verified_reads(net: Localnet, cometbft: str, tmp_path: Path) -> None:
    """A real `cometbft light` proxy in front of a node: a balance and a receipt come back verified, at the
    default height and at an older kept one; a missing key comes back proven missing."""
    requester = keys(net)[0]
    node = Client(net.manifest()["nodes"][0]["grpc"])
    try:
        settled = [x.id for x in node.query.RecentQueries(q.RecentQueriesRequest(limit=50)).queries
                   if x.phase == inf.PHASE_SETTLED]
        assert settled, "the protocol test settles queries first"
        receipt = node.query.Receipt(q.ReceiptRequest(query_id=settled[0])).receipt
        with light_proxy(cometbft, net, tmp_path / "light", primary=0, witness=1) as proxy:
            bal = _proxied(proxy, "bank", balance_key(parse_address(requester.address)))["result"]["response"]
            height = int(bal["height"])
            assert height > 0 and bal["proofOps"]["ops"]
            direct = rpc(net, 1, "abci_query", path='"/llmnet.query.v1.QueryService/Balance"', height=str(height),
                         data="0x" + q.BalanceRequest(address=requester.address).SerializeToString().hex())
            amount = q.BalanceResponse.FromString(base64.b64decode(direct["response"]["value"])).amount
            assert bank_pb2.Balance.FromString(base64.b64decode(bal["value"])).amount == amount > 0
            rec = _proxied(proxy, "inference", receipt_key(settled[0]))["result"]["response"]
            assert base64.b64decode(rec["value"]) == receipt.SerializeToString()
            older = _proxied(proxy, "bank", balance_key(parse_address(requester.address)), height - 3)
            assert int(older["result"]["response"]["height"]) == height - 3
            nobody = balance_key(parse_address(Key.generate("nobody").address))
            absent = _proxied(proxy, "bank", nobody)["result"]["response"]  # the proxy verified the link's proof
            link, link_value = base64.b64decode(absent["key"]), base64.b64decode(absent["value"])
            assert absent["info"] == "absent" and proves_absence(nobody, link, link_value)
            assert not proves_absence(balance_key(parse_address(requester.address)), link, link_value)
    finally:
        node.close()
