"""Settlement arithmetic of one query, as a pure function: revealed answers and scores in, a Tally out.

Per answer, the weighted median of the revealed scores is the consensus; each score is clipped to
within clip_distance of it, and the aggregate is the weighted mean of the clipped scores. A scorer's
weight is its stake, counted up to the panel's median stake, times its scorer reputation: no bond buys
more say than a median scorer's, and scorers who keep disagreeing with the aggregates lose influence
whatever they staked (an optional cap, max_scorer_weight_ppm, bounds any one weight's share). Scorers
holding less than half of the weight cannot move an aggregate further than clip_distance beyond the
range of the others' scores. A scorer's agreement
is 1 minus its mean absolute distance from the aggregates. Respondents are paid slot x score / 100 when
the score reaches the quality threshold, unless their final answer is copied from another respondent's earlier
round (copied: no pay, and reputation may only fall); scorers slot x agreement; the requester gets the rest back.
All arithmetic is integer. The keeper applies the Tally (moves tokens, updates reputation) and stores
the receipt built from it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from abci_app.fixedpoint import PPM, ppm_of
from abci_app.x.inference.types import MAX_SCORE
from wire.llmnet.experts.v1 import experts_pb2
from wire.llmnet.inference.v1 import inference_pb2 as pb


@dataclass(frozen=True)
class Vote:
    """One scorer's revealed scores, one per respondent, with what its weight is made of."""

    scorer: str
    stake: int
    reputation: int
    """Scorer reputation, on the reputation scale."""
    scores: tuple[int, ...]


@dataclass(frozen=True)
class Tally:
    scores: tuple[int, ...]
    """Aggregated score per respondent (0 for a missing answer or when no scorer revealed)."""
    payouts: tuple[pb.Payout, ...]
    """One per respondent, then one per vote, then the requester's refund, in that order."""
    reputation_targets: tuple[int | None, ...]
    """Per respondent, the score on the reputation scale its reputation moves toward; None: no change."""
    agreements: tuple[int | None, ...]
    """Per vote, the scorer's agreement with the aggregates, on the reputation scale; None when no answer was
    revealed (nothing was judged: no pay, no change)."""
    final_index: int
    """The best-scored answer (ties to an answer not copied, then to the earlier respondent), -1 if no answer
    was revealed."""
    copies: tuple[bool, ...]
    """Per respondent, whether its final answer was copied (see copied): its reputation may move toward its
    target only downward, so copying never shields a respondent from its answers' scores."""

    @property
    def refund(self) -> int:
        return self.payouts[-1].amount


def weighted_median(pairs: Sequence[tuple[int, int]], lower: bool = False) -> int:
    """Weighted median of (value, weight) pairs; weights of zero count as one. When the values up to one hold
    exactly half the weight (a split panel), the median is halfway (rounded down) between it and the next, or
    that lower one with lower=True."""
    items = sorted((v, max(1, w)) for v, w in pairs)
    total = sum(w for _, w in items)
    acc = 0
    for i, (value, w) in enumerate(items):
        acc += w
        if 2 * acc == total:
            return value if lower else (value + items[i + 1][0]) // 2
        if 2 * acc > total:
            return value
    raise ValueError("weighted_median of nothing")


def clipped_mean(pairs: Sequence[tuple[int, int]], clip: int, lower: bool = False) -> int:
    """Weighted mean after clipping every value to within clip of the weighted median (see lower there)."""
    median = weighted_median(pairs, lower)
    lo, hi = median - clip, median + clip
    weights = [(min(max(v, lo), hi), max(1, w)) for v, w in pairs]
    total = sum(w for _, w in weights)
    return sum(v * w for v, w in weights) // total


