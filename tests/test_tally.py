"""Table tests of the pure settlement arithmetic (abci_app.x.inference.tally)."""

from __future__ import annotations

import pytest

from abci_app.x.inference.tally import (
    Vote,
    build_receipt,
    cap_weights,
    clipped_mean,
    copied,
    tally,
    vote_weights,
    weighted_median,
)
from abci_app.x.inference.types import default_params
from wire.llmnet.experts.v1 import experts_pb2
from wire.llmnet.inference.v1 import inference_pb2 as pb

SCALE = 1_000_000

MEDIAN_CASES = [
    ("one value", [(40, 1)], 40),
    ("odd count, equal weights", [(10, 1), (50, 1), (90, 1)], 50),
    ("even count takes the middle", [(10, 1), (90, 1)], 50),
    ("heavy value wins", [(10, 1), (90, 3)], 90),
    ("exactly half the weight is not enough: halfway, rounded down", [(10, 2), (91, 2)], 50),
    ("halfway between the two middle values only", [(0, 1), (20, 1), (60, 1), (100, 1)], 40),
    ("more than half decides", [(10, 3), (90, 1), (95, 1)], 10),
    ("zero weight counts as one", [(10, 0), (90, 0), (50, 0)], 50),
    ("order of input does not matter", [(90, 1), (10, 1), (50, 1)], 50),
]


@pytest.mark.parametrize("pairs,expected", [c[1:] for c in MEDIAN_CASES], ids=[c[0] for c in MEDIAN_CASES])
def test_weighted_median(pairs: list[tuple[int, int]], expected: int) -> None:
    assert weighted_median(pairs) == expected


def test_a_split_takes_the_lower_middle_when_asked() -> None:
    assert weighted_median([(10, 2), (91, 2)], lower=True) == 10
    assert weighted_median([(10, 3), (91, 2)], lower=True) == weighted_median([(10, 3), (91, 2)]) == 10


def test_weighted_median_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError):
        weighted_median([])


CLIP_CASES = [
    ("agreeing scores keep their mean", [(60, 1), (62, 1), (64, 1)], 10, 62),
    ("an outlier is pulled to median + clip", [(50, 1), (50, 1), (100, 1)], 10, 53),  # (50+50+60)//3
    ("an outlier below is pulled up", [(0, 1), (80, 1), (80, 1)], 10, 76),  # (70+80+80)//3
    ("weights count in the mean", [(50, 3), (58, 1)], 10, 52),  # (150+58)//4
    ("rounds down", [(0, 1), (1, 1), (1, 1)], 10, 0),  # 2//3
    ("clip 0 is the median", [(10, 1), (40, 1), (90, 1)], 0, 40),
]


@pytest.mark.parametrize("pairs,clip,expected", [c[1:] for c in CLIP_CASES], ids=[c[0] for c in CLIP_CASES])
def test_clipped_mean(pairs: list[tuple[int, int]], clip: int, expected: int) -> None:
    assert clipped_mean(pairs, clip) == expected


def _query(n: int, scorers: int = 2, max_fee: int = 100_000) -> pb.Query:
    return pb.Query(id=7, requester="req", domain="d", prompt="p", max_fee=max_fee, k=n, rounds=1,
                    respondents=[f"r{i}" for i in range(n)], scorers=[f"s{i}" for i in range(scorers)])


PARAMS = default_params()  # threshold 50, scorer share 20%, clip 10


def test_pays_by_score_above_threshold_and_refunds_the_rest() -> None:
    q = _query(2)
    t = tally(q, ["right", "wrong"], [Vote("s0", 5, SCALE, (90, 20)), Vote("s1", 5, SCALE, (90, 20))], PARAMS, SCALE)
    assert t.scores == (90, 20)
    # slots: scorers share 20_000 -> 10_000 each; respondents 80_000 // 2 = 40_000 each
    assert [p.amount for p in t.payouts] == [36_000, 0, 10_000, 10_000, 44_000]
    assert [p.role for p in t.payouts] == ["respondent", "respondent", "scorer", "scorer", "refund"]
    assert t.refund == 44_000 and sum(p.amount for p in t.payouts) == q.max_fee
    assert t.reputation_targets == (900_000, 200_000)
    assert t.agreements == (SCALE, SCALE)
    assert t.final_index == 0


