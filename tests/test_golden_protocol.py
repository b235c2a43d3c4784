"""Golden app hashes of a fixed protocol scenario: registration, draws, answer rounds with a miss,
scoring with a silent scorer, settlement, equivocation evidence, unbonding and unjailing.

A change here changes consensus: update the file deliberately (python -m tests.test_golden_protocol)
and say why in the commit.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

from google.protobuf.message import Message

from llmnet.client import protocol
from llmnet.client.keys import Key
from tests.protocol_harness import CHAIN_ID, ProtocolChain
from wire.llmnet.experts.v1 import experts_pb2 as ex
from wire.llmnet.inference.v1 import inference_pb2 as inf
from wire.llmnet.query.v1 import query_pb2 as q

GOLDEN = Path(__file__).parent / "golden" / "protocol_app_hash.json"
DOMAINS = ["island-herbalism", "kestrel-lang"]


def _work(c: ProtocolChain, query_id: int, skip: set[str], scores: list[int]) -> list[bytes]:
    """Everyone of query_id not in skip does its part for the query's current phase."""
    st = c.status(query_id).query
    if st.phase in (inf.PHASE_ANSWER_COMMIT, inf.PHASE_ANSWER_REVEAL):
        def answer(k: Key) -> Message:
            text = f"answer of {k.address[-6:]} r{st.round}"
            if st.phase == inf.PHASE_ANSWER_COMMIT:
                return protocol.commit_answer(k, CHAIN_ID, st.id, st.round, text)
            return protocol.reveal_answer(k, CHAIN_ID, st.id, st.round, text)
        return [c.tx(c.key_of(a), answer(c.key_of(a))) for a in st.respondents if a not in skip]
    if st.phase in (inf.PHASE_SCORE_COMMIT, inf.PHASE_SCORE_REVEAL):
        def scored(k: Key, j: int) -> Message:
            mine = [(v + 7 * j) % 101 for v in scores[:len(st.respondents)]]
            if st.phase == inf.PHASE_SCORE_COMMIT:
                return protocol.commit_scores(k, CHAIN_ID, st.id, mine)
            return protocol.reveal_scores(k, CHAIN_ID, st.id, mine)
        return [c.tx(c.key_of(s), scored(c.key_of(s), j)) for j, s in enumerate(st.scorers) if s not in skip]
    return []


def golden_scenario(db: Path) -> list[str]:
    c = ProtocolChain(db, 7, DOMAINS)
    out: list[str] = []

    def block(*txs: bytes) -> None:
        c.block(*txs)
        out.append(c.app.committed.app_hash.hex())

    c.register_all(DOMAINS)
    block(c.tx(c.requester, protocol.submit_query(c.requester, DOMAINS[0], "Which plant?", 100_000, 2, 2)),
          c.tx(c.requester, protocol.submit_query(c.requester, DOMAINS[1], "Which keyword?", 50_000, 3, 1)))
    first, second = 1, 2
    block()  # the draw
    late = c.status(second).query.respondents[0]
    silent = c.status(second).query.scorers[-1]
    for _ in range(30):
        phases = [c.status(i).query.phase for i in (first, second)]
        if all(p == inf.PHASE_SETTLED for p in phases):
            break
        block(*_work(c, first, set(), [90, 40, 70]), *_work(c, second, {late, silent}, [20, 95, 60]))
    # evidence: two different signed answers of one respondent for one round
    cheat = c.key_of(c.status(first).query.respondents[1])
    sig_a = protocol.sign_answer(cheat, CHAIN_ID, first, 1, "A")
    sig_b = protocol.sign_answer(cheat, CHAIN_ID, first, 1, "B")
    block(c.tx(c.reporter, protocol.report_equivocation(c.reporter, cheat.address, first, 1, "A", sig_a, "B", sig_b)))
    leaver = c.experts[-1]
    block(c.tx(leaver, ex.MsgUnbondExpert(address=leaver.address)))
    for _ in range(22):
        block()
    block(c.tx(cheat, ex.MsgUnjail(address=cheat.address)))
    for query_id in (first, second):
        receipt = c.query("Receipt", q.ReceiptRequest(query_id=query_id), q.ReceiptResponse)
        out.append(hashlib.sha256(receipt.receipt.SerializeToString(deterministic=True)).hexdigest())
    c.app.close()
    return out


def test_golden_protocol_app_hashes(tmp_path: Path) -> None:
    assert golden_scenario(tmp_path / "s.db") == json.loads(GOLDEN.read_text())


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as d:
        GOLDEN.write_text(json.dumps(golden_scenario(Path(d) / "s.db"), indent=1) + "\n")
