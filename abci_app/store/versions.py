"""A read-only view of the committed state as it was at a recent height.

The current rows, with the values later blocks overwrote put back (`history`), and each store's tree
cut to its size at that height: a key first written later lies beyond that size and so did not exist.
The tree of height v is the current one with the reverted leaves staged over it, so a proof at v costs
O(changes since v · log n), and its root is the app hash CometBFT put in header v+1.
"""

from __future__ import annotations

import heapq

from abci_app.store.db import CommittedStore, below_links, multistore_root, proof_ops
from abci_app.store.merkle import StagedTree, kv_leaf
from wire.tendermint.crypto import proof_pb2


class HeightNotKept(ValueError):
    pass


class VersionView:
    def __init__(self, committed: CommittedStore, height: int) -> None:
        if not committed.oldest_height() <= height <= committed.height:
            raise HeightNotKept(f"height {height} is not kept: heights {committed.oldest_height()} to "
                             f"{committed.height} are")
        self.committed = committed
        self.height = height
        self.sizes = {str(s): int(n) for s, n in committed.rows_at(
            "SELECT store, size FROM sizes WHERE height=?", (height,))}
        self._trees: dict[str, StagedTree] = {}

    def _size(self, store: str) -> int:
        return self.sizes.get(store, 0)  # a store added after this height had no keys at it

    def _older(self, store: str, key: bytes) -> tuple[bool, bytes | None]:
        """(True, value) if a later block overwrote this key, with the value it had at this height."""
        rows = self.committed.rows_at("SELECT old FROM history WHERE store=? AND key=? AND height>? "
                                      "ORDER BY height LIMIT 1", (store, key, self.height))
        if not rows:
            return False, None
        old = rows[0][0]
        return True, None if old is None else bytes(old)

    def get(self, store: str, key: bytes) -> bytes | None:
        pos = self.committed.position(store, key)
        if pos is None or pos >= self._size(store):
            return None
        overwritten, old = self._older(store, key)
        return old if overwritten else self.committed.get(store, key)

    def iterate(self, store: str, start: bytes, end: bytes | None, limit: int | None = None,
                reverse: bool = False) -> list[tuple[bytes, bytes]]:
        """As CommittedStore.iterate, at this height: rows deleted since count, rows added since do not."""
        # Only rows present now or changed since this height can be present at it. Two sorted streams, merged:
        # present rows through the index that holds only them, and the keys written since this height. Rows
        # deleted before it (queue entries leave many, and they are never removed) are never read: one
        # filter over both kinds made every proof of absence walk them all.
        order = " DESC" if reverse else ""
        bound = below_links(end)
        present = self.committed.cursor_at(
            "SELECT key, value, pos FROM kv INDEXED BY kv_present WHERE store=? AND key>=? AND key<? "
            "AND value IS NOT NULL ORDER BY key" + order, (store, start, bound))
        changed = self.committed.cursor_at(
            "SELECT DISTINCT h.key, k.value, k.pos FROM history h JOIN kv k ON k.store=h.store AND k.key=h.key "
            "WHERE h.store=? AND h.height>? AND h.key>=? AND h.key<? ORDER BY h.key" + order,
            (store, self.height, start, bound))
        out: list[tuple[bytes, bytes]] = []
        last: bytes | None = None
        for key, value, pos in heapq.merge(present, changed, key=lambda row: bytes(row[0]), reverse=reverse):
            key = bytes(key)
            if key == last or int(pos) >= self._size(store):  # seen in both streams; or written after
                continue
            last = key
            overwritten, old = self._older(store, key)
            current = old if overwritten else (None if value is None else bytes(value))
            if current is not None:
                out.append((key, current))
                if limit is not None and len(out) >= limit:
                    break
        return out

    def tree(self, store: str) -> StagedTree:
        if store not in self._trees:
            rows = self.committed.rows_at(
                "SELECT h.key, h.old, k.pos FROM history h JOIN kv k ON k.store=h.store AND k.key=h.key "
                "WHERE h.store=? AND h.height>? ORDER BY h.height DESC", (store, self.height))
            # Newest first, so the earliest overwrite after this height (the value it had here) wins.
            leaves = {int(pos): kv_leaf(bytes(key), None if old is None else bytes(old))
                      for key, old, pos in rows if int(pos) < self._size(store)}
            self._trees[store] = self.committed.trees[store].stage(leaves, self._size(store))
        return self._trees[store]

    def store_roots(self) -> dict[str, bytes]:
        return {name: self.tree(name).root() for name in self.committed.store_names}

    def app_hash(self) -> bytes:
        return multistore_root(self.store_roots())

    def prove(self, store: str, key: bytes) -> list[proof_pb2.ProofOp]:
        pos = self.committed.position(store, key)
        if pos is None or self.get(store, key) is None:
            raise KeyError(key)
        return proof_ops(store, key, pos, self.tree(store), self.store_roots())
