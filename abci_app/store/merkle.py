"""RFC 6962 Merkle trees laid out exactly as CometBFT's crypto/merkle builds them.

A store's tree has one leaf per key ever written, in the order keys were first written (not in
key order), so a new key appends a leaf and an update rewrites one: Commit then touches
O(writes · log n) nodes however large the state is. Each leaf is CometBFT's KVPair leaf,
leafHash(uvarint(len key) ‖ key ‖ uvarint(32) ‖ sha256(value)), which is what a `simple:v`
ProofOp checks. A deleted key keeps its position with the empty leaf, leafHash(b"").

Complete, aligned subtrees ("perfect nodes") are cached per level in flat byte arrays; every
range root the RFC split asks for is either such a node or is rebuilt from O(log n) of them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from abci_app.encoding import uvarint

HASH_LEN = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def inner_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def kv_leaf(key: bytes, value: bytes | None) -> bytes:
    """A present key's leaf is over its key and its value's hash; a deleted key keeps its place with a leaf over
    the key and an empty hash (never 32 bytes, so never a present leaf), so the app hash pins which key every
    position holds, deleted or not: a snapshot cannot rename a deleted row."""
    if value is None:
        return leaf_hash(uvarint(len(key)) + key + uvarint(0))
    vhash = hashlib.sha256(value).digest()
    return leaf_hash(uvarint(len(key)) + key + uvarint(len(vhash)) + vhash)


def split_point(size: int) -> int:
    """Largest power of two strictly less than size (size >= 2)."""
    return 1 << ((size - 1).bit_length() - 1)


def hash_from_leaves(leaves: list[bytes]) -> bytes:
    """Reference root over already-hashed leaves; used by tests and small trees."""
    if not leaves:
        return EMPTY_ROOT
    if len(leaves) == 1:
        return leaves[0]
    k = split_point(len(leaves))
    return inner_hash(hash_from_leaves(leaves[:k]), hash_from_leaves(leaves[k:]))


class StreamingRoot:
    """The root of leaves seen one at a time, in O(log n) memory: a stack of the perfect subtrees so far (sizes
    strictly decreasing), merged as equal sizes meet. RFC 6962's split puts the largest power of two on the left,
    so the root is those subtrees folded from the right."""

    def __init__(self) -> None:
        self._stack: list[tuple[int, bytes]] = []
        self.size = 0

    def add(self, leaf: bytes) -> None:
        size, node = 1, leaf
        while self._stack and self._stack[-1][0] == size:
            left = self._stack.pop()[1]
            size, node = 2 * size, inner_hash(left, node)
        self._stack.append((size, node))
        self.size += 1

    def root(self) -> bytes:
        if not self._stack:
            return EMPTY_ROOT
        node = self._stack[-1][1]
        for _, left in reversed(self._stack[:-1]):
            node = inner_hash(left, node)
        return node


def root_from_aunts(index: int, total: int, leaf: bytes, aunts: list[bytes]) -> bytes | None:
    """Recompute a root from a leaf and its aunts (bottom-up order), as CometBFT verifies proofs: an index
    outside 0..total-1 proves nothing (-1 of 2 used to walk the path of index 0)."""
    if not 0 <= index < total:
        return None
    if total == 1:
        return leaf if not aunts else None
    if not aunts or total < 1:
        return None
    k = split_point(total)
    if index < k:
        left = root_from_aunts(index, k, leaf, aunts[:-1])
        return None if left is None else inner_hash(left, aunts[-1])
    right = root_from_aunts(index - k, total - k, leaf, aunts[:-1])
    return None if right is None else inner_hash(aunts[-1], right)


class MerkleLog:
    """Perfect-node cache of one store's tree. levels[L] holds node (L, i) at bytes [32i, 32i+32)."""

    def __init__(self) -> None:
        self.size = 0
        self.levels: list[bytearray] = [bytearray()]

    @classmethod
    def from_leaves(cls, leaves: list[bytes]) -> MerkleLog:
        tree = cls()
        tree.size = len(leaves)
        tree.levels = [bytearray(b"".join(leaves))]
        level = 0
        while len(tree.levels[level]) >= 2 * HASH_LEN:
            below = tree.levels[level]
            count = len(below) // HASH_LEN // 2
            above = bytearray()
            for i in range(count):
                a = 2 * i * HASH_LEN
                above += inner_hash(bytes(below[a : a + HASH_LEN]), bytes(below[a + HASH_LEN : a + 2 * HASH_LEN]))
            tree.levels.append(above)
            level += 1
        return tree

    def node(self, level: int, index: int) -> bytes:
        start = index * HASH_LEN
        return bytes(self.levels[level][start : start + HASH_LEN])

    def stage(self, leaf_updates: Mapping[int, bytes], new_size: int) -> StagedTree:
        """Compute the tree after setting leaf_updates (position -> leaf hash) and growing to new_size."""
        staged = StagedTree(self, new_size)
        staged.apply(leaf_updates)
        return staged

    def apply(self, staged: StagedTree) -> None:
        """Make a staged tree the committed one (called at Commit)."""
        size = staged.size
        for level, nodes in enumerate(staged.overlay):
            if level == len(self.levels):
                self.levels.append(bytearray())
            arr = self.levels[level]
            want = (size >> level) * HASH_LEN
            if len(arr) < want:
                arr.extend(bytes(want - len(arr)))
            for index, digest in nodes.items():
                arr[index * HASH_LEN : (index + 1) * HASH_LEN] = digest
        self.size = size


