"""Economic attacks, played through the real state machine (in process): what does each attacker gain,
in reputation and in ullm per query, next to an honest expert in the same place?

One domain, N experts with a hidden quality q in [0.15, 0.95]; every query draws 2 respondents and
3 scorers by the chain's own selection (capacity, beacon and all). Honest scorers give q*100 plus
Gaussian noise; honest respondents answer (their answer is worth q). Each attack is run against a
baseline with the same seed and no attacker, and compared there with the same expert behaving
honestly:

- collusion: a third of the domain's experts, as scorers, give one of them (their favourite) 100;
- whale: one scorer holds as much bond as all the others together and gives its favourite 100;
- copycat: one respondent commits a copy of a peer's commitment instead of answering;
- sybil requester: a requester runs 3 of the domain's experts and pays for queries hoping to draw them.

Used by `python bench/reputation_sim.py --attacks`.
"""

from __future__ import annotations

import random
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.message import Message

from llmnet.client import protocol
from llmnet.client.keys import Key
from llmnet.devchain import DevChain, seeded_key, submitted_ids
from wire.llmnet.inference.v1 import inference_pb2 as inf
from wire.llmnet.query.v1 import query_pb2 as qpb

DOMAIN = "kestrel-lang"
BOND = 5_000_000
FEE = 10_000


@dataclass
class Ledger:
    """What one expert (or requester) got: ullm earned, queries it took part in, final reputation."""

    earned: int = 0
    answered: int = 0
    reputation: int = 0
    spent: int = 0


@dataclass
class World:
    chain: DevChain
    experts: list[Key]
    quality: dict[str, float]
    requester: Key
    rng: random.Random
    noise: float = 10.0

    def honest_score(self, respondent: str) -> int:
        return min(100, max(0, round(self.quality[respondent] * 100 + self.rng.gauss(0, self.noise))))


Scorer = Callable[[World, str, str], int]  # (world, scorer, respondent) -> score
Answerer = Callable[[World, inf.Query, Key], inf.MsgCommitAnswer | None]  # None: answer honestly


def make_world(tmp: Path, seed: int, n: int, bonds: dict[int, int] | None = None) -> World:
    rng = random.Random(seed)
    experts = [seeded_key(f"attack-sim-expert{i}") for i in range(n)]
    quality = {k.address: 0.15 + 0.8 * rng.random() for k in experts}
    requester = seeded_key("attack-sim-requester")
    chain = DevChain(Path(tempfile.mkdtemp(dir=tmp)) / "sim.db", [*experts, requester], 10**15, {
        "experts": {"params": {"domains": [DOMAIN], "default_capacity": 64}},
        "inference": {"params": {"commit_blocks": 2, "reveal_blocks": 2}},
    })
    chain.ok(*[chain.tx(k, protocol.register_expert(k, [DOMAIN], "sim:0", "sim", "00" * 32,
                                                    (bonds or {}).get(i, BOND))) for i, k in enumerate(experts)])
    return World(chain, experts, quality, requester, random.Random(seed + 1))


def _work(w: World, queries: list[inf.Query], scorer: Scorer, answerer: Answerer) -> None:
    """Block after block, every drawn expert does its part of each query's current phase (once), until
    all have settled: respondents commit and reveal (or follow answerer), scorers commit and reveal."""
    done: set[tuple[int, int, str]] = set()
    votes = {(s, q.id): [scorer(w, s, r) for r in q.respondents] for q in queries for s in q.scorers}
    for _ in range(40):
        txs = []
        for q in queries:
            phase = w.chain.status(q.id).query.phase
            people = q.respondents if phase in (inf.PHASE_ANSWER_COMMIT, inf.PHASE_ANSWER_REVEAL) else q.scorers
            for who in people:
                if (q.id, phase, who) in done or phase == inf.PHASE_SETTLED:
                    continue
                done.add((q.id, phase, who))
                msg = _step(w, q, phase, w.chain.key_of(who), votes.get((who, q.id), []), answerer)
                if msg is not None:
                    txs.append(w.chain.tx(w.chain.key_of(who), msg))
        w.chain.block(*txs)
        if all(w.chain.status(q.id).query.phase == inf.PHASE_SETTLED for q in queries):
            return
    raise AssertionError("queries did not settle")


