"""Invariants of the protocol over random sequences of every message kind (Hypothesis)."""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from abci_app.context import BlockEnv, Ctx
from abci_app.crypto import parse_address
from abci_app.store.state import State
from abci_app.x.experts.types import (
    BONDED_POOL,
    EXPERT_PREFIX,
    REPUTATION_PREFIX,
    UNBONDING_POOL,
    selection_weight,
)
from abci_app.x.inference.types import ESCROW, EV_QUERY_SETTLED, QUERY_PREFIX
from llmnet.client import protocol
from llmnet.client.events import query_ids
from tests.protocol_harness import CHAIN_ID, ProtocolChain
from wire.llmnet.bank.v1 import bank_pb2
from wire.llmnet.experts.v1 import experts_pb2 as ex
from wire.llmnet.inference.v1 import inference_pb2 as inf

DOMAINS = ["kestrel-lang", "island-herbalism"]
N = 7

submit = st.tuples(st.just("submit"), st.sampled_from(DOMAINS), st.integers(1, 3), st.integers(1, 2),
                   st.sampled_from([3_000, 100_000]))
action = st.one_of(
    submit, submit, submit,
    # (kind, query id, which participant, ...): aimed at the query's real participants
    st.tuples(st.just("commit"), st.integers(1, 3), st.integers(0, 2)),
    st.tuples(st.just("reveal"), st.integers(1, 3), st.integers(0, 2), st.booleans()),
    st.tuples(st.just("score_commit"), st.integers(1, 3), st.integers(0, 2), st.integers(0, 100)),
    st.tuples(st.just("score_reveal"), st.integers(1, 3), st.integers(0, 2), st.integers(0, 100)),
    st.tuples(st.just("unbond"), st.integers(0, N - 1)),
    st.tuples(st.just("unjail"), st.integers(0, N - 1)),
    st.tuples(st.just("register"), st.integers(0, N - 1)),
    st.tuples(st.just("equivocate"), st.integers(0, N - 1), st.integers(1, 3)),
    st.tuples(st.just("blocks"), st.integers(1, 4)),
    # every participant of query q does its part, phase after phase, until it settles
    st.tuples(st.just("all"), st.integers(1, 3), st.integers(0, 100)),
    st.tuples(st.just("all"), st.integers(1, 3), st.integers(0, 100)),
)


def everyone(c: ProtocolChain, query_id: int, base: int) -> list[bytes]:
    try:
        q = c.status(query_id).query
    except AssertionError:
        return []
    scores = [(base + 17 * i) % 101 for i in range(len(q.respondents))]
    acts = {
        inf.PHASE_ANSWER_COMMIT: lambda k: protocol.commit_answer(k, CHAIN_ID, q.id, q.round, f"ans-{k.name}"),
        inf.PHASE_ANSWER_REVEAL: lambda k: protocol.reveal_answer(k, CHAIN_ID, q.id, q.round, f"ans-{k.name}"),
        inf.PHASE_SCORE_COMMIT: lambda k: protocol.commit_scores(k, CHAIN_ID, q.id, scores),
        inf.PHASE_SCORE_REVEAL: lambda k: protocol.reveal_scores(k, CHAIN_ID, q.id, scores),
    }
    if q.phase not in acts:
        return []
    people = q.respondents if q.phase in (inf.PHASE_ANSWER_COMMIT, inf.PHASE_ANSWER_REVEAL) else q.scorers
    return [c.tx(c.key_of(a), acts[q.phase](c.key_of(a))) for a in people]


def to_tx(c: ProtocolChain, a: tuple) -> bytes | None:  # type: ignore[type-arg]
    kind = a[0]
    if kind == "submit":
        return c.tx(c.requester, protocol.submit_query(c.requester, a[1], "p", a[4], a[2], a[3]))
    if kind == "blocks":
        return None
    if kind in ("commit", "reveal", "score_commit", "score_reveal"):
        try:
            q = c.status(a[1]).query
        except AssertionError:  # no such query yet: send to an expert anyway, it must fail cleanly
            q = inf.Query(id=a[1], round=1, respondents=[c.experts[0].address], scorers=[c.experts[1].address])
        people = list(q.respondents if kind in ("commit", "reveal") else q.scorers) or [c.experts[0].address]
        k = c.key_of(people[a[2] % len(people)])  # (no one drawn yet: an expert tries anyway, and must fail)
        if kind == "commit":
            return c.tx(k, protocol.commit_answer(k, CHAIN_ID, q.id, q.round, f"ans-{k.name}"))
        if kind == "reveal":
            return c.tx(k, protocol.reveal_answer(k, CHAIN_ID, q.id, q.round, f"ans-{k.name}" if a[3] else "other"))
        scores = [(a[3] + 17 * i) % 101 for i in range(len(q.respondents))]
        if kind == "score_commit":
            return c.tx(k, protocol.commit_scores(k, CHAIN_ID, q.id, scores))
        return c.tx(k, protocol.reveal_scores(k, CHAIN_ID, q.id, scores))
    k = c.experts[a[1]]
    if kind == "unbond":
        return c.tx(k, ex.MsgUnbondExpert(address=k.address))
    if kind == "unjail":
        return c.tx(k, ex.MsgUnjail(address=k.address))
    if kind == "register":
        return c.tx(k, protocol.register_expert(k, DOMAINS, "h:1", "m", "cd" * 32, 5_000_000))
    sig_a = protocol.sign_answer(k, CHAIN_ID, a[2], 1, "A")
    sig_b = protocol.sign_answer(k, CHAIN_ID, a[2], 1, "B")
    return c.tx(c.reporter, protocol.report_equivocation(c.reporter, k.address, a[2], 1, "A", sig_a, "B", sig_b))