def vote_weights(votes: Sequence[Vote], cap_ppm: int) -> list[int]:
    """Each vote's weight: its stake, counted at most up to the panel's median stake, times its scorer
    reputation; then no weight above cap_ppm of the panel's total. A large bond buys a seat, not the
    panel: past the median it adds nothing, and a scorer that keeps disagreeing loses weight however
    much it staked."""
    stakes = sorted(v.stake for v in votes)
    median = stakes[(len(stakes) - 1) // 2] if stakes else 0
    return cap_weights([min(v.stake, median) * v.reputation for v in votes], cap_ppm)


def cap_weights(weights: Sequence[int], cap_ppm: int) -> list[int]:
    """Cut the largest weights down (water-filling) so none is more than cap_ppm of the total. When no
    such split exists (fewer than PPM / cap_ppm scorers), every weight counts the same."""
    n = len(weights)
    if n * cap_ppm < PPM:
        return [1] * n
    order = sorted(range(n), key=lambda i: (-weights[i], i))
    rest = sum(weights)
    for k, i in enumerate(order):
        if weights[i] * (PPM - k * cap_ppm) <= cap_ppm * rest:  # the largest uncapped weight fits
            level = cap_ppm * rest // (PPM - k * cap_ppm) if k else None
            return [min(w, level) if level is not None and j in order[:k] else w for j, w in enumerate(weights)]
        rest -= weights[i]
    return [1] * n  # unreachable when n * cap_ppm >= PPM; kept total for safety


INVISIBLE = re.compile(rb"\xc2[\xa0\xad]|\xe2\x80[\x80-\xaf]|\xe2\x81[\x9f-\xa4]|\xef\xbb\xbf|\xe3\x80\x80")
"""UTF-8 of no-break, thin and zero-width spaces, soft hyphen, Unicode dashes and quotation marks, word joiner,
byte-order mark, ideographic space: read as spacing, so none of them can disguise a copy. A literal table, not
unicodedata: every node must decide alike whatever its Python."""


def answer_words(text: str) -> tuple[bytes, ...]:
    """An answer's words for telling copies: ASCII letters lowered, punctuation and spacing dropped. Bytes, not
    str.casefold: Unicode tables differ between Python versions, and every node must decide alike."""
    return tuple(re.findall(rb"[0-9a-z\x80-\xff]+", INVISIBLE.sub(b" ", text.encode()).lower()))


def copied(history: Sequence[Sequence[str | None]]) -> list[bool]:
    """Per respondent, whether its final answer is another's: history[i] holds respondent i's revealed answer
    of each round (None where it revealed none). Respondent i's final answer is copied when another respondent
    revealed the same words in an earlier round than i first did, and still gives them as its final answer.
    Taking up a peer's answer is what the rounds are for, but the answer was the peer's work: it earns the
    taker no pay and no reputation gain. (A writer who dropped its answer leaves it to whoever kept it.)"""
    words = [[answer_words(a) if a is not None else None for a in rounds] for rounds in history]
    first: dict[tuple[bytes, ...], dict[int, int]] = {}  # words -> respondent -> first round revealed
    for i, rounds in enumerate(words):
        for r, w in enumerate(rounds):
            if w is not None:
                first.setdefault(w, {}).setdefault(i, r)
    finals = [rounds[-1] if rounds else None for rounds in words]
    out = []
    for i, final in enumerate(finals):
        by = first.get(final, {}) if final is not None else {}
        out.append(any(r < by[i] and finals[j] == final for j, r in by.items() if j != i))
    return out


def _respondent_payout(who: str, answer: str | None, score: int, voted: bool, slot: int,
                       threshold: int, copy: bool) -> pb.Payout:
    if answer is None:
        return pb.Payout(address=who, role="respondent", amount=0, reason="no revealed final-round answer")
    if copy:
        return pb.Payout(address=who, role="respondent", amount=0,
                         reason="final answer copied from another respondent's earlier round")
    if not voted:
        return pb.Payout(address=who, role="respondent", amount=0, reason="no scorer revealed scores")
    if score < threshold:
        return pb.Payout(address=who, role="respondent", amount=0, reason=f"score {score} < threshold {threshold}")
    return pb.Payout(address=who, role="respondent", amount=slot * score // MAX_SCORE,
                     reason=f"score {score} >= threshold {threshold}: slot {slot} x {score}/100")


def _agreement(vote: Vote, scores: Sequence[int], scored: Sequence[int]) -> int:
    """1e6 minus the vote's mean absolute distance from the aggregates (in ppm of the score range); scored is
    never empty (with no answer revealed, there is nothing to agree on: see tally)."""
    distance = sum(abs(vote.scores[i] - scores[i]) for i in scored) * PPM // (len(scored) * MAX_SCORE)
    return max(0, PPM - distance)


def tally(query: pb.Query, finals: Sequence[str | None], votes: Sequence[Vote], params: pb.Params,
          reputation_scale: int, copies: Sequence[bool] | None = None) -> Tally:
    """Aggregate scores and split the query's escrowed fee. finals holds each respondent's revealed
    final-round answer (None if missing); votes the revealed scores, in the query's scorer order; copies
    (see copied) marks final answers taken from a peer, which are scored but not paid, and move reputation
    only down."""
    n = len(query.respondents)
    copy = list(copies) if copies is not None else [False] * n
    weights = vote_weights(votes, params.max_scorer_weight_ppm)

    def aggregates(lower: bool) -> list[int]:
        return [clipped_mean([(v.scores[i], w) for v, w in zip(votes, weights, strict=True)], params.clip_distance,
                             lower) if finals[i] is not None and votes else 0 for i in range(n)]

    # A panel split by exactly half its weight: what it pays is what its lower half grants (one colluding
    # scorer must not get junk paid), while reputations and scorer agreement follow the middle (one hostile
    # scorer must not sink an honest answer's reputation, or gain scorer reputation by trying). Otherwise equal.
    scores, middle = aggregates(lower=True), aggregates(lower=False)
    scorer_pool = ppm_of(query.max_fee, params.scorer_share_ppm)
    respondent_slot = (query.max_fee - scorer_pool) // n
    scorer_slot = scorer_pool // len(query.scorers)
    payouts = [_respondent_payout(query.respondents[i], finals[i], scores[i], bool(votes), respondent_slot,
                                  params.quality_threshold, copy[i]) for i in range(n)]
    targets = [middle[i] * reputation_scale // MAX_SCORE if finals[i] is not None and votes else None
               for i in range(n)]
    scored = [i for i in range(n) if finals[i] is not None]
    # Without a revealed answer every vote "agreed" fully: scorers were paid in full and gained reputation
    # whatever they sent, and a ring could have its own respondents stay silent to feed its scorers.
    agreements = [_agreement(v, middle, scored) if scored else None for v in votes]
    payouts += [pb.Payout(address=v.scorer, role="scorer", amount=ppm_of(scorer_slot, a),
                          reason=f"agreement {a}/1e6 with the aggregate") if a is not None else
                pb.Payout(address=v.scorer, role="scorer", amount=0, reason="no answer was revealed to score")
                for v, a in zip(votes, agreements, strict=True)]
    refund = query.max_fee - sum(p.amount for p in payouts)
    payouts.append(pb.Payout(address=query.requester, role="refund", amount=refund, reason="escrow not paid out"))
    best = max(scored, key=lambda i: (scores[i], not copy[i], -i), default=-1)  # a tie goes to the original
    return Tally(tuple(scores), tuple(payouts), tuple(targets),
                 tuple(None if a is None else a * reputation_scale // PPM for a in agreements), best, tuple(copy))


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def build_receipt(query: pb.Query, finals: Sequence[str | None], result: Tally,
                  models: Sequence[experts_pb2.ModelCommitment], missed: Sequence[str], height: int) -> pb.Receipt:
    """The settled record: hashes of prompt and answers, adapter commitments, scores, payouts."""
    best = result.final_index
    final = finals[best] if best >= 0 else None
    return pb.Receipt(
        query_id=query.id, requester=query.requester, domain=query.domain, prompt_hash=_sha(query.prompt),
        respondents=query.respondents, answer_hashes=[_sha(a) if a is not None else "" for a in finals],
        models=models, scores=result.scores, payouts=result.payouts, final_index=best,
        final_answer=final if final is not None else "", settled_height=height, missed=sorted(set(missed)),
    )
