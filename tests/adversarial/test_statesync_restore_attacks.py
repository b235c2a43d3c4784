"""Attacks on the joining side of state sync: a malicious peer serves the snapshot (metadata and chunks are its
own; only the app hash in OfferSnapshot is trusted)."""

from __future__ import annotations

import hashlib
import tracemalloc
from pathlib import Path

from abci_app.app import Application
from abci_app.encoding import uvarint
from abci_app.store.db import CommittedStore
from abci_app.store.snapshot import MAGIC, SnapshotError, import_snapshot
from tests.test_statesync import _call, _chain, _chunk, _fresh, _taken
from wire.tendermint.abci import types_pb2 as abci

Apply = abci.ResponseApplySnapshotChunk
Offer = abci.ResponseOfferSnapshot


def _field(data: bytes) -> bytes:
    return uvarint(len(data)) + data


def _as_snapshot(stream: bytes, height: int, cut: int = 512) -> tuple[abci.Snapshot, list[bytes]]:
    chunks = [stream[i : i + cut] for i in range(0, len(stream), cut)]
    metadata = b"".join(hashlib.sha256(c).digest() for c in chunks)
    return abci.Snapshot(height=height, format=1, chunks=len(chunks), metadata=metadata,
                         hash=hashlib.sha256(metadata).digest()), chunks


def test_an_unproven_giant_block_time_neither_crashes_the_handler_nor_bricks_the_database(tmp_path: Path) -> None:
    """time_ns is not under the app hash. A peer serving the honest rows with time_ns of 5,000 digits passes
    verification; adopt_restored_state's int() then raises ValueError (Python's 4,300-digit limit) out of
    ApplySnapshotChunk, which stops the node, AFTER the restore was committed: at restart Application() raises the
    same ValueError, so the node can never start again until its data is wiped."""
    h = _chain(tmp_path, blocks=2)
    source, snapshot = _taken(h, tmp_path / "snapshots")
    honest = b"".join(_chunk(source, snapshot, i) for i in range(snapshot.chunks))
    old = b"M" + _field(b"time_ns") + _field(h.app.committed.meta("time_ns") or b"")
    assert honest.count(old) == 1
    forged_stream = honest.replace(old, b"M" + _field(b"time_ns") + _field(b"9" * 5000))
    forged, chunks = _as_snapshot(forged_stream, snapshot.height)
    app, server = _fresh(tmp_path)
    offer = _call(server, offer_snapshot=abci.RequestOfferSnapshot(snapshot=forged, app_hash=h.app.committed.app_hash))
    assert offer.result == Offer.ACCEPT
    results = []
    try:
        for i, chunk in enumerate(chunks):
            results.append(_call(server, apply_snapshot_chunk=abci.RequestApplySnapshotChunk(
                index=i, chunk=chunk, sender="liar")).result)
        crashed = None
    except Exception as exc:  # an exception out of a handler is fatal in ABCIServer._connection
        crashed = exc
    reopened_error = None
    try:
        Application(tmp_path / "target.db").close()
    except Exception as exc:
        reopened_error = exc
    assert crashed is None and reopened_error is None, (f"ApplySnapshotChunk raised {crashed!r} (the node stops); "
                                                        f"reopening the database raised {reopened_error!r}")
    assert reopened_error is None, f"the restored database cannot be opened any more: {reopened_error!r}"
    assert results[-1] == Apply.REJECT_SNAPSHOT


def test_verification_memory_is_not_many_times_the_bytes_a_peer_sends(tmp_path: Path) -> None:
    """Every row costs a 32-byte leaf (a 65-byte bytes object plus a list slot) and its key in the `seen` set
    (a bytes object plus a set slot) until the whole stream is read; a row can be 7 bytes on the wire. A peer
    can therefore make the joining node hold ~20-30x what it sends before the root comparison refuses it: a few
    hundred MB of 16 MB chunks OOM-kill any joiner, every time it retries."""
    stores = ("alpha", "beta")
    n = 80_000
    rows = b"".join(b"R" + uvarint(i) + _field(i.to_bytes(3, "big")) + b"\x00" for i in range(n))
    app_hash = b"\x07" * 32
    stream = (MAGIC + b"M" + _field(b"app_hash") + _field(app_hash) + b"M" + _field(b"height") + _field(b"5")
              + b"M" + _field(b"time_ns") + _field(b"1") + b"S" + _field(b"alpha") + rows + b"E" + uvarint(n))
    chunks = [stream[i : i + (1 << 20)] for i in range(0, len(stream), 1 << 20)]
    target = CommittedStore(tmp_path / "t.db", stores)
    tracemalloc.start()
    try:
        try:
            import_snapshot(target, lambda: iter(chunks), 5, app_hash)
        except SnapshotError:
            pass
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    ratio = peak / len(stream)
    assert ratio < 4, f"{len(stream)} bytes of stream held {peak} bytes at peak ({ratio:.1f}x)"


def test_garbage_is_refused_at_the_first_chunk_not_after_the_whole_download(tmp_path: Path) -> None:
    """CometBFT applies chunks strictly in order, yet nothing is parsed until the last one: a peer listing 100,000
    chunks (up to 16 MB each, CometBFT's chunk message limit; the app never checks a chunk against its own 8 MB
    maximum) makes the joiner download and store up to 1.6 TB in HOME/data/snapshots/.restoring (on top of
    CometBFT's own temp copy) before the wrong magic in chunk 0 is noticed."""
    chunks = [b"not a snapshot".ljust(4096, b"\x00"), b"\x00" * 4096, b"\x00" * 4096]
    metadata = b"".join(hashlib.sha256(c).digest() for c in chunks)
    offered = abci.Snapshot(height=5, format=1, chunks=len(chunks), metadata=metadata,
                            hash=hashlib.sha256(metadata).digest())
    _, server = _fresh(tmp_path)
    assert _call(server, offer_snapshot=abci.RequestOfferSnapshot(snapshot=offered, app_hash=b"\x01" * 32)).result \
        == Offer.ACCEPT
    first = _call(server, apply_snapshot_chunk=abci.RequestApplySnapshotChunk(index=0, chunk=chunks[0], sender="p"))
    assert first.result == Apply.REJECT_SNAPSHOT
