"""State sync without a network: snapshots taken from a real chain's app, restored into a fresh app through the
four ABCI snapshot calls, and every way an offer or a chunk can be wrong."""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from abci_app.app import Application
from abci_app.crypto import parse_address
from abci_app.errors import ErrHeightUnavailable
from abci_app.queries import QUERY_SERVICE
from abci_app.store.versions import HeightNotKept, VersionView
from abci_app.x.bank.types import balance_key
from llmnet.client.proof import verify_absence, verify_store_proof
from llmnet.node.abci.server import ABCIServer
from llmnet.node.config import ConfigError, NodeConfig
from llmnet.node.snapshots import MANIFEST, SnapshotDir, SnapshotManager
from tests.helpers import FUNDS, Harness
from wire.llmnet.query.v1 import query_pb2 as q
from wire.tendermint.abci import types_pb2 as abci

CHUNK = 512
Apply = abci.ResponseApplySnapshotChunk
Offer = abci.ResponseOfferSnapshot


def _chain(tmp_path: Path, blocks: int = 6) -> Harness:
    """Blocks of transfers; key 3 emptied early and funded again (its balance row deleted, then back at the same
    leaf), key 4 emptied half way and left so (its row and link deleted)."""
    h = Harness.create(tmp_path / "source.db", n_keys=5)
    for n in range(blocks):
        txs = [h.send_tx(0, 1, 100 + n), h.send_tx(2, 3, 7)]
        h.ok(*txs, *([h.send_tx(1, 4, 1)] if n < blocks // 2 else []))
        for emptied, when in ((3, 0), (4, blocks // 2)):
            if n == when:
                h.ok(h.send_tx(emptied, 0, h.balance(emptied) - 2_000))
    assert h.balance(4) == 0 and h.balance(3) > 0
    return h


def _taken(h: Harness, root: Path, chunk_bytes: int = CHUNK) -> tuple[SnapshotManager, abci.Snapshot]:
    source = SnapshotManager(h.app, root, interval=1, chunk_bytes=chunk_bytes)
    source.after_commit()
    source.wait()
    snapshot = source.list_snapshots(abci.RequestListSnapshots()).snapshots[0]
    assert snapshot.height == h.height and snapshot.chunks > 2
    return source, snapshot


def _chunk(source: SnapshotManager, snapshot: abci.Snapshot, index: int) -> bytes:
    return bytes(source.load_snapshot_chunk(abci.RequestLoadSnapshotChunk(
        height=snapshot.height, format=snapshot.format, chunk=index)).chunk)


def _fresh(tmp_path: Path) -> tuple[Application, ABCIServer]:
    app = Application(tmp_path / "target.db")
    return app, ABCIServer(app, "tcp://127.0.0.1:0", snapshots=SnapshotManager(app, tmp_path / "target-snapshots"))


def _call(server: ABCIServer, **kind: Any) -> Any:
    """One request through the server's routing; the response of its kind."""
    (name, value), = kind.items()
    return getattr(server.handle(abci.Request(**{name: value})), name)


def _kv_rows(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM kv").fetchone()[0])


def _restore(server: ABCIServer, source: SnapshotManager, snapshot: abci.Snapshot, app_hash: bytes) -> list[int]:
    offer = _call(server, offer_snapshot=abci.RequestOfferSnapshot(snapshot=snapshot, app_hash=app_hash))
    assert offer.result == Offer.ACCEPT
    return [_call(server, apply_snapshot_chunk=abci.RequestApplySnapshotChunk(
        index=i, chunk=_chunk(source, snapshot, i), sender="peer0")).result for i in range(snapshot.chunks)]


def _answers(app: Application, h: Harness) -> list[bytes]:
    """Typed and raw queries, proofs included, about every key's balance and account and a missing key."""
    out = []
    for key in h.keys:
        for method, req in (("Balance", q.BalanceRequest(address=key.address)),
                            ("Account", q.AccountRequest(address=key.address))):
            resp = app.query(abci.RequestQuery(path=f"/{QUERY_SERVICE}/{method}", data=req.SerializeToString()))
            out.append(resp.SerializeToString())
        # at the latest height: without one a proof is answered a height lower, which a restored app has not got
        raw = app.query(abci.RequestQuery(path="/store/bank/key", data=balance_key(parse_address(key.address)),
                                          prove=True, height=app.committed.height))
        out.append(raw.SerializeToString())
    return out


def _next_block(h: Harness, apps: list[Application]) -> set[bytes]:
    """The same next block (a beacon and a transfer) on each app; the app hashes they commit."""
    height = h.height + 1
    req = abci.RequestFinalizeBlock(
        txs=[h.beacon(height), h.send_tx(0, 4, 12_345)], height=height, hash=hashlib.sha256(b"next").digest(),
        time=Timestamp(seconds=1_800_000_000), decided_last_commit=h.last_commit())
    hashes = set()
    for app in apps:
        resp = app.finalize_block(req)
        assert all(r.code == 0 for r in resp.tx_results), [r.log for r in resp.tx_results]
        app.commit(abci.RequestCommit())
        hashes.add(app.committed.app_hash)
    return hashes


def test_a_fresh_app_restored_through_the_abci_calls_answers_and_continues_as_the_source(tmp_path: Path) -> None:
    h = _chain(tmp_path)
    source, snapshot = _taken(h, tmp_path / "snapshots")
    app, server = _fresh(tmp_path)
    listed = _call(server, list_snapshots=abci.RequestListSnapshots())
    assert list(listed.snapshots) == []
    results = _restore(server, source, snapshot, h.app.committed.app_hash)
    assert results == [Apply.ACCEPT] * snapshot.chunks
    assert app.info(abci.RequestInfo()) == h.app.info(abci.RequestInfo())
    assert app.chain_id == h.app.chain_id and app.last_time_ns == h.app.last_time_ns
    assert _answers(app, h) == _answers(h.app, h)
    assert len(_next_block(h, [h.app, app])) == 1
    assert app.committed.height == h.height + 1


def test_a_restored_app_keeps_no_history_below_the_snapshot(tmp_path: Path) -> None:
    h = _chain(tmp_path)
    source, snapshot = _taken(h, tmp_path / "snapshots")
    app, server = _fresh(tmp_path)
    _restore(server, source, snapshot, h.app.committed.app_hash)
    height = snapshot.height
    assert app.committed.oldest_height() == height
    with pytest.raises(HeightNotKept):
        VersionView(app.committed, height - 1)
    key = balance_key(parse_address(h.keys[0].address))
    old = app.query(abci.RequestQuery(path="/store/bank/key", data=key, height=height - 1))
    assert (old.code, old.codespace) == (ErrHeightUnavailable.code, ErrHeightUnavailable.codespace), old
    proven = app.query(abci.RequestQuery(path="/store/bank/key", data=key, prove=True))
    assert proven.code == 0 and proven.height == height
    verify_store_proof(list(proven.proof_ops.ops), "bank", key, proven.value, app.committed.app_hash)
    gone = balance_key(parse_address(h.keys[4].address))
    absent = app.query(abci.RequestQuery(path="/store/bank/key", data=gone, prove=True))
    verify_absence(list(absent.proof_ops.ops), "bank", gone, absent.key, absent.value, app.committed.app_hash)
    restored = app.committed.app_hash
    _next_block(h, [h.app, app])
    view = VersionView(app.committed, height)  # once a block commits on top, the restored height is history
    assert view.app_hash() == restored and view.get("bank", key) == proven.value


def test_a_corrupted_chunk_is_refetched_and_its_sender_rejected(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    h = _chain(tmp_path)
    source, snapshot = _taken(h, tmp_path / "snapshots")
    app, server = _fresh(tmp_path)
    _call(server, offer_snapshot=abci.RequestOfferSnapshot(snapshot=snapshot, app_hash=h.app.committed.app_hash))
    good = [_chunk(source, snapshot, i) for i in range(snapshot.chunks)]
    bad = bytearray(good[1])
    bad[len(bad) // 2] ^= 0xFF

    def apply(i: int, chunk: bytes, sender: str) -> Any:
        return _call(server, apply_snapshot_chunk=abci.RequestApplySnapshotChunk(index=i, chunk=chunk, sender=sender))

    assert apply(0, good[0], "honest").result == Apply.ACCEPT
    with caplog.at_level(logging.WARNING, logger="llmnet.snapshots"):
        retry = apply(1, bytes(bad), "liar")
    assert retry.result == Apply.RETRY
    assert list(retry.refetch_chunks) == [1] and list(retry.reject_senders) == ["liar"]
    assert "chunk 1 from peer liar" in caplog.text
    assert apply(1, b"", "").result == Apply.RETRY  # an empty chunk is just as wrong; no sender, none rejected
    results = [apply(i, good[i], "honest").result for i in range(1, snapshot.chunks)]
    assert results == [Apply.ACCEPT] * (snapshot.chunks - 1)
    assert app.info(abci.RequestInfo()) == h.app.info(abci.RequestInfo())


def test_a_wrong_trusted_app_hash_rejects_the_snapshot_and_writes_nothing(tmp_path: Path) -> None:
    h = _chain(tmp_path)
    source, snapshot = _taken(h, tmp_path / "snapshots")
    app, server = _fresh(tmp_path)
    results = _restore(server, source, snapshot, hashlib.sha256(b"another chain").digest())
    assert results == [Apply.ACCEPT] * (snapshot.chunks - 1) + [Apply.REJECT_SNAPSHOT]
    assert app.committed.height == 0 and app.committed.is_empty() and _kv_rows(tmp_path / "target.db") == 0
    assert app.info(abci.RequestInfo()).last_block_height == 0
    # CometBFT then offers another snapshot, or this one again with the right hash: it still works
    assert _restore(server, source, snapshot, h.app.committed.app_hash)[-1] == Apply.ACCEPT
    assert app.info(abci.RequestInfo()) == h.app.info(abci.RequestInfo())


def _offered(snapshot: abci.Snapshot, **changes: object) -> abci.Snapshot:
    out = abci.Snapshot()
    out.CopyFrom(snapshot)
    for name, value in changes.items():
        setattr(out, name, value)
    return out


def test_malformed_offers_get_the_right_answer_and_nothing_raises(tmp_path: Path) -> None:
    h = _chain(tmp_path, blocks=2)
    _, snapshot = _taken(h, tmp_path / "snapshots", chunk_bytes=256)
    app_hash = h.app.committed.app_hash
    _, server = _fresh(tmp_path)
    cases = [
        (_offered(snapshot, format=2), app_hash, Offer.REJECT_FORMAT),
        (_offered(snapshot, chunks=0, metadata=b""), app_hash, Offer.REJECT),
        (_offered(snapshot, chunks=10**6), app_hash, Offer.REJECT),
        (_offered(snapshot, metadata=snapshot.metadata[:-1]), app_hash, Offer.REJECT),
        (_offered(snapshot, hash=b"\x00" * 32), app_hash, Offer.REJECT),
        (_offered(snapshot, height=0), app_hash, Offer.REJECT),
        (snapshot, b"short", Offer.REJECT),
        (snapshot, app_hash, Offer.ACCEPT),
    ]
    for offered, trusted, expected in cases:
        got = _call(server, offer_snapshot=abci.RequestOfferSnapshot(snapshot=offered, app_hash=trusted)).result
        assert got == expected, (offered, expected)
    # the source node itself has state: it cannot be filled, and no other snapshot would fit either
    busy = ABCIServer(h.app, "tcp://127.0.0.1:0", snapshots=SnapshotManager(h.app, tmp_path / "busy"))
    assert _call(busy, offer_snapshot=abci.RequestOfferSnapshot(snapshot=snapshot, app_hash=app_hash)).result \
        == Offer.ABORT
    stray = abci.RequestApplySnapshotChunk(index=0, chunk=b"x", sender="p")
    assert _call(busy, apply_snapshot_chunk=stray).result == Apply.ABORT
    unknown = abci.RequestLoadSnapshotChunk(height=snapshot.height + 1, format=1, chunk=0)
    assert _call(busy, load_snapshot_chunk=unknown).chunk == b""


@pytest.mark.parametrize("garbage", [b"", b"\x00", b"not a snapshot at all" * 20, bytes(range(256)) * 4])
def test_garbage_whose_hashes_the_offer_lists_is_rejected_whole(tmp_path: Path, garbage: bytes) -> None:
    """A peer may make up metadata for chunks of its own: they pass the hash check, and then must not decode."""
    pieces = [garbage[:100], garbage[100:]] if len(garbage) > 100 else [garbage]
    metadata = b"".join(hashlib.sha256(p).digest() for p in pieces)
    snapshot = abci.Snapshot(height=5, format=1, chunks=len(pieces), metadata=metadata,
                             hash=hashlib.sha256(metadata).digest())
    app, server = _fresh(tmp_path)
    offer = _call(server, offer_snapshot=abci.RequestOfferSnapshot(snapshot=snapshot, app_hash=b"\x01" * 32))
    assert offer.result == Offer.ACCEPT
    results = []
    for i, p in enumerate(pieces):  # as CometBFT does, no more chunks once the snapshot is rejected
        results.append(_call(server, apply_snapshot_chunk=abci.RequestApplySnapshotChunk(index=i, chunk=p,
                                                                                         sender="s")).result)
        if results[-1] != Apply.ACCEPT:
            break
    assert results[-1] == Apply.REJECT_SNAPSHOT
    assert len(results) == 1 or garbage.startswith(b"llmnet")  # refused at its first chunk, not after all
    assert app.committed.is_empty() and _kv_rows(tmp_path / "target.db") == 0


def test_only_the_newest_snapshots_are_kept(tmp_path: Path) -> None:
    h = Harness.create(tmp_path / "source.db", n_keys=2)
    manager = SnapshotManager(h.app, tmp_path / "snapshots", interval=2, keep_recent=2, chunk_bytes=CHUNK)
    for _ in range(9):
        h.ok(h.send_tx(0, 1, 5))
        manager.after_commit()
        manager.wait()
    listed = manager.list_snapshots(abci.RequestListSnapshots()).snapshots
    assert [s.height for s in listed] == [8, 6]
    assert sorted(p.name for p in (tmp_path / "snapshots").iterdir()) == ["6", "8"]


def test_a_partial_snapshot_is_never_listed_and_is_cleared_at_start(tmp_path: Path) -> None:
    h = _chain(tmp_path, blocks=2)
    root = tmp_path / "snapshots"
    source, snapshot = _taken(h, root, chunk_bytes=256)
    complete = root / str(snapshot.height)
    for leftover in (".partial-40", ".retired-2", ".restoring"):
        (root / leftover).mkdir()
        for f in complete.iterdir():
            (root / leftover / f.name).write_bytes(f.read_bytes())
    (root / "50").mkdir()  # a snapshot directory whose manifest was never written
    (root / "50" / "0").write_bytes(b"chunk")
    assert [s.height for s in source.list_snapshots(abci.RequestListSnapshots()).snapshots] == [snapshot.height]
    SnapshotDir(root)
    assert sorted(p.name for p in root.iterdir()) == sorted([str(snapshot.height), "50"])
    (complete / MANIFEST).write_text("{not json")
    assert source.list_snapshots(abci.RequestListSnapshots()).snapshots == []


def test_the_snapshot_is_of_the_height_committed_when_it_was_started(tmp_path: Path) -> None:
    """The export reads a transaction opened at Commit, so blocks committing meanwhile do not leak into it."""
    h = _chain(tmp_path, blocks=3)
    at_snapshot = h.app.committed.app_hash
    reader = h.app.committed.read_transaction()
    h.ok(h.send_tx(0, 1, 999), h.send_tx(2, 1, FUNDS // 2))
    root = tmp_path / "snapshots"
    manifest = SnapshotDir(root).write(reader, CHUNK)
    reader.close()
    assert manifest.height == h.height - 1 and manifest.app_hash == at_snapshot
    source = SnapshotManager(h.app, root)
    snapshot = source.list_snapshots(abci.RequestListSnapshots()).snapshots[0]
    app, server = _fresh(tmp_path)
    assert _restore(server, source, snapshot, at_snapshot)[-1] == Apply.ACCEPT
    assert app.committed.height == h.height - 1 and app.committed.app_hash == at_snapshot


@pytest.mark.parametrize("values, error", [
    ({"snapshot_interval": -1}, "snapshot_interval"),
    ({"snapshot_keep_recent": 0}, "snapshot_keep_recent"),
    ({"snapshot_chunk_bytes": 255}, "snapshot_chunk_bytes"),
    ({"snapshot_chunk_bytes": 64 << 20}, "snapshot_chunk_bytes"),
    ({"snapshot_interval": "10"}, "snapshot_interval"),
])
def test_snapshot_settings_are_validated(tmp_path: Path, values: dict[str, object], error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        NodeConfig(home=tmp_path, **values).validate()  # type: ignore[arg-type]
    assert NodeConfig(home=tmp_path, snapshot_interval=0).validate().snapshot_interval == 0
