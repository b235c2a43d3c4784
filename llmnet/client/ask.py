"""Ask the network: submit a query, follow it block by block, and collect the settled outcome."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from llmnet.client import protocol
from llmnet.client.events import query_ids
from llmnet.client.keys import Key
from llmnet.client.provisional import Provisional
from llmnet.client.sdk import MAX_TX_FEE, Client, ClientError, Sender, TxRejected
from wire.llmnet.inference.v1 import inference_pb2 as inf
from wire.llmnet.query.v1 import query_pb2

PHASE_TEXT = {inf.PHASE_AWAITING_DRAW: "waiting for the next block to draw its experts",
              inf.PHASE_ANSWER_COMMIT: "answers committing", inf.PHASE_ANSWER_REVEAL: "answers revealing",
              inf.PHASE_SCORE_COMMIT: "scores committing", inf.PHASE_SCORE_REVEAL: "scores revealing",
              inf.PHASE_SETTLED: "settled"}


@dataclass
class Answer:
    respondent: str
    text: str
    score: int
    paid: int
    final: bool


@dataclass
class AskResult:
    query_id: int
    domain: str
    final_answer: str
    settled_height: int
    answers: list[Answer] = field(default_factory=list)
    payouts: list[dict[str, object]] = field(default_factory=list)
    refund: int = 0
    missed: list[str] = field(default_factory=list)
    """Experts that missed a duty of the query (Receipt.missed)."""
    provisional: list[Provisional] = field(default_factory=list)
    """The drawn experts' round-1 answers as fetched before settlement (llmnet/client/provisional.py)."""


def submit(client: Client, key: Key, domain: str, prompt: str, max_fee: int, k: int, rounds: int,
           max_tx_fee: int = MAX_TX_FEE) -> int:
    """Submit the query (gas estimated by simulation) and wait for its block; returns the query id.
    Raises TxRejected, before any fee is spent when the simulation already fails, and FeeTooHigh when the tx's
    fee would exceed max_tx_fee."""
    sent = Sender(client, key, max_fee=max_tx_fee).send(
        [protocol.submit_query(key, domain, prompt, max_fee, k, rounds)], gas_limit=None)
    return included_query(client, sent.tx_hash)


def included_query(client: Client, tx_hash: str, timeout: float = 30.0) -> int:
    """The id of the query a broadcast submit created, once its block is committed. Raises TxRejected
    when the tx failed in its block."""
    res = client.wait_tx(tx_hash, timeout=timeout)
    if res.result.code:
        raise TxRejected(tx_hash, res.result.code, res.result.codespace, res.result.log)
    return query_ids(res.result.events)[0]


def drawn(client: Client, query_id: int, timeout: float = 60.0, poll: float = 0.2) -> query_pb2.QueryStatusResponse:
    """The query's status once its respondents and scorers are drawn (the block after its submit), or
    once it settled without (no capacity left at the draw). Raises ClientError on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        st = client.query_status(query_id)
        if st.query.phase != inf.PHASE_AWAITING_DRAW:
            return st
        if time.monotonic() > deadline:
            raise ClientError(f"query {query_id} was not drawn within {timeout:.0f}s",
                              grpc.StatusCode.DEADLINE_EXCEEDED)
        time.sleep(poll)


def progress_line(st: query_pb2.QueryStatusResponse) -> str:
    q = st.query
    if q.phase in (inf.PHASE_ANSWER_COMMIT, inf.PHASE_ANSWER_REVEAL):
        this_round = [a for a in st.answers if a.round == q.round]
        revealed = sum(a.revealed for a in this_round)
        return (f"query {q.id}: round {q.round}/{q.rounds} {PHASE_TEXT[q.phase]} — {len(this_round)}/{q.k} "
                f"committed, {revealed}/{q.k} revealed (until height {q.deadline})")
    if q.phase in (inf.PHASE_SCORE_COMMIT, inf.PHASE_SCORE_REVEAL):
        scores = list(st.scores)
        return (f"query {q.id}: {PHASE_TEXT[q.phase]} — {len(scores)}/{len(q.scorers)} committed, "
                f"{sum(s.revealed for s in scores)}/{len(q.scorers)} revealed (until height {q.deadline})")
    return f"query {q.id}: {PHASE_TEXT.get(q.phase, 'unknown phase')}"


def follow(client: Client, query_id: int, on_progress: Callable[[str], None], poll: float = 0.1,
           timeout: float = 600.0, on_drawn: Callable[[inf.Query], None] | None = None) -> AskResult:
    """Poll until settled, reporting each change once; on_drawn sees the query once its respondents are
    drawn (to fetch provisional answers). Raises ClientError on timeout."""
    deadline = time.monotonic() + timeout
    last, announced = "", False
    while True:
        st = _status_of_a_known_query(client, query_id, poll)
        if not announced and st.query.respondents:  # drawn in the block after the submit
            if on_drawn is not None:
                on_drawn(st.query)
            on_progress(f"query {query_id} in {st.query.domain}: respondents {', '.join(st.query.respondents)}; "
                        f"scorers {', '.join(st.query.scorers)}")
            announced = True
        line = progress_line(st)
        if line != last:
            on_progress(line)
            last = line
        if st.query.phase == inf.PHASE_SETTLED:
            return outcome(client, query_id)
        if time.monotonic() > deadline:
            raise ClientError(f"query {query_id} did not settle within {timeout:.0f}s; "
                              f"follow it with: llmnet query status {query_id}", grpc.StatusCode.DEADLINE_EXCEEDED)
        time.sleep(poll)


LAG_GRACE = 30.0
"""How long a node may not know a query another node included (it is behind, e.g. after a failover)."""


def _status_of_a_known_query(client: Client, query_id: int, poll: float) -> query_pb2.QueryStatusResponse:
    """The status of a query known to be on chain: a node that answers "no such query" has not caught up
    with the block that holds it yet, so ask again for a while instead of failing."""
    deadline = time.monotonic() + LAG_GRACE
    while True:
        try:
            return client.query_status(query_id)
        except ClientError as err:
            if err.status != grpc.StatusCode.NOT_FOUND or time.monotonic() > deadline:
                raise
        time.sleep(poll)


def outcome(client: Client, query_id: int) -> AskResult:
    st = client.query_status(query_id)
    receipt = client.receipt(query_id).receipt
    payouts = list(client.explain_payout(query_id).payouts)
    finals = {a.respondent: a.answer for a in st.answers if a.round == st.query.rounds and a.revealed}
    paid = {p.address: p.amount for p in payouts if p.role == "respondent"}
    answers = [Answer(r, finals.get(r, ""), int(receipt.scores[i]) if i < len(receipt.scores) else 0,
                      paid.get(r, 0), i == receipt.final_index)
               for i, r in enumerate(receipt.respondents)]
    return AskResult(query_id, receipt.domain, receipt.final_answer, receipt.settled_height, answers,
                     [{"address": p.address, "role": p.role, "amount": p.amount, "reason": p.reason}
                      for p in payouts],
                     sum(p.amount for p in payouts if p.role == "refund"), list(receipt.missed))
