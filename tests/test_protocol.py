"""The LLM-Net protocol through the real state machine, in process."""

from __future__ import annotations

from pathlib import Path

import pytest

from abci_app.crypto import parse_address
from abci_app.x.experts.types import ErrBondTooLow, ErrUnknownDomain
from abci_app.x.inference.types import (
    ErrCommitMismatch,
    ErrNotAssigned,
    ErrTooFewExperts,
    ErrWrongPhase,
)
from llmnet.client import protocol
from llmnet.client.events import query_ids
from tests.protocol_harness import BOND, CHAIN_ID, ProtocolChain
from wire.llmnet.experts.v1 import experts_pb2 as ex
from wire.llmnet.inference.v1 import inference_pb2 as inf
from wire.llmnet.query.v1 import query_pb2 as q

DOMAIN = "kestrel-lang"


@pytest.fixture
def chain(tmp_path: Path) -> ProtocolChain:
    c = ProtocolChain(tmp_path / "s.db", 6, [DOMAIN, "island-herbalism"])
    c.register_all([DOMAIN])
    return c


def submit(chain: ProtocolChain, fee: int = 100_000, k: int = 2, rounds: int = 2) -> int:
    chain.ok(chain.tx(chain.requester, protocol.submit_query(chain.requester, DOMAIN, "Who created Kestrel?",
                                                             fee, k, rounds)))
    qid = query_ids(chain.last_results[0].events)[0]
    chain.block()  # the draw: first thing in the next block
    return qid


