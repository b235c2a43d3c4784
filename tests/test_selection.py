"""The draw: a Fenwick tree of selection weights (abci_app/fenwick.py) and assign() over it."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from abci_app.fenwick import Fenwick
from abci_app.x.inference.selection import assign, points_follow


class DictNodes:
    def __init__(self) -> None:
        self.nodes: dict[int, int] = {}

    def get(self, i: int) -> int:
        return self.nodes.get(i, 0)

    def set(self, i: int, value: int) -> None:
        self.nodes[i] = value


class ListPool:
    """A pool in memory, built the way the chain builds one: slots appended, weights updated."""

    def __init__(self, weights: list[int]) -> None:
        self.tree = Fenwick(DictNodes(), 0)
        self.weights: list[int] = []
        for w in weights:
            self.tree.append(w)
            self.weights.append(w)

    def set(self, slot: int, weight: int) -> None:
        self.tree.add(slot, weight - self.weights[slot - 1])
        self.weights[slot - 1] = weight

    def weight(self, slot: int) -> int:
        return self.weights[slot - 1]

    def address(self, slot: int) -> bytes:
        return bytes([slot]) * 20

    def slot_of(self, address: bytes) -> int | None:
        return address[0] if address[0] <= len(self.weights) else None


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 10**6), min_size=1, max_size=40), st.lists(st.tuples(st.integers(0, 39),
       st.integers(0, 10**6)), max_size=10), st.data())
def test_fenwick_agrees_with_a_list(weights: list[int], updates: list[tuple[int, int]], data: st.DataObject) -> None:
    pool = ListPool(weights)
    for i, w in updates:
        pool.set(1 + i % len(weights), w)
    naive = pool.weights
    assert [pool.tree.prefix(i) for i in range(len(naive) + 1)] == [sum(naive[:i]) for i in range(len(naive) + 1)]
    excluded = {s: naive[s - 1] for s in data.draw(st.sets(st.integers(1, len(naive)), max_size=3))}
    left = [0 if i + 1 in excluded else w for i, w in enumerate(naive)]
    if sum(left):
        point = data.draw(st.integers(0, sum(left) - 1))
        slot = pool.tree.locate(point, excluded)
        assert sum(left[:slot - 1]) <= point < sum(left[:slot])  # the slot whose range holds the point


def test_assign_picks_distinct_experts_and_never_the_excluded_one() -> None:
    pool = ListPool([5, 0, 7, 3, 9, 1])
    got = assign(b"seed", pool, 2, 2, exclude=[pool.address(5)])
    everyone = got.respondents + got.scorers
    assert len(everyone) == 4 == len(set(everyone)) and pool.address(5) not in everyone
    assert pool.address(2) not in everyone  # weight 0: never drawn
    assert assign(b"seed", pool, 2, 2, exclude=[pool.address(5)]) == got  # deterministic
    short = assign(b"seed", pool, 3, 3, exclude=[])
    assert len(short.respondents) + len(short.scorers) == 5  # only five have weight


def test_picks_follow_weights() -> None:
    pool = ListPool([1, 2, 7])
    firsts = Counter(assign(i.to_bytes(4, "big"), pool, 1, 0, exclude=[]).respondents[0][0] for i in range(3000))
    assert [round(firsts[s] / 300) for s in (1, 2, 3)] == [1, 2, 7]


def test_recorded_picks_can_be_rechecked_and_tampering_shows() -> None:
    pool = ListPool([4, 8, 15, 16, 23, 42])
    got = assign(b"x" * 32, pool, 2, 3, exclude=[])
    record = [(role, p.weight, p.point, p.total) for role, p in got.picks]
    assert points_follow(b"x" * 32, record)
    assert not points_follow(b"y" * 32, record)  # another seed
    role, weight, point, total = record[1]
    assert not points_follow(b"x" * 32, [record[0], (role, weight, (point + 1) % total, total), *record[2:]])
    assert not points_follow(b"x" * 32, [record[0], (role, weight, point, total + 1), *record[2:]])