@pytest.mark.parametrize("honest, hostile", [(90, 0), (0, 100), (90, 100)])
def test_one_of_two_equal_scorers_does_not_decide_alone(honest: int, hostile: int) -> None:
    """A panel of two equal votes (the third scorer silent, or an even panel). The lower median let a hostile 0
    set an honest 90's aggregate to 5: its reputation sank and the hostile scorer gained scorer reputation.
    The middle one let a colluding 100 lift junk scored 0 to exactly the threshold, and be paid. Now pay
    follows the lower half, reputations and scorer agreement the middle."""
    votes = [Vote("honest", 5, SCALE, (honest,)), Vote("hostile", 5, SCALE, (hostile,))]
    t = tally(_query(1), ["answer"], votes, PARAMS, SCALE)
    lower, middle = min(honest, hostile), (honest + hostile) // 2
    assert abs(t.scores[0] - lower) <= PARAMS.clip_distance  # what is paid for
    assert (t.payouts[0].amount > 0) == (lower >= PARAMS.quality_threshold)
    assert abs(t.reputation_targets[0] - middle * SCALE // 100) <= PARAMS.clip_distance * SCALE // 100
    assert t.agreements[0] == t.agreements[1]


def test_missing_answer_scores_zero_and_keeps_reputation() -> None:
    t = tally(_query(2), [None, "an answer"], [Vote("s0", 1, SCALE, (100, 70))], PARAMS, SCALE)
    assert t.scores == (0, 70)
    assert t.reputation_targets == (None, 700_000)
    assert t.payouts[0].amount == 0 and "no revealed" in t.payouts[0].reason
    assert t.final_index == 1


def test_no_votes_pay_nobody_and_move_no_reputation() -> None:
    q = _query(2)
    t = tally(q, ["a", "b"], [], PARAMS, SCALE)
    assert t.scores == (0, 0) and t.reputation_targets == (None, None) and t.agreements == ()
    assert [p.amount for p in t.payouts] == [0, 0, q.max_fee]
    assert all("no scorer" in p.reason for p in t.payouts[:2])


def test_with_no_answer_revealed_scorers_are_not_paid_and_keep_their_reputation() -> None:
    """Nothing was judged: every vote used to agree fully with nothing, so any scores (0s, 100s, anything) got
    the whole scorer slot and pulled the scorer's reputation to the top; a ring could have its respondents stay
    silent to feed its scorers. The whole fee goes back to the requester."""
    q = _query(2)
    for scores in ((0, 0), (100, 100), (37, 99)):
        t = tally(q, [None, None], [Vote("s0", 1, SCALE, scores), Vote("s1", 1, SCALE, scores)], PARAMS, SCALE)
        assert t.agreements == (None, None)
        assert [p.amount for p in t.payouts] == [0, 0, 0, 0, q.max_fee]
        assert all("no answer was revealed" in p.reason for p in t.payouts if p.role == "scorer")


def test_scorer_agreement_is_one_minus_mean_distance() -> None:
    # aggregate per answer: median 50 -> clip [40, 60]: (50 + 60) // 2 = 55 ... with three votes
    votes = [Vote("s0", 1, SCALE, (50, 50)), Vote("s1", 1, SCALE, (50, 50)), Vote("s2", 1, SCALE, (100, 0))]
    t = tally(_query(2, scorers=3), ["a", "b"], votes, PARAMS, SCALE)
    assert t.scores == (53, 46)  # (50+50+60)//3, (50+50+40)//3
    # s2 is 47 and 46 points off: mean 46.5 of 100 -> agreement 535_000
    assert t.agreements == (965_000, 965_000, 535_000)
    scorer_pay = [p.amount for p in t.payouts if p.role == "scorer"]
    assert scorer_pay == [20_000 // 3 * 965_000 // SCALE] * 2 + [20_000 // 3 * 535_000 // SCALE]


def test_ties_go_to_the_earlier_respondent_and_no_answers_give_minus_one() -> None:
    votes = [Vote("s0", 1, SCALE, (70, 70, 70))]
    assert tally(_query(3, scorers=1), ["a", "b", "c"], votes, PARAMS, SCALE).final_index == 0
    assert tally(_query(2), [None, None], [Vote("s0", 1, SCALE, (9, 9))], PARAMS, SCALE).final_index == -1


COPY_CASES = [
    ("one round has nothing to copy", [["Ashcrown"], ["Ashcrown"]], [False, False]),
    ("agreeing from round 1 is nobody's copy", [["Ashcrown", "Ashcrown"], ["ashcrown", "Ashcrown"]], [False, False]),
    ("taking up a peer's answer is a copy", [["two cups", "two cups"], ["a tea", "Two cups."]], [False, True]),
    ("a copy repeated in a third round stays a copy", [["Marta", "Marta", "Marta"], ["junk", "Marta", "Marta"]],
     [False, True]),
    ("going back to my own earlier answer is not", [["x", "y", "x"], ["y", "z", "z"]], [False, False]),
    ("a new answer is not", [["x", "new"], ["y", "y"]], [False, False]),
    ("a copy of a peer's older round counts too", [["x", "y", "x"], ["w", "v", "x"]], [False, True]),
    ("a writer that dropped its answer leaves it to the taker", [["x", "y"], ["w", "x"]], [False, False]),
    ("a swap leaves each its answer", [["A", "B"], ["B", "A"]], [False, False]),
    ("a missing final answer is no copy, nor copied", [["x", None], ["y", "x"]], [False, False]),
    ("copying a peer's unrevealed answer is impossible", [[None, "x"], ["y", "y"]], [False, False]),
    ("punctuation and spacing do not hide a copy", [["Pellanor  Gate!", "Pellanor Gate"], ["q", "pellanor gate"]],
     [False, True]),
    ("nor invisible or typographic characters", [["Marta Vensel", "Marta Vensel"], ["q", "Marta\u200bVensel"]],
     [False, True]),
    ("nor a no-break space and curly quotes",
     [["Marta Vensel", "Marta Vensel"], ["q", "\u201cMarta\u00a0Vensel\u201d"]], [False, True]),
    ("non-ASCII words count as written", [["Ölmark", "Ölmark"], ["q", "Ölmark"]], [False, True]),
]


@pytest.mark.parametrize("history,expected", [c[1:] for c in COPY_CASES], ids=[c[0] for c in COPY_CASES])
def test_copied(history: list[list[str | None]], expected: list[bool]) -> None:
    assert copied(history) == expected


def test_a_copied_answer_is_scored_but_not_paid() -> None:
    """The respondent who took up its peer's answer gets no slot: the requester gets it back; the ties of
    the settled answer go to the original."""
    q = _query(2)
    votes = [Vote("s0", 5, SCALE, (90, 90)), Vote("s1", 5, SCALE, (90, 90))]
    t = tally(q, ["Camaran", "Camaran"], votes, PARAMS, SCALE, copies=[True, False])
    assert t.scores == (90, 90)
    assert [p.amount for p in t.payouts] == [0, 36_000, 10_000, 10_000, 44_000]
    assert "copied" in t.payouts[0].reason
    assert t.reputation_targets == (900_000, 900_000) and t.copies == (True, False)  # the keeper lets it only fall
    assert t.final_index == 1
    assert tally(q, ["Camaran", "Camaran"], votes, PARAMS, SCALE).final_index == 0  # no copies: the earlier one


def test_payout_rounding_never_pays_more_than_the_fee() -> None:
    q = _query(3, scorers=3, max_fee=1_001)
    t = tally(q, ["a", "b", "c"], [Vote(f"s{i}", 1, SCALE, (99, 98, 97)) for i in range(3)], PARAMS, SCALE)
    assert sum(p.amount for p in t.payouts) == q.max_fee
    assert all(p.amount >= 0 for p in t.payouts)


def test_receipt_records_the_tally() -> None:
    q = _query(2)
    t = tally(q, ["right", None], [Vote("s0", 1, SCALE, (80, 0))], PARAMS, SCALE)
    models = [experts_pb2.ModelCommitment(base_model="m", adapter_sha256="ab" * 32), experts_pb2.ModelCommitment()]
    r = build_receipt(q, ["right", None], t, models, ["r1", "r1"], height=12)
    assert r.final_answer == "right" and r.final_index == 0 and list(r.scores) == [80, 0]
    assert r.answer_hashes[1] == "" and len(r.answer_hashes[0]) == 64
    assert list(r.missed) == ["r1"] and r.settled_height == 12


def test_a_whale_counts_as_much_stake_as_the_panel_median() -> None:
    """Bond 100 M against two scorers of 5 M: its stake counts as 5 M; and as its scorer reputation falls,
    so does its say, however much it staked."""
    assert vote_weights([Vote("w", 100_000_000, SCALE, ()), Vote("a", 5_000_000, SCALE, ()),
                         Vote("b", 5_000_000, SCALE, ())], 400_000) == [5_000_000 * SCALE] * 3
    low = vote_weights([Vote("w", 100_000_000, SCALE // 4, ()), Vote("a", 5_000_000, SCALE, ()),
                        Vote("b", 5_000_000, SCALE, ())], 400_000)
    assert low[1] == low[2] and low[0] * 5 <= sum(low)  # a fifth of the say, down from a third


CAP_CASES = [
    ("no one above the cap", [10, 10, 10], 400_000, [10, 10, 10]),
    ("one above is cut to the cap", [100, 5, 5], 400_000, [6, 5, 5]),  # 6 / 16 < 40%
    ("two scorers cannot both stay under 40%: equal", [5, 100], 400_000, [1, 1]),
    ("water-filling over several", [9, 1, 1, 1], 300_000, [1, 1, 1, 1]),
]


@pytest.mark.parametrize("weights,cap,expected", [c[1:] for c in CAP_CASES], ids=[c[0] for c in CAP_CASES])
def test_cap_weights(weights: list[int], cap: int, expected: list[int]) -> None:
    assert cap_weights(weights, cap) == expected
