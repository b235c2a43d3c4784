"""A domain's selection pool in the experts store: each expert's current selection weight in one slot
of a Fenwick tree, so a draw reads O(log n) keys (see x/inference/selection.py).

An expert's weight in a domain is max(reputation, exploration_floor) ** selection_exponent while it is
active, serves the domain and has free capacity, and 0 otherwise; the keeper rewrites it whenever any
of those changes. A slot, once given, stays the expert's (weight 0 while ineligible).

Keys under pool/<domain>/: n (slot count), c (slots with weight, i.e. eligible experts), t/<slot> (tree
node), w/<slot> (weight), a/<slot> (address), s/<address> (its slot). Slots are 8-byte big-endian;
weights and node sums minimal big-endian bytes.
"""

from __future__ import annotations

from abci_app.context import KV, Ctx
from abci_app.fenwick import Fenwick
from abci_app.x.experts.types import POOL_PREFIX, STORE


def _int(raw: bytes | None) -> int:
    return 0 if raw is None else int.from_bytes(raw, "big")


def _bytes(n: int) -> bytes:
    return n.to_bytes(max(1, (n.bit_length() + 7) // 8), "big")


class _Nodes:
    def __init__(self, kv: KV, prefix: bytes) -> None:
        self.kv, self.prefix = kv, prefix

    def get(self, i: int) -> int:
        return _int(self.kv.get(self.prefix + i.to_bytes(8, "big")))

    def set(self, i: int, value: int) -> None:
        self.kv.set(self.prefix + i.to_bytes(8, "big"), _bytes(value))


class DomainPool:
    def __init__(self, ctx: Ctx, domain: str) -> None:
        self._kv = ctx.kv(STORE)
        self._prefix = POOL_PREFIX + domain.encode() + b"/"
        self.tree = Fenwick(_Nodes(self._kv, self._prefix + b"t/"), _int(self._kv.get(self._prefix + b"n")))

    def _slot_key(self, part: bytes, slot: int) -> bytes:
        return self._prefix + part + slot.to_bytes(8, "big")

    def weight(self, slot: int) -> int:
        return _int(self._kv.get(self._slot_key(b"w/", slot)))

    def address(self, slot: int) -> bytes:
        raw = self._kv.get(self._slot_key(b"a/", slot))
        if raw is None:
            raise KeyError(f"pool slot {slot} has no address")
        return raw

    def slot_of(self, address: bytes) -> int | None:
        raw = self._kv.get(self._prefix + b"s/" + address)
        return None if raw is None else int.from_bytes(raw, "big")

    def set_weight(self, address: bytes, weight: int) -> None:
        slot = self.slot_of(address)
        if slot is None:
            if weight == 0:
                return  # never eligible here yet: no slot needed
            slot = self.tree.append(weight)
            self._kv.set(self._prefix + b"n", slot.to_bytes(8, "big"))
            self._kv.set(self._slot_key(b"a/", slot), address)
            self._kv.set(self._prefix + b"s/" + address, slot.to_bytes(8, "big"))
            old = 0
        else:
            old = self.weight(slot)
            if old == weight:
                return
            self.tree.add(slot, weight - old)
        self._kv.set(self._slot_key(b"w/", slot), _bytes(weight))
        if (old == 0) != (weight == 0):
            self._kv.set(self._prefix + b"c", _bytes(self.count() + (1 if weight else -1)))

    def count(self) -> int:
        """How many experts are eligible here now (slots with weight)."""
        return _int(self._kv.get(self._prefix + b"c"))

    def total(self) -> int:
        return self.tree.prefix(self.tree.size)