def check_invariants(c: ProtocolChain, settled: Counter[int]) -> None:
    ctx = Ctx(State(c.app.committed), BlockEnv(CHAIN_ID, c.height, 0, b""))
    bank = c.app.bank
    balances = sum(bank_pb2.Balance.FromString(v).amount for _, v in ctx.kv("bank").iterate(b"bal/"))
    assert balances == bank.supply(ctx)  # every token is in some account; burns lower the supply
    queries = [inf.Query.FromString(v) for _, v in ctx.kv("inference").iterate(QUERY_PREFIX)]
    open_fees = sum(q.max_fee for q in queries if q.phase != inf.PHASE_SETTLED)
    assert bank.balance(ctx, ESCROW) == open_fees  # escrow holds exactly the unsettled fees
    experts = [ex.Expert.FromString(v) for _, v in ctx.kv("experts").iterate(EXPERT_PREFIX)]
    bonded = sum(e.bond for e in experts if e.status != ex.EXPERT_STATUS_UNBONDING)
    unbonding = sum(e.bond for e in experts if e.status == ex.EXPERT_STATUS_UNBONDING)
    assert bank.balance(ctx, BONDED_POOL) == bonded and bank.balance(ctx, UNBONDING_POOL) == unbonding
    scale = c.app.experts.params(ctx).reputation_scale
    assert all(0 <= int.from_bytes(v, "big") <= scale for _, v in ctx.kv("experts").iterate(REPUTATION_PREFIX))
    for q in queries:
        drawn = list(q.respondents) + list(q.scorers)
        assert len(drawn) == len(set(drawn)) and q.requester not in drawn
        assert (c.app.inference.receipt(ctx, q.id) is not None) == (q.phase == inf.PHASE_SETTLED)
    assert all(n == 1 for n in settled.values())  # a query settles exactly once
    check_capacity_and_pools(c, ctx, queries, experts)


def check_capacity_and_pools(c: ProtocolChain, ctx: Ctx, queries: list[inf.Query], experts: list[ex.Expert]) -> None:
    """Open assignments count exactly the work still owed; each pool weight is exactly the eligibility
    rule applied to the expert's record and reputation (what the draw reads)."""
    owed: Counter[str] = Counter()
    for q in queries:
        if q.phase in (inf.PHASE_ANSWER_COMMIT, inf.PHASE_ANSWER_REVEAL):
            owed.update(q.respondents)
        if q.phase != inf.PHASE_SETTLED:
            owed.update(q.scorers)
    params = c.app.experts.params(ctx)
    for e in experts:
        assert e.open_assignments == owed[e.address] and 1 <= e.capacity
        address = parse_address(e.address)
        free = e.status == ex.EXPERT_STATUS_ACTIVE and e.open_assignments < e.capacity
        for domain in DOMAINS:
            pool = c.app.experts.pool(ctx, domain)
            slot = pool.slot_of(address)
            want = selection_weight(c.app.experts.reputation(ctx, domain, address), params.exploration_floor,
                                    params.selection_exponent) if free and domain in e.domains else 0
            assert (0 if slot is None else pool.weight(slot)) == want
    for domain in DOMAINS:
        pool = c.app.experts.pool(ctx, domain)
        assert pool.total() == sum(pool.weight(s) for s in range(1, pool.tree.size + 1))


def run(db: Path, actions: list[tuple]) -> list[bytes]:  # type: ignore[type-arg]
    c = ProtocolChain(db, N, DOMAINS)
    c.register_all(DOMAINS)
    settled: Counter[int] = Counter()
    hashes = []

    def finalize(txs: list[bytes]) -> None:
        """Every block goes through here: settlements are counted and invariants checked at each."""
        c.finalize(txs)
        settled.update(query_ids(c.last.events, EV_QUERY_SETTLED))
        check_invariants(c, settled)
        hashes.append(c.app.committed.app_hash)

    for a in [*actions, ("blocks", 40)]:  # the tail lets every open query run out its windows and settle
        if a[0] == "all":
            for _ in range(12):
                txs = everyone(c, a[1], a[2])
                if not txs:
                    break
                finalize(txs)
        else:
            raw = to_tx(c, a)
            for txs in [[raw]] if raw is not None else [[] for _ in range(a[1])]:
                finalize(txs)
    c.app.close()
    return hashes


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(action, min_size=10, max_size=40))
def test_invariants_hold_and_two_apps_agree(actions: list[tuple]) -> None:  # type: ignore[type-arg]
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        assert run(Path(a) / "s.db", actions) == run(Path(b) / "s.db", actions)
