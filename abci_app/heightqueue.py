"""Work that falls due at a block height, kept in a module's own store and read in height order.

An entry is the key prefix ‖ be8(height) ‖ item, so a prefix scan yields entries by height (then by
item bytes) and end-block work stops at the first entry that is not yet due. Both the experts'
unbonding releases and the inference deadlines live in one of these.
"""

from __future__ import annotations

from abci_app.context import Ctx

_PRESENT = b"\x01"


class HeightQueue:
    def __init__(self, store: str, prefix: bytes) -> None:
        self.store = store
        self.prefix = prefix

    def key(self, height: int, item: bytes) -> bytes:
        return self.prefix + height.to_bytes(8, "big") + item

    def push(self, ctx: Ctx, height: int, item: bytes) -> None:
        ctx.kv(self.store).set(self.key(height, item), _PRESENT)

    def remove(self, ctx: Ctx, height: int, item: bytes) -> None:
        ctx.kv(self.store).delete(self.key(height, item))

    def due(self, ctx: Ctx, height: int) -> list[tuple[int, bytes]]:
        """(height, item) of every entry due at or before height, in queue order."""
        out = []
        start = len(self.prefix)
        for key, _ in ctx.kv(self.store).iterate(self.prefix):
            at = int.from_bytes(key[start:start + 8], "big")
            if at > height:
                break
            out.append((at, key[start + 8:]))
        return out
