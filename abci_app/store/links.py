"""Absence proofs that CometBFT's stock proof runtime can check.

A store's tree is in write order, so two neighbouring leaves say nothing about the keys between them,
and `cometbft light` knows only `simple:v`, which proves a value is present. So every store also
commits, in its own tree, a sorted linked list of its keys: for each present key K (and a head, K =
b""), the link LINK_PREFIX + K holds the next present key. A key X is absent when the link of its
predecessor P (P < X) names a next key N > X, or none: one ordinary presence proof of that link.

Links are derived from the keys alone, at Commit, so modules never see or write them; their keys sort
above every module key (modules use ASCII prefixes) and iteration stops below them.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Mapping
from typing import Protocol

LINK_PREFIX = b"\xff\xfflink:"
"""Reserved: no module key may start with it (CommittedStore.stage refuses one that does)."""


def link_key(key: bytes) -> bytes:
    return LINK_PREFIX + key


def is_link(key: bytes) -> bool:
    return key.startswith(LINK_PREFIX)


def encode_next(next_key: bytes | None) -> bytes:
    return b"\x00" if next_key is None else b"\x01" + next_key


def decode_next(value: bytes) -> bytes | None:
    if value[:1] == b"\x00" and len(value) == 1:
        return None
    if value[:1] != b"\x01":
        raise ValueError("not a link value")
    return value[1:]


def proves_absence(key: bytes, link: bytes, link_value: bytes) -> bool:
    """Whether a (proven) link shows `key` absent: it starts below key and its next key is past it."""
    if not is_link(link) or is_link(key):
        return False
    before, after = link[len(LINK_PREFIX):], decode_next(link_value)
    return before < key and (after is None or key < after)


class Neighbours(Protocol):
    """Committed present keys next to a position (links excluded)."""

    def next_present(self, store: str, after: bytes) -> bytes | None: ...

    def prev_present(self, store: str, before: bytes) -> bytes | None: ...


class _Surviving:
    """The nearest committed key in one direction that the block does not remove. Runs of removed keys
    are walked once and remembered, so a block removing n neighbouring keys costs O(n) lookups, not n²."""

    def __init__(self, step: Callable[[str, bytes], bytes | None], store: str, removed: set[bytes]) -> None:
        self.step, self.store, self.removed = step, store, removed
        self.beyond: dict[bytes, bytes | None] = {}  # removed key -> first surviving key past it

    def __call__(self, x: bytes) -> bytes | None:
        walked: list[bytes] = []
        y = self.step(self.store, x)
        while y is not None and y in self.removed:
            if y in self.beyond:
                y = self.beyond[y]
                break
            walked.append(y)
            y = self.step(self.store, y)
        for w in walked:
            self.beyond[w] = y
        return y


def link_updates(neighbours: Neighbours, store: str, flips: Mapping[bytes, bool]) -> dict[bytes, bytes | None]:
    """The link writes a block needs, given the keys whose presence it flips (key -> present after)."""
    inserted = sorted(k for k, present in flips.items() if present)
    removed = {k for k, present in flips.items() if not present}
    above = _Surviving(neighbours.next_present, store, removed)
    below = _Surviving(neighbours.prev_present, store, removed)

    def succ(x: bytes) -> bytes | None:
        i = bisect_right(inserted, x)
        found = [k for k in (above(x), inserted[i] if i < len(inserted) else None) if k is not None]
        return min(found) if found else None

    def pred(x: bytes) -> bytes:
        i = bisect_left(inserted, x)
        found = [k for k in (below(x), inserted[i - 1] if i else None) if k is not None]
        return max(found) if found else b""

    writes: dict[bytes, bytes | None] = {link_key(k): None for k in removed}
    for p in sorted({*inserted, *(pred(k) for k in flips)}):
        writes[link_key(p)] = encode_next(succ(p))
    return writes
