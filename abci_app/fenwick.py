"""A Fenwick tree (binary indexed tree) of integer weights over slots 1..size, on any node storage.

Node i holds the sum of the weights of slots (i - lowbit(i), i], so a prefix sum, a point update and
finding the slot that holds a given cumulative point each touch O(log n) nodes. The experts' selection
pools keep their nodes in state; tests keep them in a dict.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol


class Nodes(Protocol):
    """Where a Fenwick tree's node sums live (state, or a dict in tests). Missing nodes are 0."""

    def get(self, i: int) -> int: ...

    def set(self, i: int, value: int) -> None: ...


def _low(i: int) -> int:
    return i & -i


class Fenwick:
    def __init__(self, nodes: Nodes, size: int) -> None:
        self.nodes = nodes
        self.size = size

    def prefix(self, i: int) -> int:
        """Sum of the weights of slots 1..i."""
        total = 0
        while i > 0:
            total += self.nodes.get(i)
            i -= _low(i)
        return total

    def add(self, slot: int, delta: int) -> None:
        while slot <= self.size:
            self.nodes.set(slot, self.nodes.get(slot) + delta)
            slot += _low(slot)

    def append(self, weight: int) -> int:
        """A new last slot holding weight; returns its index."""
        slot = self.size + 1
        self.nodes.set(slot, weight + self.prefix(slot - 1) - self.prefix(slot - _low(slot)))
        self.size = slot
        return slot

    def locate(self, point: int, excluded: Mapping[int, int]) -> int:
        """The slot whose weight range holds point, counting excluded slots (slot -> weight) as empty.
        point must be below the total minus the excluded weights."""
        pos, step = 0, 1 << max(0, self.size.bit_length() - 1)
        while step:
            nxt = pos + step
            if nxt <= self.size:
                node = self.nodes.get(nxt) - sum(w for s, w in excluded.items() if nxt - _low(nxt) < s <= nxt)
                if node <= point:
                    pos, point = nxt, point - node
            step >>= 1
        return pos + 1
