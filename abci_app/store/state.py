"""Pending state over the committed store, with nested scopes that commit or roll back.

A State is what one block (or the mempool's check state) sees: reads fall through the layers to
the database; writes stay in memory until the block's Commit. `scope()` opens a layer that
folds into its parent on success and vanishes on any exception, so a rejected transaction
leaves the state exactly as it was.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from abci_app.store.db import Writes, prefix_end

Key = tuple[str, bytes]


class Readable(Protocol):
    """What a State reads through to: the committed store, or a view of a recent height (queries)."""

    def get(self, store: str, key: bytes) -> bytes | None: ...

    def iterate(self, store: str, start: bytes, end: bytes | None, limit: int | None = None,
                reverse: bool = False) -> list[tuple[bytes, bytes]]: ...


class State:
    def __init__(self, committed: Readable) -> None:
        self.committed = committed
        self._layers: list[dict[Key, bytes | None]] = [{}]

    def get(self, store: str, key: bytes) -> bytes | None:
        k = (store, key)
        for layer in reversed(self._layers):
            if k in layer:
                return layer[k]
        return self.committed.get(store, key)

    def set(self, store: str, key: bytes, value: bytes) -> None:
        self._layers[-1][(store, key)] = value

    def delete(self, store: str, key: bytes) -> None:
        self._layers[-1][(store, key)] = None

    def iterate(self, store: str, prefix: bytes) -> list[tuple[bytes, bytes]]:
        """Present keys with this prefix, in key order, pending writes included."""
        return self.iterate_range(store, prefix, prefix_end(prefix))

    def iterate_range(self, store: str, start: bytes, end: bytes | None, limit: int | None = None,
                      reverse: bool = False) -> list[tuple[bytes, bytes]]:
        """Present keys in [start, end), in key order (descending with reverse), pending writes included,
        at most limit of them."""
        pending: dict[bytes, bytes | None] = {}
        for layer in self._layers:
            for (s, key), value in layer.items():
                if s == store and key >= start and (end is None or key < end):
                    pending[key] = value
        # each pending entry can hide or replace at most one committed row: fetch that many more
        fetch = None if limit is None else limit + len(pending)
        merged = dict(self.committed.iterate(store, start, end, fetch, reverse))
        for key, value in pending.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
        return sorted(merged.items(), reverse=reverse)[:limit]

    @contextmanager
    def scope(self) -> Iterator[None]:
        self._layers.append({})
        try:
            yield
        except BaseException:
            self._layers.pop()
            raise
        top = self._layers.pop()
        self._layers[-1].update(top)

    def fork(self) -> State:
        """An independent State that starts with this one's pending writes."""
        if len(self._layers) != 1:
            raise RuntimeError("fork() inside an open scope")
        copy = State(self.committed)
        copy._layers[0] = dict(self._layers[0])
        return copy

    def writes(self) -> Writes:
        if len(self._layers) != 1:
            raise RuntimeError("writes() inside an open scope")
        return self._layers[0]
