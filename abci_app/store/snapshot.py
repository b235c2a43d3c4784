"""State sync snapshots, format 1: the committed state as one deterministic byte stream, and its import.

The stream is MAGIC, then records: every meta row (key order); then, for each store (name order), its name
and its rows in leaf-position order; then an end record with the number of rows. A row is its position, key
and value, or no value for a deleted key (which keeps its leaf). Equal states give equal bytes, so every
node's snapshot of a height is the same and a joining node can fetch its chunks from any of them.

Import trusts nothing but the app hash CometBFT's light client verified: it rebuilds every store's tree from
the rows and writes only if their multistore root is that hash. Every row's key, value and position is then
proven (a deleted key's leaf commits to its key too); the meta block time is not, and steers CheckTx only until
the next Commit writes the real one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from abci_app.encoding import uvarint
from abci_app.store.db import CommittedStore, RowConflict, multistore_root
from abci_app.store.merkle import MerkleLog, StreamingRoot, committed_view, kv_leaf

FORMAT = 1
MAGIC = b"llmnet-snapshot\x00\x01"
MAX_FIELD_BYTES = 64 << 20
"""No key, value or name is near this; a length prefix beyond it is garbage, refused before reading on."""
_META, _STORE, _ROW, _END = b"M", b"S", b"R", b"E"
_ABSENT, _PRESENT = b"\x00", b"\x01"
MAX_TIME_DIGITS = 19
"""A block time in nanoseconds fits an int64: 19 digits."""
META = ("app_hash", "height", "time_ns")
"""Every meta row the store keeps; a snapshot with others is from a version this one cannot vouch for."""


class SnapshotError(ValueError):
    """Snapshot data that is malformed, or that does not hash to the trusted app hash."""


class Source(Protocol):
    """A consistent read of the committed state (db.ReadTransaction)."""

    store_names: tuple[str, ...]

    def meta(self) -> list[tuple[str, bytes]]: ...

    def rows(self, store: str) -> Iterable[tuple[bytes, bytes | None, int]]: ...


def _field(data: bytes) -> bytes:
    return uvarint(len(data)) + data


def export(source: Source) -> Iterator[bytes]:
    """The snapshot's bytes as a run of pieces (the caller cuts chunks). Raises SnapshotError on positions
    that are not 0..n-1, which no import could turn back into the same tree."""
    yield MAGIC
    for name, data in sorted(source.meta()):
        yield _META + _field(name.encode()) + _field(data)
    count = 0
    for store in sorted(source.store_names):
        yield _STORE + _field(store.encode())
        for expected, (key, value, pos) in enumerate(source.rows(store)):
            if pos != expected:
                raise SnapshotError(f"store {store!r} has a row at position {pos} where {expected} belongs")
            yield _ROW + uvarint(pos) + _field(key) + (_ABSENT if value is None else _PRESENT + _field(value))
            count += 1
    yield _END + uvarint(count)


class _Input:
    """The stream, read across chunk boundaries; running out mid-record is a SnapshotError."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._buf = bytearray()
        self._at = 0

    def _fill(self, n: int) -> bool:
        while len(self._buf) - self._at < n:
            more = next(self._chunks, None)
            if more is None:
                return False
            if self._at > len(self._buf) // 2:
                del self._buf[: self._at]
                self._at = 0
            self._buf += more
        return True

    def take(self, n: int) -> bytes:
        if not self._fill(n):
            raise SnapshotError("the snapshot ends in the middle of a record")
        out = bytes(self._buf[self._at : self._at + n])
        self._at += n
        return out

    def peek(self) -> bytes:
        """The next byte, left unread (b"" at the end)."""
        return bytes(self._buf[self._at : self._at + 1]) if self._fill(1) else b""

    def at_end(self) -> bool:
        return not self._fill(1)

    def number(self) -> int:
        value = 0
        for shift in range(0, 70, 7):
            byte = self.take(1)[0]
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
        raise SnapshotError("a number in the snapshot is longer than 10 bytes")

    def field(self) -> bytes:
        size = self.number()
        if size > MAX_FIELD_BYTES:
            raise SnapshotError(f"a field claims {size} bytes, over the {MAX_FIELD_BYTES} any field may have")
        return self.take(size)

    def text(self) -> str:
        try:
            return self.field().decode()
        except UnicodeDecodeError:
            raise SnapshotError("a name in the snapshot is not UTF-8") from None


@dataclass(frozen=True)
class Row:
    store: str
    key: bytes
    value: bytes | None
    pos: int


def _rows_of(inp: _Input, store: str, counted: list[int]) -> Iterator[Row]:
    """One store's rows, up to the record that follows them; counted[0] counts them. Keys are not remembered
    to catch repeats (a peer could make that set cost many times the bytes it sends): rows that hash to the
    trusted app hash are the chain's own, which has none, and the database's primary key refuses any anyway."""
    while inp.peek() == _ROW:
        inp.take(1)
        pos, key = inp.number(), inp.field()
        flag = inp.take(1)
        if flag not in (_ABSENT, _PRESENT):
            raise SnapshotError(f"row {pos} of store {store!r} has no valid presence flag")
        value = inp.field() if flag == _PRESENT else None
        if pos != counted[0]:
            raise SnapshotError(f"store {store!r}: row at position {pos} where {counted[0]} belongs")
        counted[0] += 1
        yield Row(store, key, value, pos)


