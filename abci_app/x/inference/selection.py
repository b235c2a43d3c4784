"""Deterministic reputation-weighted selection without replacement.

Anyone can recompute a query's draw from its stored seed and candidate list: the seed comes
from consensus data (the hash of the block that includes the query, and the query id), weights
are integers, and the candidate order is the address order.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


def weight(reputation: int, floor: int, exponent: int) -> int:
    """max(R, floor) ** gamma: grows with reputation, but newcomers keep a chance (exploration)."""
    return int(max(reputation, floor) ** exponent)


def query_seed(block_hash: bytes, query_id: int) -> bytes:
    return hashlib.sha256(b"llmnet/select" + block_hash + query_id.to_bytes(8, "big")).digest()


def draw(seed: bytes, candidates: list[tuple[bytes, int]], count: int, salt: bytes = b"") -> list[bytes]:
    """Pick count distinct addresses, each with probability proportional to its weight."""
    pool = list(candidates)
    chosen: list[bytes] = []
    counter = 0
    while len(chosen) < count and pool:
        total = sum(w for _, w in pool)
        digest = hashlib.sha256(seed + salt + counter.to_bytes(8, "big")).digest()
        counter += 1
        if total == 0:
            index = int.from_bytes(digest, "big") % len(pool)
        else:
            point, acc, index = int.from_bytes(digest, "big") % total, 0, 0
            for index, (_, w) in enumerate(pool):  # noqa: B007 - index is the result
                acc += w
                if point < acc:
                    break
        chosen.append(pool.pop(index)[0])
    return chosen


@dataclass(frozen=True)
class Assignment:
    respondents: list[bytes]
    scorers: list[bytes]


def assign(seed: bytes, candidates: list[tuple[bytes, int]], k_respondents: int, k_scorers: int) -> Assignment:
    """The one draw of a query: respondents first, then scorers among those left. Submit uses it to
    pick, ExplainSelection to show anyone that the stored seed and candidates give the stored pick."""
    respondents = draw(seed, candidates, k_respondents, b"respondents")
    rest = [(a, w) for a, w in candidates if a not in respondents]
    return Assignment(respondents, draw(seed, rest, k_scorers, b"scorers"))
