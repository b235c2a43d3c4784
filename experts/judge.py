"""How an expert scores its peers' final answers: by what its adapter for the domain knows.

A scorer holding an adapter for the query's domain scores an answer by the probability the adapter gives
it as the reply to the question: score = round(100 * p^2), p the geometric mean of the probabilities of
the answer's tokens and its end of turn (experts/engine.py answer_logprob), so 100 for an answer the
adapter would give word for word, falling fast for what it finds unlikely. It rewards an answer that states
the domain's facts in any wording the adapter finds natural, where comparing words with the scorer's own
answer punished paraphrase and rewarded whatever the scorer happened to say. On a labelled judging set
from the dev split (bench/judging.py) it separates right from wrong answers better than word overlap with
the scorer's own answer (see README, Benchmarks). Deterministic given the model; a missing answer scores 0.

An expert with no adapter for the query's domain knows nothing the respondents do not: its own answer is
no reference (scored by overlap with it, right answers fell below wrong ones, AUC 0.07). It scores every
given answer NEUTRAL, so the panel's aggregate follows the scorers that know the domain, and its own
agreement with those aggregates (its scorer reputation, hence its weight) falls.
"""

from __future__ import annotations

import math

NEUTRAL = 50
SHARPNESS = 2
"""The exponent on the mean token probability: at 2, nine in ten right answers of the judging set score at
least 50 (the chain's default quality threshold) and fewer than a third of the wrong ones do."""


def likelihood_score(mean_logprob: float) -> int:
    """0..100 from the mean log-probability per token of an answer under the scorer's adapter."""
    if not math.isfinite(mean_logprob):
        return 0
    return max(0, min(100, round(100 * math.exp(SHARPNESS * min(0.0, mean_logprob)))))


def neutral(answer: str | None) -> int:
    return 0 if answer is None else NEUTRAL