def parse(chunks: Iterable[bytes], store_names: Iterable[str]) -> Iterator[tuple[str, bytes] | Row]:
    """Meta rows as (key, value), then Rows, with every rule of the format checked on the way: known stores
    in name order, each store's positions 0..n-1, the end record's count, nothing after."""
    known = set(store_names)
    inp = _Input(chunks)
    if inp.take(len(MAGIC)) != MAGIC:
        raise SnapshotError("not a format 1 snapshot (wrong magic bytes)")
    last_meta, last_store, count = "", "", 0
    while True:
        tag = inp.take(1)
        if tag == _META and not last_store:
            key = inp.text()
            if key not in META:  # at once: a peer's unknown records would otherwise pile up until the end
                raise SnapshotError(f"unknown meta key {key[:40]!r}")
            if last_meta and key <= last_meta:
                raise SnapshotError(f"meta key {key!r} out of order")
            last_meta = key
            yield key, inp.field()
        elif tag == _STORE:
            store = inp.text()
            if store not in known or (last_store and store <= last_store):
                raise SnapshotError(f"store {store!r} is unknown here or out of order")
            last_store = store
            counted = [0]
            yield from _rows_of(inp, store, counted)
            count += counted[0]
        elif tag == _END:
            if inp.number() != count:
                raise SnapshotError(f"the end record's row count does not match the {count} rows read")
            if not inp.at_end():
                raise SnapshotError("bytes follow the end record")
            return
        else:
            raise SnapshotError(f"unexpected record {tag!r}")


def _check_meta(meta: dict[str, bytes], height: int, app_hash: bytes) -> None:
    """Height and app hash must be the trusted ones. The block time is not under the app hash: a lying peer could
    change it, which would steer CheckTx's idea of "now" until the next Commit writes the real one."""
    missing, unknown = sorted(set(META) - set(meta)), sorted(set(meta) - set(META))
    if missing or unknown:
        raise SnapshotError(f"the snapshot has no meta {missing} or unknown meta {unknown}")
    if meta["height"] != str(height).encode():
        raise SnapshotError(f"the snapshot says height {meta['height'][:40]!r}, it was offered as height {height}")
    if meta["app_hash"] != app_hash:
        raise SnapshotError(f"the snapshot says app hash {meta['app_hash'][:64].hex()}, the trusted one is "
                            f"{app_hash.hex()}")
    time_ns = meta["time_ns"]
    if not (time_ns.isdigit() and len(time_ns) <= MAX_TIME_DIGITS and int(time_ns) < 1 << 63):
        raise SnapshotError(f"the snapshot's block time {time_ns[:40]!r} is not a nanosecond timestamp")


def _check_root(roots: dict[str, bytes], app_hash: bytes) -> None:
    root = multistore_root(roots)
    if root != app_hash:
        raise SnapshotError(f"the snapshot's state hashes to {root.hex()}, not to the trusted app hash "
                            f"{app_hash.hex()}")


def verify(chunks: Iterable[bytes], store_names: Iterable[str], height: int, app_hash: bytes) -> dict[str, bytes]:
    """The snapshot's meta, once every store's root from its rows gives the trusted app hash. The roots are
    computed as the rows stream by (StreamingRoot), so what a peer sends costs this node O(log n) memory until it
    is proven: no data it could inflate is kept."""
    names = tuple(store_names)
    meta: dict[str, bytes] = {}
    roots = {n: StreamingRoot() for n in names}
    for item in parse(chunks, names):
        if isinstance(item, Row):
            roots[item.store].add(kv_leaf(item.key, item.value))
        else:
            meta[item[0]] = item[1]
    _check_meta(meta, height, app_hash)
    _check_root({n: r.root() for n, r in roots.items()}, app_hash)
    return meta


def _proven_rows(chunks: Iterable[bytes], meta: dict[str, bytes], store_names: tuple[str, ...], app_hash: bytes,
                 trees: dict[str, MerkleLog]) -> Iterator[tuple[str, bytes, bytes | None, int]]:
    """The rows again, for writing; once they are all out, their trees must give the trusted app hash again (the
    chunks are read twice and could have changed in between), and `trees` receives them. Raising here, before
    the last row is taken, rolls the write back."""
    leaves: dict[str, list[bytes]] = {n: [] for n in store_names}
    for item in parse(chunks, store_names):
        if isinstance(item, Row):
            leaves[item.store].append(kv_leaf(item.key, item.value))
            yield item.store, item.key, item.value, item.pos
        elif meta.get(item[0]) != item[1]:
            raise SnapshotError(f"meta {item[0]!r} changed since it was verified")
    built = {n: MerkleLog.from_leaves(found) for n, found in leaves.items()}
    _check_root({n: committed_view(t).root() for n, t in built.items()}, app_hash)
    trees.update(built)


def import_snapshot(committed: CommittedStore, read: Callable[[], Iterable[bytes]], height: int,
                    app_hash: bytes) -> None:
    """Fill an empty store from a snapshot whose state must hash to app_hash. `read` gives the chunks' bytes
    in order, afresh on each call: once to verify, once to write. On any SnapshotError nothing is written."""
    if not committed.is_empty():
        raise SnapshotError(f"state sync fills only an empty store; this one is at height {committed.height}")
    meta = verify(read(), committed.store_names, height, app_hash)
    trees: dict[str, MerkleLog] = {}
    try:
        committed.restore(_proven_rows(read(), meta, committed.store_names, app_hash, trees), meta, trees, height)
    except RowConflict as exc:  # a key twice in one store (the transaction was rolled back)
        raise SnapshotError(f"the snapshot repeats a key: {exc}") from None
