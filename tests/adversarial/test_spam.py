"""Attacks by volume, open to anyone who pays fees: query spam against a small domain, registering
experts to make every query expensive, flooding the end-of-block queues, oversized blocks.

Promises: experts are never drawn beyond the capacity they declared, so spam cannot make honest experts
miss (and a miss alone never costs bond); a query's price grows with the work it forces, not with the
domain's size; one block's work is bounded whatever is queued; no block carries more gas than the limit.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from abci_app.errors import ErrGasLimitTooHigh
from abci_app.x.auth.types import default_params as auth_defaults
from abci_app.x.inference.types import ErrTooFewExperts
from llmnet.client import protocol
from llmnet.client.events import query_ids
from llmnet.client.txbuilder import build_tx, send_msg
from tests.adversarial.conftest import DOMAIN
from tests.protocol_harness import ADAPTER, BOND, CHAIN_ID, ProtocolChain
from wire.llmnet.experts.v1 import experts_pb2 as ex
from wire.llmnet.inference.v1 import inference_pb2 as inf
from wire.llmnet.query.v1 import query_pb2 as q
from wire.tendermint.abci import types_pb2 as abci


def _records(chain: ProtocolChain) -> list[ex.Expert]:
    return [chain.query("Expert", q.ExpertRequest(address=k.address), q.ExpertResponse).expert for k in chain.experts]


def _work_honestly(chain: ProtocolChain, open_ids: list[int]) -> None:
    """Every drawn expert does its part of every open query, as the shipped daemon would."""
    for _ in range(60):
        txs = []
        for qid in open_ids:
            st = chain.status(qid).query
            text = f"answer {qid}"
            if st.phase == inf.PHASE_ANSWER_COMMIT:
                txs += [chain.tx(chain.key_of(a), protocol.commit_answer(chain.key_of(a), CHAIN_ID, qid, st.round,
                                                                         text)) for a in st.respondents]
            elif st.phase == inf.PHASE_ANSWER_REVEAL:
                txs += [chain.tx(chain.key_of(a),
                                 protocol.reveal_answer(chain.key_of(a), CHAIN_ID, qid, st.round, text))
                        for a in st.respondents]
            elif st.phase == inf.PHASE_SCORE_COMMIT:
                txs += [chain.tx(chain.key_of(s), protocol.commit_scores(chain.key_of(s), CHAIN_ID, qid, [80]))
                        for s in st.scorers]
            elif st.phase == inf.PHASE_SCORE_REVEAL:
                txs += [chain.tx(chain.key_of(s), protocol.reveal_scores(chain.key_of(s), CHAIN_ID, qid, [80]))
                        for s in st.scorers]
        chain.block(*txs)
        chain.block()  # one block for the windows to close
        if all(chain.status(i).query.phase == inf.PHASE_SETTLED for i in open_ids):
            return
    raise AssertionError("queries did not settle")


def test_query_spam_cannot_overload_or_slash_honest_experts(tmp_path: Path) -> None:
    chain = ProtocolChain(tmp_path / "s.db", 8, [DOMAIN], experts_params={"max_missed": 3})
    chain.ok(*[chain.tx(k, protocol.register_expert(k, [DOMAIN], f"h:{i}", "m", ADAPTER, BOND, capacity=2))
               for i, k in enumerate(chain.experts)])
    spam = [chain.tx(chain.requester, protocol.submit_query(chain.requester, DOMAIN, f"spam {i}", 1_000, 1, 1))
            for i in range(64)]
    balance = chain.query("Balance", q.BalanceRequest(address=chain.requester.address), q.BalanceResponse).amount
    results = chain.block(*spam)  # 64 minimum-fee queries in one block
    submitted = [i for r in results for i in query_ids(r.events)]
    chain.block()  # their draw
    drawn = [i for i in submitted if chain.status(i).query.phase == inf.PHASE_ANSWER_COMMIT]
    # 8 experts x capacity 2 = 16 slots; each query takes 1 + 3 distinct experts: 4 queries when the draws use
    # every expert twice, 3 when the last one finds fewer than 4 experts with room (which depends on the seed)
    assert 3 <= len(drawn) <= 16 // 4
    assert all(e.open_assignments <= e.capacity for e in _records(chain))
    for i in set(submitted) - set(drawn):  # the rest found no capacity at their draw: escrow back in full
        receipt = chain.query("Receipt", q.ReceiptRequest(query_id=i), q.ReceiptResponse).receipt
        assert [(p.role, p.amount) for p in receipt.payouts] == [("refund", 1_000)]
    spent = balance - chain.query("Balance", q.BalanceRequest(address=chain.requester.address),
                                  q.BalanceResponse).amount
    assert spent >= 64 * 5_000 + len(drawn) * 1_000  # gas fees are not refunded: spam is paid for
    full = chain.tx(chain.requester, protocol.submit_query(chain.requester, DOMAIN, "one more", 1_000, 1, 1))
    (refused,) = chain.block(full)  # with every slot taken, a submit is refused at once
    assert (refused.codespace, refused.code) == (ErrTooFewExperts.codespace, ErrTooFewExperts.code)
    one_tx = chain.tx(chain.requester, *[protocol.submit_query(chain.requester, DOMAIN, f"x{i}", 1_000, 1, 1)
                                         for i in range(64)])
    (batch,) = chain.block(one_tx)
    assert batch.code != 0  # the same spam packed in one tx fails whole
    _work_honestly(chain, drawn)
    for e in _records(chain):
        assert e.slashed == 0 and e.bond == BOND and e.status == ex.EXPERT_STATUS_ACTIVE, e
        assert e.open_assignments == 0


def test_a_submit_costs_the_same_gas_in_a_crowded_domain(tmp_path: Path) -> None:
    """Registering refundable bonds used to push every submit past its gas limit (80 experts)."""
    used = {}
    for n in (8, 160):
        chain = ProtocolChain(tmp_path / f"{n}.db", n, [DOMAIN])
        for first in range(0, n, 40):
            chain.ok(*[chain.tx(k, protocol.register_expert(k, [DOMAIN], "h:1", "m", ADAPTER, BOND))
                       for k in chain.experts[first:first + 40]])
        msg = protocol.submit_query(chain.requester, DOMAIN, "Who created Kestrel?", 100_000, 2, 2)
        (result,) = chain.block(chain.tx(chain.requester, msg))
        assert result.code == 0, result.log
        used[n] = result.gas_used
    assert used[160] < used[8] * 1.15, used  # O(log n): a few more tree reads per pick
    assert used[160] < 200_000  # the fixed gas of earlier clients still suffices


def test_end_of_block_work_is_bounded_and_nothing_is_lost(tmp_path: Path) -> None:
    chain = ProtocolChain(tmp_path / "s.db", 6, [DOMAIN], inference_params={"max_closes_per_block": 2},
                          experts_params={"default_capacity": 64})
    chain.register_all([DOMAIN])
    results = chain.block(*[chain.tx(chain.requester, protocol.submit_query(
        chain.requester, DOMAIN, f"q{i}", 1_000, 1, 1)) for i in range(9)])
    ids = [i for r in results for i in query_ids(r.events)]
    assert len(ids) == 9  # all their commit windows close at the same height
    phases = [chain.status(i).query.phase for i in ids]
    settled: list[int] = []
    for _ in range(80):  # nobody answers: every phase change is begin- or end-of-block work
        chain.block()
        now = [chain.status(i).query.phase for i in ids]
        changed = [(a, b) for a, b in zip(phases, now, strict=True) if a != b]
        assert sum(a == inf.PHASE_AWAITING_DRAW for a, _ in changed) <= 2  # draws: max_closes_per_block
        assert sum(a != inf.PHASE_AWAITING_DRAW for a, _ in changed) <= 2  # window closes: the same bound
        settled += query_ids(chain.last.events, "query_settled")
        phases = now
        if all(p == inf.PHASE_SETTLED for p in phases):
            break
    assert sorted(settled) == sorted(ids)  # every query settled, exactly once


def test_the_deadline_scan_never_walks_old_deleted_keys(tmp_path: Path) -> None:
    """Deleted deadline keys stay in the store for good (its Merkle log is append-only); the scan must seek
    past them instead of reading them every block."""
    chain = ProtocolChain(tmp_path / "s.db", 6, [DOMAIN], experts_params={"default_capacity": 64, "max_missed": 1000})
    chain.register_all([DOMAIN])
    for i in range(30):  # queries come and go: each leaves deleted deadline keys behind
        chain.ok(chain.tx(chain.requester, protocol.submit_query(chain.requester, DOMAIN, f"q{i}", 1_000, 1, 1)))
        chain.block()
    chain.advance_until(30, inf.PHASE_SETTLED, limit=60)
    seen: list[tuple[bytes, bytes | None]] = []
    committed = chain.app.committed
    original = committed.iterate

    def spy(store: str, start: bytes, end: bytes | None, limit: int | None = None,
            reverse: bool = False) -> list[tuple[bytes, bytes]]:
        if store == "inference" and start.startswith(b"dl/"):
            seen.append((start, end))
        return original(store, start, end, limit, reverse)

    committed.iterate = spy  # type: ignore[method-assign]
    chain.block()
    height = chain.height.to_bytes(8, "big")
    assert seen == [(b"dl/" + height, b"dl/" + (chain.height + 1).to_bytes(8, "big"))]
    deleted = committed._db.execute("SELECT COUNT(*) FROM kv WHERE store='inference' AND key>=? AND key<? AND "
                                    "value IS NULL", (b"dl/", b"dl0")).fetchone()[0]
    assert deleted >= 60  # what the old scan read every block


def test_no_block_carries_more_gas_than_the_limit(tmp_path: Path) -> None:
    chain = ProtocolChain(tmp_path / "s.db", 0, [DOMAIN])
    limit = auth_defaults().max_block_gas
    key = chain.requester
    huge = build_tx(key, CHAIN_ID, 0, [send_msg(key.address, chain.reporter.address, 1)], fee=limit,
                    gas_limit=limit + 1)
    resp = chain.app.check_tx(abci.RequestCheckTx(tx=huge))
    assert (resp.codespace, resp.code) == (ErrGasLimitTooHigh.codespace, ErrGasLimitTooHigh.code)
    half = limit // 2 + 1
    txs = [build_tx(key, CHAIN_ID, i, [send_msg(key.address, chain.reporter.address, 1)],
                    fee=half // 100 + 1, gas_limit=half) for i in range(2)]
    time = Timestamp(seconds=1_700_000_100)
    prepared = chain.app.prepare_proposal(abci.RequestPrepareProposal(txs=txs, max_tx_bytes=10**7, height=1,
                                                                      time=time))
    assert list(prepared.txs) == txs[:1]  # (block 1 has no beacon: no votes came before it)
    verdict = chain.app.process_proposal(abci.RequestProcessProposal(txs=txs, height=1, time=time, hash=b"\x02" * 32))
    assert verdict.status == abci.ResponseProcessProposal.REJECT


def test_a_listing_query_cannot_make_the_node_walk_everything(tmp_path: Path) -> None:
    """ExpertsByDomain and ReputationHistory run on the loop that serves CometBFT: each answer is one
    bounded page, whatever the state holds."""
    chain = ProtocolChain(tmp_path / "s.db", 130, [DOMAIN])
    for first in range(0, 130, 65):
        chain.ok(*[chain.tx(k, protocol.register_expert(k, [DOMAIN], "h:1", "m", ADAPTER, BOND))
                   for k in chain.experts[first:first + 65]])
    page = chain.query("ExpertsByDomain", q.ExpertsByDomainRequest(domain=DOMAIN), q.ExpertsByDomainResponse)
    assert len(page.experts) == 100 and page.next_after
    rest = chain.query("ExpertsByDomain", q.ExpertsByDomainRequest(domain=DOMAIN, after=page.next_after),
                       q.ExpertsByDomainResponse)
    assert len(rest.experts) == 30 and not rest.next_after
    for request, response in ((q.ExpertsByDomainRequest(domain=DOMAIN, limit=10_000), q.ExpertsByDomainResponse),
                              (q.ReputationHistoryRequest(address=chain.experts[0].address, limit=10_000),
                               q.ReputationHistoryResponse)):
        method = "ExpertsByDomain" if response is q.ExpertsByDomainResponse else "ReputationHistory"
        with pytest.raises(AssertionError, match="query/3"):
            chain.query(method, request, response)


def test_refused_txs_cannot_pin_memory_in_the_nodes_caches(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Large txs from a key with no funds are refused and pay nothing. The decoded-tx cache held each one's
    bytes and parse, 50,000 of them (about 11 GB of 60 KB txs), and the signature cache each one's sign
    bytes: both are bounded by what they hold now, and a refusal still reads the same."""
    import tempfile

    from abci_app import app as app_module
    from llmnet.devchain import DevChain, seeded_key

    monkeypatch.setattr(app_module, "DECODE_CACHE_BYTES", 400_000)
    chain = DevChain(Path(tempfile.mkdtemp(dir=tmp_path)) / "s.db", [seeded_key("a")], 10**9)
    chain.block()
    nobody = seeded_key("penniless")
    for i in range(40):
        msg = protocol.submit_query(nobody, DOMAIN, "Q" * 60_000 + str(i), 1_000, 1, 1)
        tx = build_tx(nobody, chain.chain_id, i % 3, [msg], fee=7_000, gas_limit=700_000)
        first = chain.app.check_tx(abci.RequestCheckTx(tx=tx))
        again = chain.app.check_tx(abci.RequestCheckTx(tx=tx))  # from the cache, when it is still there
        assert first.code != 0 and (again.code, again.log) == (first.code, first.log)
    kept = chain.app._decoded
    assert sum(size for size, _ in kept.values()) <= 400_000 and chain.app._decoded_bytes <= 400_000
    assert all(len(key) == 32 for key in kept)
    assert all(len(message) == 32 for _, message, _ in chain.app.ante.sigs._seen)


