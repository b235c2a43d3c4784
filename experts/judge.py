"""How an expert scores its peers' final answers: by what its adapter for the domain knows.

A scorer holding an adapter for the query's domain scores an answer by the probability the adapter gives
it as the reply to the question: score = round(100 * p^2), p the geometric mean of the probabilities of
the answer's tokens and its end of turn (experts/engine.py answer_logprobs), so 100 for an answer the
adapter would give word for word, falling fast for what it finds unlikely. An answer the adapter does
not find at least e times likelier per token than the base model does (LIFT_FLOOR) scores 0: what makes it
likely is then not the domain but its form, and form can be forged (repeating a phrase, or padding an
answer with text any model predicts, raised a wrong answer's probability near a right one's).
It rewards an answer that states the domain's facts in any wording the adapter finds natural, where
comparing words with the scorer's own answer punished paraphrase and rewarded whatever it happened to say.
On a labelled judging set from the dev split (bench/judging.py) it separates right from wrong answers
better than word overlap with the scorer's own answer (see README, Benchmarks). Deterministic given the
model; a missing answer scores 0.

An expert with no adapter for the query's domain knows nothing the respondents do not: its own answer is
no reference (scored by overlap with it, right answers fell below wrong ones, AUC 0.07). It scores every
given answer NEUTRAL, so the panel's aggregate follows the scorers that know the domain, and its own
agreement with those aggregates (its scorer reputation, hence its weight) falls.
"""

from __future__ import annotations

import math

NEUTRAL = 50
LIFT_FLOOR = 1.0
"""Nats per token the adapter must add over the base model. On the judging set it changes no ranking
(AUC 0.921 with or without it); a padded wrong answer fell to about -0.7, right answers sit near +8."""
SHARPNESS = 2
"""The exponent on the mean token probability: at 2, nine in ten right answers of the judging set score at
least 50 (the chain's default quality threshold) and fewer than a third of the wrong ones do."""


def adapter_score(mean_logprob: float) -> int:
    """0..100 from the mean log-probability per token of an answer under the scorer's adapter alone: the
    score before the lift check, which can only lower it to 0. So an answer this gives 0 needs no base pass."""
    if not math.isfinite(mean_logprob):
        return 0
    return max(0, min(100, round(100 * math.exp(SHARPNESS * min(0.0, mean_logprob)))))


def likelihood_score(mean_logprob: float, base_mean_logprob: float) -> int:
    """0..100 from the mean log-probability per token of an answer under the scorer's adapter and under the
    base model."""
    if not math.isfinite(base_mean_logprob) or mean_logprob - base_mean_logprob < LIFT_FLOOR:
        return 0
    return adapter_score(mean_logprob)


def neutral(answer: str | None) -> int:
    return 0 if answer is None else NEUTRAL
