"""Snapshot format 1 at the store level: export then import reproduces the trees and the app hash, however the
bytes are cut; every malformed stream is refused with a SnapshotError and leaves the target store untouched."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from abci_app.encoding import uvarint
from abci_app.store.db import CommittedStore
from abci_app.store.snapshot import MAGIC, SnapshotError, export, import_snapshot

STORES = ("alpha", "beta", "gamma")


def _source(tmp_path: Path) -> CommittedStore:
    """Three blocks: keys written, overwritten, deleted (their leaves stay) and written again; gamma stays empty."""
    store = CommittedStore(tmp_path / "source.db", STORES)
    first: dict[tuple[str, bytes], bytes | None] = {("alpha", b"a%d" % i): b"v%d" % i for i in range(40)}
    blocks: list[dict[tuple[str, bytes], bytes | None]] = [
        first | {("beta", b"b"): b"x" * 3000},
        {("alpha", b"a%d" % i): None for i in range(0, 40, 3)} | {("alpha", b"a1"): b"new"},
        {("alpha", b"a0"): b"back", ("beta", b"c"): b"y"},
    ]
    for height, writes in enumerate(blocks, start=1):
        store.commit(store.stage(writes), height, {"time_ns": b"%d" % (1000 + height)})
    return store


def _stream(store: CommittedStore) -> bytes:
    reader = store.read_transaction()
    try:
        return b"".join(export(reader))
    finally:
        reader.close()


def _field(data: bytes) -> bytes:
    return uvarint(len(data)) + data


def _row(pos: int, key: bytes, value: bytes | None) -> bytes:
    return b"R" + uvarint(pos) + _field(key) + (b"\x00" if value is None else b"\x01" + _field(value))


def _rows(store: CommittedStore) -> list[tuple[object, ...]]:
    return store.rows_at("SELECT store, key, value, pos FROM kv ORDER BY store, pos", ())


@pytest.mark.parametrize("cut", [1, 7, 100, 1 << 20])
def test_export_then_import_gives_the_same_trees_rows_and_app_hash(tmp_path: Path, cut: int) -> None:
    source = _source(tmp_path)
    data = _stream(source)
    assert data == _stream(source)  # deterministic
    chunks = [data[i : i + cut] for i in range(0, len(data), cut)]
    target = CommittedStore(tmp_path / "target.db", STORES)
    import_snapshot(target, lambda: iter(chunks), source.height, source.app_hash)
    assert (target.height, target.app_hash, target.store_roots) == (source.height, source.app_hash, source.store_roots)
    assert _rows(target) == _rows(source)
    assert target.meta("time_ns") == source.meta("time_ns") and target.oldest_height() == source.height
    reopened = CommittedStore(tmp_path / "target.db", STORES)
    assert (reopened.height, reopened.app_hash) == (source.height, source.app_hash)
    writes = {("alpha", b"a3"): b"again", ("gamma", b"g"): b"first"}
    assert target.stage(writes).app_hash == source.stage(writes).app_hash


def _first(data: bytes, marker: bytes) -> int:
    at = data.find(marker)
    assert at > 0
    return at


BREAKS: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "magic": (lambda d: b"x" + d[1:], "magic"),
    "truncated": (lambda d: d[:-1], "ends in the middle"),
    "no end record": (lambda d: d[: d.rindex(b"E")], "ends in the middle"),
    "trailing bytes": (lambda d: d + b"\x00", "follow the end"),
    "end count": (lambda d: d[: d.rindex(b"E")] + b"E" + uvarint(999), "row count"),
    "unknown store": (lambda d: d.replace(b"\x05gamma", b"\x05delta"), "unknown here or out of order"),
    "stores out of order": (lambda d: d.replace(b"\x05alpha", b"\x05zeta_"), "out of order"),
    "meta after a store": (lambda d: d[: d.rindex(b"E")] + b"M" + _field(b"zz") + _field(b"1") + d[d.rindex(b"E"):],
                           "unexpected record"),
    "position gap": (lambda d: d.replace(b"S\x04beta", b"S\x04beta" + _row(0, b"zz", None)), "position"),
    # beta holds b, c and three links (positions 0..4): a sixth row at the right position, with a key used already
    "key twice": (lambda d: d.replace(b"S\x05gamma", _row(5, b"b", None) + b"S\x05gamma"), "row count"),
    "presence flag": (lambda d: d.replace(b"\x01b\x00", b"\x01b\x02", 1) if b"\x01b\x00" in d else
                      d.replace(b"\x01c\x01", b"\x01c\x07", 1), "presence flag"),
    "huge field": (lambda d: d.replace(b"S\x05gamma", b"R" + uvarint(0) + uvarint(1 << 40) + b"S\x05gamma"),
                   "claims"),
    "overlong number": (lambda d: d.replace(b"S\x05gamma", b"R" + b"\xff" * 11 + b"S\x05gamma"), "longer than"),
    "not utf-8 name": (lambda d: d.replace(b"\x05gamma", b"\x05\xff\xfe\xfd\xfc\xfb"), "UTF-8"),
    "changed value": (lambda d: d.replace(b"x" * 3000, b"z" * 3000), "hashes to"),
    "unknown meta": (lambda d: d.replace(b"M" + _field(b"app_hash"), b"M" + _field(b"a_new") + _field(b"1") + b"M"
                                         + _field(b"app_hash")), "unknown meta"),
    "time not a number": (lambda d: d.replace(_field(b"1003"), _field(b"10x3")), "not a nanosecond timestamp"),
    "time too long": (lambda d: d.replace(_field(b"1003"), _field(b"9" * 5000)), "not a nanosecond timestamp"),
}


@pytest.mark.parametrize("name", sorted(BREAKS))
def test_a_malformed_stream_is_refused_and_nothing_written(tmp_path: Path, name: str) -> None:
    source = _source(tmp_path)
    data = _stream(source)
    broken, message = BREAKS[name]
    bad = broken(data)
    assert bad != data
    target = CommittedStore(tmp_path / "target.db", STORES)
    with pytest.raises(SnapshotError, match=message):
        import_snapshot(target, lambda: [bad], source.height, source.app_hash)
    assert target.is_empty() and target.height == 0 and _rows(target) == []


def test_the_trusted_height_and_app_hash_must_be_the_snapshots(tmp_path: Path) -> None:
    source = _source(tmp_path)
    data = _stream(source)
    target = CommittedStore(tmp_path / "target.db", STORES)
    with pytest.raises(SnapshotError, match="offered as height 2"):
        import_snapshot(target, lambda: [data], 2, source.app_hash)
    with pytest.raises(SnapshotError, match="trusted one"):
        import_snapshot(target, lambda: [data], source.height, b"\x00" * 32)
    assert target.is_empty()


def test_only_an_empty_store_is_filled(tmp_path: Path) -> None:
    source = _source(tmp_path)
    data = _stream(source)
    with pytest.raises(SnapshotError, match="only an empty store"):
        import_snapshot(source, lambda: [data], source.height, source.app_hash)


def test_rows_changed_between_the_two_reads_are_refused(tmp_path: Path) -> None:
    source = _source(tmp_path)
    data = _stream(source)
    reads = [[data], [data.replace(b"x" * 3000, b"z" * 3000)]]
    target = CommittedStore(tmp_path / "target.db", STORES)
    with pytest.raises(SnapshotError, match="hashes to"):
        import_snapshot(target, lambda: reads.pop(0), source.height, source.app_hash)
    assert target.is_empty() and _rows(target) == []


def test_export_refuses_positions_that_are_not_dense(tmp_path: Path) -> None:
    source = _source(tmp_path)
    source.close()
    with sqlite3.connect(tmp_path / "source.db") as conn:
        conn.execute("UPDATE kv SET pos = 999 WHERE store='beta' AND key=?", (b"c",))
    with pytest.raises(SnapshotError, match="position 4 where 3 belongs"):
        _stream(CommittedStore(tmp_path / "source.db", STORES))


def test_the_stream_starts_with_the_format_magic(tmp_path: Path) -> None:
    assert _stream(_source(tmp_path)).startswith(MAGIC)


def test_unknown_meta_records_are_refused_before_the_peer_sends_more(tmp_path: Path) -> None:
    """A peer may stream millions of tiny made-up meta records: each would cost this node far more memory than
    it cost the peer to send, were they kept until the stream ends. The first one ends the read."""
    pulled = []

    def flood() -> object:
        for i in range(1000):
            pulled.append(i)
            yield (MAGIC if i == 0 else b"") + b"".join(b"M" + _field(b"k%05d" % (i * 100 + j)) + _field(b"")
                                                         for j in range(100))

    target = CommittedStore(tmp_path / "target.db", STORES)
    with pytest.raises(SnapshotError, match="unknown meta key 'k00000'"):
        import_snapshot(target, flood, 3, b"\x00" * 32)
    assert pulled == [0] and target.is_empty()