def test_experts_gone_cannot_hide_the_live_ones_from_a_listing(tmp_path: Path) -> None:
    """Reputation rows outlive an expert that unbonded for good. A page of the domain's experts read limit+1
    rows and dropped the gone ones after: a run of them (sybils with addresses sorting first, registered and
    unbonded) came back as an empty last page, and listings showed no expert at all."""
    from abci_app.crypto import parse_address
    from llmnet.client.sdk import Client
    from tests.adversarial.conftest import node_api

    chain = ProtocolChain(tmp_path / "s.db", 5, [DOMAIN])
    chain.register_all([DOMAIN])
    order = sorted(chain.experts, key=lambda k: parse_address(k.address))
    gone, live = order[:3], order[3:]
    chain.ok(*[chain.tx(k, ex.MsgUnbondExpert(address=k.address)) for k in gone])
    for _ in range(205):  # past unbonding: their records go, their reputation rows stay
        chain.block()
    listed, after = [], ""
    for _ in range(10):
        page = chain.query("ExpertsByDomain", q.ExpertsByDomainRequest(domain=DOMAIN, limit=2, after=after),
                           q.ExpertsByDomainResponse)
        assert len(page.experts) <= 2
        listed += [r.expert.address for r in page.experts]
        after = page.next_after
        if not after:
            break
    assert sorted(listed) == sorted(k.address for k in live)
    with node_api(chain) as node:
        client = Client(node)
        assert sorted(r.expert.address for r in client.experts(DOMAIN).experts) == sorted(k.address for k in live)
        client.close()