def _step(w: World, q: inf.Query, phase: int, key: Key, vote: list[int], answerer: Answerer) -> Message | None:
    text = f"answer of {key.address[-6:]}"
    special = answerer(w, q, key) if phase in (inf.PHASE_ANSWER_COMMIT, inf.PHASE_ANSWER_REVEAL) else None
    if phase == inf.PHASE_ANSWER_COMMIT:
        return special or protocol.commit_answer(key, w.chain.chain_id, q.id, 1, text)
    if phase == inf.PHASE_ANSWER_REVEAL:
        return None if special is not None else protocol.reveal_answer(key, w.chain.chain_id, q.id, 1, text)
    if phase == inf.PHASE_SCORE_COMMIT:
        return protocol.commit_scores(key, w.chain.chain_id, q.id, vote)
    return protocol.reveal_scores(key, w.chain.chain_id, q.id, vote)


def play(w: World, queries: int, wave: int, scorer: Scorer, answerer: Answerer, requester: Key | None = None
         ) -> dict[str, Ledger]:
    """Run queries in waves; returns each address's ledger (requester's spending included)."""
    asker = requester or w.requester
    ledgers: dict[str, Ledger] = {}
    for _ in range(queries // wave):
        results = w.chain.ok(*[w.chain.tx(asker, protocol.submit_query(asker, DOMAIN, "q", FEE, 2, 1))
                               for _ in range(wave)])
        w.chain.block()  # the draw
        drawn = [w.chain.status(i).query for i in submitted_ids(results)]
        drawn = [q for q in drawn if q.phase == inf.PHASE_ANSWER_COMMIT]
        _work(w, drawn, scorer, answerer)
        for q in drawn:
            receipt = w.chain.query("Receipt", qpb.ReceiptRequest(query_id=q.id), qpb.ReceiptResponse).receipt
            for p in receipt.payouts:
                ledgers.setdefault(p.address, Ledger()).earned += p.amount if p.role != "refund" else 0
            for r in q.respondents:
                ledgers.setdefault(r, Ledger()).answered += 1
            ledgers.setdefault(asker.address, Ledger()).spent += FEE - sum(
                p.amount for p in receipt.payouts if p.role == "refund")
    for k in w.experts:
        rep = w.chain.query("Expert", qpb.ExpertRequest(address=k.address), qpb.ExpertResponse).reputation
        ledgers.setdefault(k.address, Ledger()).reputation = rep[0].reputation if rep else 0
    return ledgers


def honest(w: World, scorer: str, respondent: str) -> int:
    return w.honest_score(respondent)


def answer_honestly(w: World, q: inf.Query, key: Key) -> None:
    return None


@dataclass
class Outcome:
    attack: str
    attacker: str
    ullm_per_query: float
    """What the attacking team earned, per query of the run (the sybil requester: net of what it paid)."""
    honest_ullm_per_query: float
    """The same team in the same run played honestly (the sybil requester: 0, breaking even)."""
    reputation: int
    """The reputation the attack was for (the favourite's, the copycat's, the sybils' mean)."""
    honest_reputation: int

    @property
    def pays(self) -> bool:
        return self.ullm_per_query > self.honest_ullm_per_query or self.reputation > self.honest_reputation


def _team(ledgers: dict[str, Ledger], team: set[str], queries: int) -> float:
    return sum(ledgers[a].earned for a in team if a in ledgers) / queries


def collusion(tmp: Path, seed: int, n: int, queries: int, wave: int) -> Outcome:
    def run(attack: bool) -> tuple[dict[str, Ledger], set[str], str]:
        w = make_world(tmp, seed, n)
        ranked = sorted(w.quality, key=lambda a: w.quality[a])
        ring = set(ranked[:n // 3])  # the weakest third collude...
        favourite = ranked[n // 3 - 1]  # ...for the best of them

        def scorer(world: World, s: str, r: str) -> int:
            score = world.honest_score(r)  # drawn either way: both runs see the same noise
            return 100 if attack and s in ring and r == favourite else score

        return play(w, queries, wave, scorer, answer_honestly), ring, favourite

    bad, ring, fav = run(True)
    good, _, _ = run(False)
    return Outcome("collusion of a third of the scorers", "the ring (a third)", _team(bad, ring, queries),
                   _team(good, ring, queries), bad[fav].reputation, good[fav].reputation)


def whale(tmp: Path, seed: int, n: int, queries: int, wave: int) -> Outcome:
    def run(attack: bool) -> tuple[dict[str, Ledger], set[str], str]:
        w = make_world(tmp, seed, n, bonds={0: BOND * (n - 1)})
        whale_address = w.experts[0].address
        favourite = sorted(w.quality, key=lambda a: w.quality[a])[n // 3]

        def scorer(world: World, s: str, r: str) -> int:
            score = world.honest_score(r)
            if attack and s == whale_address:
                return 100 if r == favourite else 0
            return score

        return play(w, queries, wave, scorer, answer_honestly), {whale_address, favourite}, favourite

    bad, team, fav = run(True)
    good, _, _ = run(False)
    return Outcome("one whale scorer (half the scorer stake)", "whale + its favourite", _team(bad, team, queries),
                   _team(good, team, queries), bad[fav].reputation, good[fav].reputation)


def copycat(tmp: Path, seed: int, n: int, queries: int, wave: int) -> Outcome:
    def run(attack: bool) -> tuple[dict[str, Ledger], str]:
        w = make_world(tmp, seed, n)
        cat = w.experts[1].address

        def answerer(world: World, q: inf.Query, key: Key) -> inf.MsgCommitAnswer | None:
            if not attack or key.address != cat:
                return None
            peer = next(a for a in q.respondents if a != cat)
            text = f"answer of {peer[-6:]}"  # the peer's commitment, byte for byte
            copied = protocol.commit_answer(world.chain.key_of(peer), world.chain.chain_id, q.id, 1, text)
            return inf.MsgCommitAnswer(respondent=cat, query_id=q.id, round=1, commitment=copied.commitment)

        return play(w, queries, wave, honest, answerer), cat

    bad, cat = run(True)
    good, _ = run(False)
    return Outcome("copycat respondent", "copycat", _team(bad, {cat}, queries), _team(good, {cat}, queries),
                   bad[cat].reputation, good[cat].reputation)


def sybil_requester(tmp: Path, seed: int, n: int, queries: int, wave: int) -> Outcome:
    """The attacker owns experts 0-2 and the requester; its gain per query is what its experts earned minus
    what its requester paid. An honest expert's reference: its mean earnings per answered query."""
    w = make_world(tmp, seed, n)
    owned = [k.address for k in w.experts[:3]]
    ledgers = play(w, queries, wave, honest, answer_honestly)
    net = sum(ledgers[a].earned for a in owned if a in ledgers) - ledgers[w.requester.address].spent
    baseline = play(make_world(tmp, seed, n), queries, wave, honest, answer_honestly)  # no requester of theirs
    mean = sum(ledgers[a].reputation for a in owned) // len(owned)
    return Outcome("sybil requester drawing its own experts", "requester + its 3 experts", net / queries, 0.0,
                   mean, sum(baseline[a].reputation for a in owned) // len(owned))


ATTACKS = (collusion, whale, copycat, sybil_requester)


def run_all(seed: int, n: int, queries: int, wave: int) -> list[Outcome]:
    with tempfile.TemporaryDirectory() as tmp:
        return [attack(Path(tmp), seed, n, queries, wave) for attack in ATTACKS]
