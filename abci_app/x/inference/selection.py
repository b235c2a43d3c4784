"""Deterministic reputation-weighted selection without replacement, in O(log n) reads.

A domain's eligible experts sit in slots of a Fenwick tree of selection weights (abci_app/fenwick.py),
kept in the experts store (x/experts/pool.py). A draw picks point = H(seed, salt, counter) mod total
and walks down the tree to the slot whose weight range holds the point; picked slots (and the
requester's own) are subtracted on the way, so no one is picked twice. Cost: O(log n) reads per pick,
whatever the domain's size.

Every pick is recorded (address, weight, point, total), so anyone can recheck the points from the seed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Protocol

from abci_app.fenwick import Fenwick


class Pool(Protocol):
    """A domain's selection pool as the draw reads it."""

    @property
    def tree(self) -> Fenwick: ...

    def weight(self, slot: int) -> int: ...

    def address(self, slot: int) -> bytes: ...

    def slot_of(self, address: bytes) -> int | None: ...


@dataclass(frozen=True)
class Pick:
    address: bytes
    weight: int
    point: int
    total: int


@dataclass(frozen=True)
class Assignment:
    respondents: list[bytes]
    scorers: list[bytes]
    picks: list[tuple[str, Pick]] = field(default_factory=list)
    """(role, pick) in draw order: respondents first, then scorers."""


def point_for(seed: bytes, salt: bytes, counter: int, total: int) -> int:
    digest = hashlib.sha256(seed + salt + counter.to_bytes(8, "big")).digest()
    return int.from_bytes(digest, "big") % total


def query_seed(beacon: bytes, query_id: int) -> bytes:
    return hashlib.sha256(b"llmnet/select" + beacon + query_id.to_bytes(8, "big")).digest()


def assign(seed: bytes, pool: Pool, k_respondents: int, k_scorers: int, exclude: list[bytes]) -> Assignment:
    """The one draw of a query: respondents first, then scorers among those left; never an excluded
    address (the requester). Fewer picks than asked means the pool ran out of weight."""
    excluded: dict[int, int] = {}
    for address in exclude:
        slot = pool.slot_of(address)
        if slot is not None:
            excluded[slot] = pool.weight(slot)
    total = pool.tree.prefix(pool.tree.size) - sum(excluded.values())
    chosen: dict[str, list[Pick]] = {"respondent": [], "scorer": []}
    for role, salt, count in (("respondent", b"respondents", k_respondents), ("scorer", b"scorers", k_scorers)):
        for counter in range(count):
            if total <= 0:
                break
            point = point_for(seed, salt, counter, total)
            slot = pool.tree.locate(point, excluded)
            weight = pool.weight(slot)
            chosen[role].append(Pick(pool.address(slot), weight, point, total))
            excluded[slot] = weight
            total -= weight
    return Assignment([p.address for p in chosen["respondent"]], [p.address for p in chosen["scorer"]],
                      [(role, p) for role in ("respondent", "scorer") for p in chosen[role]])


def points_follow(seed: bytes, picks: list[tuple[str, int, int, int]]) -> bool:
    """Whether recorded (role, weight, point, total) picks follow from the seed: each point is the
    hash-derived point for its total, and each total is the previous one's minus the previous weight."""
    counters = {"respondent": 0, "scorer": 0}
    salts = {"respondent": b"respondents", "scorer": b"scorers"}
    previous: tuple[int, int] | None = None
    for role, weight, point, total in picks:
        if role not in counters or weight <= 0 or not 0 <= point < total:
            return False
        if previous is not None and total != previous[0] - previous[1]:
            return False
        if point != point_for(seed, salts[role], counters[role], total):
            return False
        counters[role] += 1
        previous = (total, weight)
    return True