def test_a_gas_limit_beyond_what_abci_can_carry_is_refused_and_the_node_serves_on(tmp_path: Path) -> None:
    """A tx's gas limit is a uint64 and ABCI's gas wanted an int64: for 2^63 or more the refusal itself could
    not be built, and the ABCI server stops the node on any such error. It took no key, no funds and no valid
    signature (the gas check comes first): one tx to any node's RPC stopped it."""
    from llmnet.node.abci.server import ABCIServer

    chain = ProtocolChain(tmp_path / "s.db", 1, [DOMAIN])
    server, key = ABCIServer(chain.app), chain.experts[0]
    for gas in (2**63, 2**64 - 1):
        raw = build_tx(key, CHAIN_ID, 0, [send_msg(key.address, chain.reporter.address, 1)], fee=0, gas_limit=gas)
        checked = server.handle(abci.Request(check_tx=abci.RequestCheckTx(tx=raw))).check_tx
        assert (checked.codespace, checked.code) == (ErrGasLimitTooHigh.codespace, ErrGasLimitTooHigh.code)
        assert "signed 64-bit" in checked.log
        assert chain.app.simulate(raw).code == ErrGasLimitTooHigh.code
    fine = chain.tx(chain.requester, send_msg(chain.requester.address, chain.reporter.address, 1))
    assert server.handle(abci.Request(check_tx=abci.RequestCheckTx(tx=fine))).check_tx.code == 0