def answer_round(chain: ProtocolChain, qid: int, round_: int, skip_reveal: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    st = chain.status(qid).query
    keys = [chain.key_of(a) for a in st.respondents]
    chain.ok(*[chain.tx(k, protocol.commit_answer(k, CHAIN_ID, qid, round_, f"Marta Vensel (r{round_} by {k.name})"))
               for k in keys])
    chain.ok(*[chain.tx(k, protocol.reveal_answer(k, CHAIN_ID, qid, round_, f"Marta Vensel (r{round_} by {k.name})"))
               for k in keys if k.address not in skip_reveal])
    if skip_reveal:  # wait out the reveal window
        chain.advance_until(qid, inf.PHASE_ANSWER_COMMIT, round_ + 1)


def score(chain: ProtocolChain, qid: int, scores: list[int]) -> None:
    st = chain.status(qid).query
    keys = [chain.key_of(a) for a in st.scorers]
    chain.ok(*[chain.tx(k, protocol.commit_scores(k, CHAIN_ID, qid, scores)) for k in keys])
    chain.ok(*[chain.tx(k, protocol.reveal_scores(k, CHAIN_ID, qid, scores)) for k in keys])
    chain.block()


def total_supply_and_balances(chain: ProtocolChain) -> tuple[int, int]:
    supply = chain.query("Supply", q.SupplyRequest(), q.SupplyResponse).amount
    from abci_app.context import BlockEnv, Ctx
    from abci_app.store.state import State
    from wire.llmnet.bank.v1 import bank_pb2

    ctx = Ctx(State(chain.app.committed), BlockEnv("", 0, 0, b""))
    total = sum(bank_pb2.Balance.FromString(v).amount for _, v in ctx.kv("bank").iterate(b"bal/"))
    return supply, total


def test_two_round_query_settles_pays_and_updates_reputation(chain: ProtocolChain) -> None:
    supply_before, _ = total_supply_and_balances(chain)
    qid = submit(chain)
    st = chain.status(qid)
    assert st.query.phase == inf.PHASE_ANSWER_COMMIT and len(set(st.query.respondents) | set(st.query.scorers)) == 5
    assert chain.query("ExplainSelection", q.ExplainSelectionRequest(query_id=qid), q.ExplainSelectionResponse).matches
    answer_round(chain, qid, 1)
    st = chain.status(qid)
    assert st.query.round == 2 and st.query.phase == inf.PHASE_ANSWER_COMMIT
    assert [a.revealed for a in st.answers] == [True, True]  # round 1 visible before round 2
    answer_round(chain, qid, 2)
    assert chain.status(qid).query.phase == inf.PHASE_SCORE_COMMIT
    score(chain, qid, [90, 40])
    st = chain.status(qid)
    assert st.query.phase == inf.PHASE_SETTLED
    receipt = chain.query("Receipt", q.ReceiptRequest(query_id=qid), q.ReceiptResponse).receipt
    assert list(receipt.scores) == [90, 40] and receipt.final_index == 0
    assert receipt.final_answer.startswith("Marta Vensel") and len(receipt.answer_hashes) == 2
    assert receipt.models[0].adapter_sha256 == "ab" * 32
    assert sum(p.amount for p in receipt.payouts) == 100_000  # every unit of escrow accounted for
    by_role = {(p.address, p.role): p.amount for p in receipt.payouts}
    assert by_role[(st.query.respondents[0], "respondent")] == 80_000 * 90 // 100 // 2
    assert by_role[(st.query.respondents[1], "respondent")] == 0  # below the quality threshold
    good = chain.query("Expert", q.ExpertRequest(address=st.query.respondents[0]), q.ExpertResponse)
    bad = chain.query("Expert", q.ExpertRequest(address=st.query.respondents[1]), q.ExpertResponse)
    assert good.reputation[0].reputation > 500_000 > bad.reputation[0].reputation
    ranked = chain.query("ExpertsByDomain", q.ExpertsByDomainRequest(domain=DOMAIN), q.ExpertsByDomainResponse)
    best = max(ranked.experts, key=lambda r: r.reputation)
    assert best.expert.address == st.query.respondents[0]
    raw = [parse_address(r.expert.address) for r in ranked.experts]
    assert raw == sorted(raw)  # a page comes in address order; clients rank
    history = chain.query("ReputationHistory", q.ReputationHistoryRequest(address=st.query.respondents[0]),
                          q.ReputationHistoryResponse)
    assert [p.reason for p in history.points] == ["register", "answer"]
    explain = chain.query("ExplainPayout", q.ExplainPayoutRequest(query_id=qid), q.ExplainPayoutResponse)
    assert all(p.reason for p in explain.payouts)
    supply_after, balances = total_supply_and_balances(chain)
    assert supply_after == supply_before == balances  # escrow is an account: nothing created or lost


def _everyone_but(chain: ProtocolChain, qid: int, lazy: str) -> None:
    """Every drawn expert but `lazy` does its part, through settlement."""
    st = chain.status(qid).query
    keys = [chain.key_of(a) for a in st.respondents if a != lazy]
    chain.ok(*[chain.tx(k, protocol.commit_answer(k, CHAIN_ID, qid, 1, "x")) for k in keys])
    chain.advance_until(qid, inf.PHASE_ANSWER_REVEAL)
    chain.ok(*[chain.tx(k, protocol.reveal_answer(k, CHAIN_ID, qid, 1, "x")) for k in keys])
    chain.advance_until(qid, inf.PHASE_SCORE_COMMIT)
    scorers = [chain.key_of(s) for s in st.scorers if s != lazy]
    votes = [70] * len(st.respondents)
    chain.ok(*[chain.tx(k, protocol.commit_scores(k, CHAIN_ID, qid, votes)) for k in scorers])
    chain.advance_until(qid, inf.PHASE_SCORE_REVEAL)
    chain.ok(*[chain.tx(k, protocol.reveal_scores(k, CHAIN_ID, qid, votes)) for k in scorers])
    chain.advance_until(qid, inf.PHASE_SETTLED)


def test_one_miss_costs_reputation_and_misses_in_a_row_jail_and_slash(chain: ProtocolChain) -> None:
    qid = submit(chain, rounds=1)
    lazy = chain.status(qid).query.respondents[1]
    supply_before, _ = total_supply_and_balances(chain)
    _everyone_but(chain, qid, lazy)
    one = chain.query("Expert", q.ExpertRequest(address=lazy), q.ExpertResponse)
    assert one.expert.bond == BOND and one.expert.slashed == 0 and one.expert.missed == 1  # a miss: no bond
    assert one.reputation[0].reputation < 500_000  # but reputation
    # the next query it is drawn for, it does nothing again: two misses in a row (max_missed=2) jail it and
    # slash 1% of its bond, once
    for _ in range(10):
        qid = submit(chain, rounds=1)
        st = chain.status(qid).query
        _everyone_but(chain, qid, lazy)
        if lazy in list(st.respondents) + list(st.scorers):
            break
    # the receipt names it, whether it missed as a respondent or as a scorer (settlement itself jails a scorer)
    receipt = chain.query("Receipt", q.ReceiptRequest(query_id=qid), q.ReceiptResponse).receipt
    assert list(receipt.missed) == [lazy]
    expert = chain.query("Expert", q.ExpertRequest(address=lazy), q.ExpertResponse).expert
    assert expert.status == ex.EXPERT_STATUS_JAILED and expert.slashed == BOND // 100
    assert expert.missed == 2  # the run of misses that jailed it stays readable
    supply_after, balances = total_supply_and_balances(chain)
    assert supply_after == supply_before - BOND // 100 == balances  # the slash is an explicit burn
    for _ in range(3):  # jailed experts are never drawn
        new = submit(chain, k=1, rounds=1)
        assert lazy not in list(chain.status(new).query.respondents) + list(chain.status(new).query.scorers)
        _everyone_but(chain, new, lazy)


def test_two_slashes_in_one_block_are_two_points_of_history(chain: ProtocolChain) -> None:
    """Equivocation in two rounds of one query, reported in one block: both halvings show in the history (they
    had one key, so the second overwrote the first: 500000 -> 125000 in one step)."""
    qid = submit(chain, rounds=2)
    cheat = chain.key_of(chain.status(qid).query.respondents[0])
    reports = [protocol.report_equivocation(chain.reporter, cheat.address, qid, n, "A",
                                            protocol.sign_answer(cheat, CHAIN_ID, qid, n, "A"), "B",
                                            protocol.sign_answer(cheat, CHAIN_ID, qid, n, "B")) for n in (1, 2)]
    chain.ok(*[chain.tx(chain.reporter, m) for m in reports])
    history = chain.query("ReputationHistory", q.ReputationHistoryRequest(address=cheat.address),
                          q.ReputationHistoryResponse)
    assert [(p.reason, p.reputation) for p in history.points][-2:] == [("equivocation", 250_000),
                                                                       ("equivocation", 125_000)]


def test_equivocation_is_slashed_with_reporter_reward(chain: ProtocolChain) -> None:
    qid = submit(chain)
    cheat = chain.key_of(chain.status(qid).query.respondents[0])
    sig_a = protocol.sign_answer(cheat, CHAIN_ID, qid, 1, "answer A")
    sig_b = protocol.sign_answer(cheat, CHAIN_ID, qid, 1, "answer B")
    before = chain.query("Balance", q.BalanceRequest(address=chain.reporter.address), q.BalanceResponse).amount
    msg = protocol.report_equivocation(chain.reporter, cheat.address, qid, 1, "answer A", sig_a, "answer B", sig_b)
    chain.ok(chain.tx(chain.reporter, msg))
    after = chain.query("Balance", q.BalanceRequest(address=chain.reporter.address), q.BalanceResponse).amount
    assert after - before == BOND // 10 // 2 - 5_000  # half the slash, minus the tx fee
    expert = chain.query("Expert", q.ExpertRequest(address=cheat.address), q.ExpertResponse).expert
    assert expert.status == ex.EXPERT_STATUS_JAILED and expert.slashed == BOND // 10
    again = chain.block(chain.tx(chain.reporter, msg))[0]
    assert again.code != 0 and "already punished" in again.log
    forged = protocol.report_equivocation(chain.reporter, cheat.address, qid, 2, "answer A", sig_a, "answer C", sig_b)
    assert "signature" in chain.block(chain.tx(chain.reporter, forged))[0].log


ERROR_CASES = [
    ("too few experts", lambda c, qid: protocol.submit_query(c.requester, DOMAIN, "?", 100_000, 5, 1),
     lambda c: c.requester, ErrTooFewExperts),
    ("unknown domain", lambda c, qid: protocol.register_expert(c.reporter, ["nope"], "h:1", "m", "ab" * 32, BOND),
     lambda c: c.reporter, ErrUnknownDomain),
    ("bond too low", lambda c, qid: protocol.register_expert(c.reporter, [DOMAIN], "h:1", "m", "ab" * 32, 1),
     lambda c: c.reporter, ErrBondTooLow),
    ("not assigned", lambda c, qid: protocol.commit_answer(c.reporter, CHAIN_ID, qid, 1, "x"), lambda c: c.reporter,
     ErrNotAssigned),
    ("wrong phase",
     lambda c, qid: protocol.reveal_answer(c.key_of(c.status(qid).query.respondents[0]), CHAIN_ID, qid, 1, "x"),
     lambda c: c.key_of(c.status(1).query.respondents[0]), ErrWrongPhase),
    ("scores before scoring",
     lambda c, qid: protocol.commit_scores(c.key_of(c.status(qid).query.scorers[0]), CHAIN_ID, qid, [1, 2]),
     lambda c: c.key_of(c.status(1).query.scorers[0]), ErrWrongPhase),
]


@pytest.mark.parametrize("name, make, signer, error", ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_protocol_rejections(chain: ProtocolChain, name, make, signer, error) -> None:  # type: ignore[no-untyped-def]
    qid = submit(chain)
    result = chain.block(chain.tx(signer(chain), make(chain, qid)))[0]
    assert (result.codespace, result.code) == (error.codespace, error.code), result.log


def test_reveal_must_match_commitment(chain: ProtocolChain) -> None:
    qid = submit(chain)
    k = chain.key_of(chain.status(qid).query.respondents[0])
    other = chain.key_of(chain.status(qid).query.respondents[1])
    chain.ok(chain.tx(k, protocol.commit_answer(k, CHAIN_ID, qid, 1, "honest")),
             chain.tx(other, protocol.commit_answer(other, CHAIN_ID, qid, 1, "x")))
    result = chain.block(chain.tx(k, protocol.reveal_answer(k, CHAIN_ID, qid, 1, "changed my mind")))[0]
    assert (result.codespace, result.code) == (ErrCommitMismatch.codespace, ErrCommitMismatch.code)


def test_recent_queries_newest_first_with_paging(chain: ProtocolChain) -> None:
    def recent(**kw: int) -> list[int]:
        resp = chain.query("RecentQueries", q.RecentQueriesRequest(**kw), q.RecentQueriesResponse)
        return [x.id for x in resp.queries]

    assert recent() == []
    ids = [submit(chain, k=1, rounds=1) for _ in range(3)]
    assert recent() == ids[::-1]
    assert recent(limit=2) == [ids[2], ids[1]]
    assert recent(limit=2, before_id=ids[1]) == [ids[0]]
    assert recent(before_id=10**9) == ids[::-1]
    with pytest.raises(AssertionError, match="limit must be at most 100"):
        recent(limit=101)


def test_events_are_the_declared_contract(chain: ProtocolChain) -> None:
    """Other processes parse events by the constants in each module's types.py: every kind a query's
    life emits is declared there, and the attributes the expert daemon reads are on the events."""
    from abci_app import msgs
    from abci_app.x.auth import types as auth_types
    from abci_app.x.bank import types as bank_types
    from abci_app.x.experts import types as experts_types
    from abci_app.x.inference import types as inference_types
    from abci_app.x.validators import types as validators_types
    from llmnet.client.events import find

    declared = {v for m in (msgs, auth_types, bank_types, experts_types, inference_types, validators_types)
                for k, v in vars(m).items() if k.startswith("EV_")}
    seen: list[object] = []
    original = chain.finalize

    def recording(txs: list[bytes]):  # type: ignore[no-untyped-def]
        resp = original(txs)
        seen.extend([e for r in resp.tx_results for e in r.events] + list(resp.events))
        return resp

    chain.finalize = recording  # type: ignore[method-assign]
    qid = submit(chain)
    answer_round(chain, qid, 1)
    answer_round(chain, qid, 2)
    score(chain, qid, [70, 30])
    kinds = {e.type for e in seen}  # type: ignore[attr-defined]
    assert kinds <= declared, kinds - declared
    assert {inference_types.EV_QUERY_ASSIGNED, inference_types.EV_SCORING_STARTED,
            inference_types.EV_QUERY_SETTLED, experts_types.EV_REPUTATION, msgs.EV_MESSAGE} <= kinds
    for kind, names in ((inference_types.EV_QUERY_ASSIGNED, inference_types.ATTR_RESPONDENTS),
                        (inference_types.EV_SCORING_STARTED, inference_types.ATTR_SCORERS)):
        (attrs,) = find(seen, kind)
        assert int(attrs[inference_types.ATTR_QUERY_ID]) == qid and attrs[names].count("llm1") >= 1


def test_listings_come_in_bounded_pages(chain: ProtocolChain) -> None:
    """ExpertsByDomain and ReputationHistory answer a page at a time, so no query can make the node walk
    everything (both run on the loop that serves CometBFT)."""
    pages, after = [], ""
    while True:
        page = chain.query("ExpertsByDomain", q.ExpertsByDomainRequest(domain=DOMAIN, limit=4, after=after),
                           q.ExpertsByDomainResponse)
        pages.append([r.expert.address for r in page.experts])
        if not page.next_after:
            break
        after = page.next_after
    assert [len(p) for p in pages] == [4, 2] and sorted(sum(pages, [])) == sorted(k.address for k in chain.experts)
    for _ in range(3):
        qid = submit(chain, rounds=1)
        answer_round(chain, qid, 1)
        score(chain, qid, [80, 60])  # scorers that missed twice would be out, and the third draw short
        chain.advance_until(qid, inf.PHASE_SETTLED, limit=40)
    who = chain.experts[0].address
    full = chain.query("ReputationHistory", q.ReputationHistoryRequest(address=who), q.ReputationHistoryResponse)
    newest = chain.query("ReputationHistory", q.ReputationHistoryRequest(address=who, limit=2, newest_first=True),
                         q.ReputationHistoryResponse)
    assert list(newest.points) == list(full.points)[-2:][::-1]
    walked, cursor = [], b""
    while True:
        page = chain.query("ReputationHistory", q.ReputationHistoryRequest(address=who, limit=1, cursor=cursor),
                           q.ReputationHistoryResponse)
        walked += list(page.points)
        if not page.next_cursor:
            break
        cursor = page.next_cursor
    assert walked == list(full.points) and len(walked) >= 2
    with pytest.raises(AssertionError, match="at most 100"):
        chain.query("ExpertsByDomain", q.ExpertsByDomainRequest(domain=DOMAIN, limit=101), q.ExpertsByDomainResponse)