class StagedTree:
    """A copy-on-write view: new perfect nodes in an overlay, the rest read from the base."""

    def __init__(self, base: MerkleLog, size: int) -> None:
        self.base = base
        self.size = size
        self.overlay: list[dict[int, bytes]] = []

    def node(self, level: int, index: int) -> bytes:
        if level < len(self.overlay):
            hit = self.overlay[level].get(index)
            if hit is not None:
                return hit
        return self.base.node(level, index)

    def apply(self, leaf_updates: Mapping[int, bytes]) -> None:
        dirty = sorted(leaf_updates)
        self.overlay = [dict(leaf_updates)]
        level = 0
        while (2 << level) <= self.size and dirty:
            level += 1
            limit = self.size >> level  # perfect nodes that exist at this level
            parents = sorted({i >> 1 for i in dirty if (i >> 1) < limit})
            below = level - 1
            nodes = {p: inner_hash(self.node(below, 2 * p), self.node(below, 2 * p + 1)) for p in parents}
            self.overlay.append(nodes)
            dirty = parents

    def range_root(self, lo: int, hi: int) -> bytes:
        size = hi - lo
        if size == 0:
            return EMPTY_ROOT
        if size & (size - 1) == 0:  # RFC splits keep every power-of-two range aligned
            level = size.bit_length() - 1
            return self.node(level, lo >> level)
        k = split_point(size)
        return inner_hash(self.range_root(lo, lo + k), self.range_root(lo + k, hi))

    def root(self) -> bytes:
        return self.range_root(0, self.size)

    def aunts(self, index: int) -> list[bytes]:
        """Sibling hashes from the leaf up, in the order crypto/merkle.Proof expects."""
        out: list[bytes] = []
        lo, hi = 0, self.size
        path: list[bytes] = []
        while hi - lo > 1:
            k = split_point(hi - lo)
            if index < lo + k:
                path.append(self.range_root(lo + k, hi))
                hi = lo + k
            else:
                path.append(self.range_root(lo, lo + k))
                lo = lo + k
        out.extend(reversed(path))
        return out


def committed_view(tree: MerkleLog) -> StagedTree:
    """A read-only StagedTree over the committed tree, for roots and proofs."""
    return StagedTree(tree, tree.size)
