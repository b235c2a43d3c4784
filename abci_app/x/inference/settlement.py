"""Settlement of one query: aggregate scores, pay from escrow, update reputation, write a receipt.

Per answer, the weighted median of the revealed scores is the consensus; each score is clipped to
within clip_distance of it, and the aggregate is the weighted mean of the clipped scores, so no
single scorer can drag an answer far. A scorer's weight is its stake times its scorer reputation,
so scorers who keep disagreeing with the consensus (colluders) lose influence. A scorer's agreement is 1 minus its mean
absolute distance from the aggregates. Respondents are paid slot * score / 100 when the score
reaches the quality threshold; scorers slot * agreement; the requester gets the rest back.
All arithmetic is integer.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from abci_app.context import Ctx
from abci_app.crypto import parse_address
from abci_app.x.bank.keeper import BankKeeper
from abci_app.x.experts.keeper import PPM, ExpertsKeeper
from abci_app.x.inference.types import ESCROW, MAX_SCORE
from wire.llmnet.experts.v1 import experts_pb2
from wire.llmnet.inference.v1 import inference_pb2 as pb

if TYPE_CHECKING:
    from abci_app.x.inference.keeper import InferenceKeeper


def weighted_median(pairs: list[tuple[int, int]]) -> int:
    """Lower weighted median of (value, weight) pairs; weights of zero count as one."""
    items = sorted((v, max(1, w)) for v, w in pairs)
    total = sum(w for _, w in items)
    acc = 0
    for value, w in items:
        acc += w
        if 2 * acc >= total:
            return value
    raise ValueError("weighted_median of nothing")


def clipped_mean(pairs: list[tuple[int, int]], clip: int) -> int:
    median = weighted_median(pairs)
    lo, hi = median - clip, median + clip
    weights = [(min(max(v, lo), hi), max(1, w)) for v, w in pairs]
    total = sum(w for _, w in weights)
    return sum(v * w for v, w in weights) // total


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def settle(ctx: Ctx, q: pb.Query, keeper: InferenceKeeper, experts: ExpertsKeeper, bank: BankKeeper) -> pb.Receipt:
    params, eparams = keeper.params(ctx), experts.params(ctx)
    respondents = [parse_address(r) for r in q.respondents]
    finals = [keeper.answer(ctx, q.id, q.rounds, a) for a in respondents]
    answers = [e.answer if e is not None and e.revealed else None for e in finals]

    revealed: list[tuple[str, int, list[int]]] = []  # (scorer, weight, scores)
    for s in q.scorers:
        address = parse_address(s)
        entry = keeper.score_entry(ctx, q.id, address)
        if entry is not None and entry.revealed:
            expert = experts.get(ctx, address)
            stake = expert.bond if expert else 0
            weight = stake * experts.scorer_reputation(ctx, address) // eparams.reputation_scale
            revealed.append((s, weight, list(entry.scores)))
        else:
            experts.record_missed(ctx, address, q.domain, q.id, slash=False, reason="scores not revealed")

    scores = [0] * len(respondents)
    for i, answer in enumerate(answers):
        if answer is not None and revealed:
            scores[i] = clipped_mean([(sc[i], stake) for _, stake, sc in revealed], params.clip_distance)

    scorer_pool = q.max_fee * params.scorer_share_ppm // PPM
    respondent_slot = (q.max_fee - scorer_pool) // len(respondents)
    scorer_slot = scorer_pool // len(q.scorers)
    payouts: list[pb.Payout] = []
    paid = 0

    def pay(who: str, role: str, amount: int, reason: str) -> None:
        nonlocal paid
        if amount > 0:
            bank.move(ctx, ESCROW, parse_address(who), amount)
            experts.credit(ctx, parse_address(who), amount)
            paid += amount
        payouts.append(pb.Payout(address=who, role=role, amount=amount, reason=reason))

    scale = eparams.reputation_scale
    for i, address in enumerate(respondents):
        who = q.respondents[i]
        if answers[i] is None:
            pay(who, "respondent", 0, "no revealed final-round answer")
            continue
        if not revealed:
            pay(who, "respondent", 0, "no scorer revealed scores")
            continue
        if scores[i] >= params.quality_threshold:
            pay(who, "respondent", respondent_slot * scores[i] // MAX_SCORE,
                f"score {scores[i]} >= threshold {params.quality_threshold}: slot {respondent_slot} x {scores[i]}/100")
        else:
            pay(who, "respondent", 0, f"score {scores[i]} < threshold {params.quality_threshold}")
        experts.ema(ctx, q.domain, address, scores[i] * scale // MAX_SCORE, q.id, "answer")

    scored = [i for i, a in enumerate(answers) if a is not None]
    for scorer, _, sc in revealed:
        if scored:
            distance = sum(abs(sc[i] - scores[i]) for i in scored) * PPM // (len(scored) * MAX_SCORE)
            agreement = max(0, PPM - distance)
        else:
            agreement = PPM
        pay(scorer, "scorer", scorer_slot * agreement // PPM, f"agreement {agreement}/1e6 with the aggregate")
        experts.update_scorer_reputation(ctx, parse_address(scorer), agreement * scale // PPM)

    refund = q.max_fee - paid
    if refund:
        bank.move(ctx, ESCROW, parse_address(q.requester), refund)
    payouts.append(pb.Payout(address=q.requester, role="refund", amount=refund, reason="escrow not paid out"))

    best = max((i for i in scored), key=lambda i: (scores[i], -i), default=-1)
    slashed = sorted({q.respondents[i] for r in range(1, q.rounds + 1) for i, a in enumerate(respondents)
                      if (e := keeper.answer(ctx, q.id, r, a)) is None or not e.revealed})
    models = []
    for address in respondents:
        expert = experts.get(ctx, address)  # an expert that fully unbonded has no record left
        models.append(expert.model if expert is not None else experts_pb2.ModelCommitment())
    return pb.Receipt(
        query_id=q.id, requester=q.requester, domain=q.domain, prompt_hash=_sha(q.prompt),
        respondents=q.respondents, answer_hashes=[_sha(a) if a is not None else "" for a in answers],
        models=models, scores=scores, payouts=payouts, final_index=best,
        final_answer=answers[best] if best >= 0 and answers[best] is not None else "",
        settled_height=ctx.env.height, slashed=slashed,
    )
