"""How an expert scores its peers: agreement with the answer it would give itself.

score = round(100 * F1) where F1 is the bag-of-words overlap (lower-cased word tokens, SQuAD style)
between a final answer and the judge's own greedy answer to the same question, made with its adapter
for the query's domain. An expert that knows the domain rewards answers that state the same facts and
penalises padding; deterministic given the model. A missing answer scores 0.
"""

from __future__ import annotations

import re
from collections import Counter

WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def overlap_f1(answer: str, reference: str) -> float:
    a, r = words(answer), words(reference)
    if not a or not r:
        return 0.0
    common = sum((Counter(a) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(a), common / len(r)
    return 2 * precision * recall / (precision + recall)


def score(answer: str | None, reference: str) -> int:
    return 0 if answer is None else round(100 * overlap_f1(answer, reference))
