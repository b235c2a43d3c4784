"""Work that falls due at a block height, kept in a module's own store and read in height order.

An entry is the key prefix ‖ be8(height) ‖ item, so a range scan yields entries by height (then by item
bytes). Nothing is ever queued below the current height, so when every due entry was taken, only the
current height can hold work: the scan covers that height alone and seeks past everything done before,
deleted keys included (the store keeps them: its Merkle log is append-only; they must cost nothing).
Each block takes at most `limit` entries; when some are left, a cursor (prefix ‖ 0xff, outside every
entry's range since heights are below 2^63) marks the lowest height still holding work, and the next
blocks scan from there first. One block's end-of-block work is bounded whatever is queued, and a quiet
block writes nothing.
"""

from __future__ import annotations

from abci_app.context import Ctx

_PRESENT = b"\x01"


class HeightQueue:
    def __init__(self, store: str, prefix: bytes) -> None:
        self.store = store
        self.prefix = prefix
        self._cursor_key = prefix + b"\xff"

    def key(self, height: int, item: bytes) -> bytes:
        return self.prefix + height.to_bytes(8, "big") + item

    def push(self, ctx: Ctx, height: int, item: bytes) -> None:
        if height < ctx.env.height:
            raise ValueError(f"cannot queue work at height {height}, below the current {ctx.env.height}")
        ctx.kv(self.store).set(self.key(height, item), _PRESENT)

    def remove(self, ctx: Ctx, height: int, item: bytes) -> None:
        ctx.kv(self.store).delete(self.key(height, item))

    def due(self, ctx: Ctx, height: int, limit: int) -> list[tuple[int, bytes]]:
        """(height, item) of up to limit entries due at or before height, in queue order. The caller
        removes (or moves) each entry it takes, then calls done()."""
        kv = ctx.kv(self.store)
        raw = kv.get(self._cursor_key)
        cursor = height if raw is None else int.from_bytes(raw, "big")
        start = len(self.prefix)
        return [(int.from_bytes(k[start:start + 8], "big"), k[start + 8:])
                for k, _ in kv.iterate_range(self.key(cursor, b""), self.key(height + 1, b""), limit)]

    def hold(self, ctx: Ctx, height: int) -> None:
        """Take nothing this block: what is due at or before `height` waits for a later one, whose scan starts
        at the lowest height still holding work (without a cursor it would cover its own height alone, and the
        held work would be lost). While anything is held the cursor is written again every block, so the block
        counts as one that changed state (x/beacon keeps its commitments only then, and a seed needs them)."""
        kv = ctx.kv(self.store)
        raw = kv.get(self._cursor_key)
        if raw is not None:
            kv.set(self._cursor_key, raw)
        elif kv.iterate_range(self.key(height, b""), self.key(height + 1, b""), 1):
            kv.set(self._cursor_key, height.to_bytes(8, "big"))

    def done(self, ctx: Ctx, taken: list[tuple[int, bytes]], limit: int) -> None:
        """Keep a cursor only while work is left over (taken was cut at the limit)."""
        kv = ctx.kv(self.store)
        if len(taken) >= limit:
            kv.set(self._cursor_key, taken[-1][0].to_bytes(8, "big"))
        elif kv.get(self._cursor_key) is not None:
            kv.delete(self._cursor_key)
