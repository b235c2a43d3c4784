"""State sync, the node's side: snapshots taken after Commit, kept on disk and served to joining nodes, and the
four ABCI snapshot calls (restoring one offered to this node is restore.py).

HOME/data/snapshots/<height>/ holds chunk files 0..n-1 and manifest.json. A snapshot is written under a
dot-named directory and renamed into place once complete, so ListSnapshots never sees a partial one; dot-named
leftovers of a crash are removed at start. Snapshot.metadata is the chunks' sha256 hashes, 32 bytes each, and
Snapshot.hash the sha256 of those, so a joining node checks every chunk the moment it arrives.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from abci_app.app import Application
from abci_app.store.db import ReadTransaction
from abci_app.store.snapshot import FORMAT, export
from llmnet.node.restore import MAX_CHUNKS, Restore, judge_offer
from wire.tendermint.abci import types_pb2 as abci

log = logging.getLogger("llmnet.snapshots")
MANIFEST = "manifest.json"
PARTIAL = ".partial-"
RETIRED = ".retired-"
RESTORING = ".restoring"


@dataclass(frozen=True)
class Manifest:
    height: int
    chunk_hashes: tuple[bytes, ...]
    app_hash: bytes

    @property
    def metadata(self) -> bytes:
        return b"".join(self.chunk_hashes)

    def to_abci(self) -> abci.Snapshot:
        return abci.Snapshot(height=self.height, format=FORMAT, chunks=len(self.chunk_hashes),
                             hash=hashlib.sha256(self.metadata).digest(), metadata=self.metadata)

    def to_json(self) -> str:
        return json.dumps({"height": self.height, "format": FORMAT, "app_hash": self.app_hash.hex(),
                           "chunk_hashes": [h.hex() for h in self.chunk_hashes]}, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        doc = json.loads(text)
        if doc["format"] != FORMAT:
            raise ValueError(f"format {doc['format']}")
        return cls(int(doc["height"]), tuple(bytes.fromhex(h) for h in doc["chunk_hashes"]),
                   bytes.fromhex(doc["app_hash"]))


def _write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


class SnapshotDir:
    """The complete snapshots on disk, one directory per height."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        for leftover in root.glob(".*"):
            shutil.rmtree(leftover, ignore_errors=True)

    def manifests(self) -> list[Manifest]:
        """Newest first; a directory without a readable manifest is not a snapshot."""
        found = []
        for path in self.root.iterdir():
            if not path.name.isdigit():
                continue
            try:
                found.append(Manifest.from_json((path / MANIFEST).read_text()))
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return sorted(found, key=lambda m: m.height, reverse=True)

    def chunk(self, height: int, index: int) -> bytes:
        """The chunk's bytes as stored (the joining node checks them), or b"" for one not kept."""
        try:
            return (self.root / str(height) / str(index)).read_bytes()
        except OSError:
            return b""

    def write(self, source: ReadTransaction, chunk_bytes: int) -> Manifest:
        """Export the state source holds into chunks, then move the snapshot into place in one rename."""
        partial = self.root / f"{PARTIAL}{source.height}"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        hashes: list[bytes] = []

        def cut(data: bytes) -> None:
            if len(hashes) >= MAX_CHUNKS:
                raise ValueError(f"the state needs over {MAX_CHUNKS} chunks: raise snapshot_chunk_bytes")
            _write_durably(partial / str(len(hashes)), data)
            hashes.append(hashlib.sha256(data).digest())

        try:
            pending = bytearray()
            for piece in export(source):
                pending += piece
                while len(pending) >= chunk_bytes:
                    cut(bytes(pending[:chunk_bytes]))
                    del pending[:chunk_bytes]
            if pending or not hashes:
                cut(bytes(pending))
            manifest = Manifest(source.height, tuple(hashes), dict(source.meta()).get("app_hash", b""))
            _write_durably(partial / MANIFEST, manifest.to_json().encode())
            os.replace(partial, self.root / str(source.height))
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)  # a failed export must not keep its chunks on disk
            raise
        return manifest

    def has(self, height: int) -> bool:
        return (self.root / str(height) / MANIFEST).exists()

    def prune(self, keep: int) -> list[int]:
        """Delete all but the newest `keep` snapshots; each leaves the listing in one rename."""
        gone = [m.height for m in self.manifests()[keep:]]
        for height in gone:
            retired = self.root / f"{RETIRED}{height}"
            os.replace(self.root / str(height), retired)
            shutil.rmtree(retired, ignore_errors=True)
        return gone


class SnapshotManager:
    """Takes a snapshot after every interval-th Commit, on a worker thread reading a transaction opened before
    the next block can commit, and answers the four ABCI snapshot calls."""

    def __init__(self, app: Application, root: Path, interval: int = 100, keep_recent: int = 2,
                 chunk_bytes: int = 1 << 20) -> None:
        self.app = app
        self.snapshots = SnapshotDir(root)
        self.interval, self.keep_recent, self.chunk_bytes = interval, keep_recent, chunk_bytes
        self._worker: threading.Thread | None = None
        self._restore: Restore | None = None

    def after_commit(self) -> None:
        height = self.app.committed.height
        if not self.interval or not height or height % self.interval or self.snapshots.has(height):
            return
        if self._worker is not None and self._worker.is_alive():
            log.warning("snapshot of height %d skipped: the one before is still being written", height)
            return
        try:
            source = self.app.committed.read_transaction()
        except Exception:  # as in _take: no snapshot is worth stopping consensus for
            log.exception("snapshot of height %d could not start", height)
            return
        self._worker = threading.Thread(target=self._take, args=(source,), name=f"snapshot-{height}", daemon=True)
        self._worker.start()

    def _take(self, source: ReadTransaction) -> None:
        started = time.monotonic()
        try:
            manifest = self.snapshots.write(source, self.chunk_bytes)
            pruned = self.snapshots.prune(self.keep_recent)
            log.info("snapshot of height %d taken: %d chunks in %.2fs%s", manifest.height,
                     len(manifest.chunk_hashes), time.monotonic() - started,
                     f"; removed heights {pruned}" if pruned else "")
        except Exception:  # a snapshot is a service to other nodes: failing one must not stop this node
            log.exception("snapshot of height %d failed", source.height)
        finally:
            source.close()

    def wait(self, timeout: float | None = None) -> None:
        """Until the snapshot being written, if any, is complete."""
        if self._worker is not None:
            self._worker.join(timeout)

    # -- ABCI ---------------------------------------------------------------------------

    def list_snapshots(self, req: abci.RequestListSnapshots) -> abci.ResponseListSnapshots:
        return abci.ResponseListSnapshots(snapshots=[m.to_abci() for m in self.snapshots.manifests()])

    def load_snapshot_chunk(self, req: abci.RequestLoadSnapshotChunk) -> abci.ResponseLoadSnapshotChunk:
        if req.format != FORMAT:
            return abci.ResponseLoadSnapshotChunk()
        return abci.ResponseLoadSnapshotChunk(chunk=self.snapshots.chunk(req.height, req.chunk))

    def offer_snapshot(self, req: abci.RequestOfferSnapshot) -> abci.ResponseOfferSnapshot:
        """A new offer replaces any restore under way (CometBFT offers again after a rejected snapshot)."""
        self._drop_restore()
        answer, reason = judge_offer(req.snapshot, req.app_hash, self.app.committed.height)
        if answer.result != abci.ResponseOfferSnapshot.ACCEPT:
            log.warning("snapshot of height %d (format %d) refused: %s", req.snapshot.height, req.snapshot.format,
                        reason)
            return answer
        self._restore = Restore(self.app, req.snapshot, req.app_hash, self.snapshots.root / RESTORING)
        log.info("restoring the snapshot of height %d: %d chunks, trusted app hash %s", req.snapshot.height,
                 req.snapshot.chunks, req.app_hash.hex())
        return answer

    def apply_snapshot_chunk(self, req: abci.RequestApplySnapshotChunk) -> abci.ResponseApplySnapshotChunk:
        if self._restore is None:
            log.error("snapshot chunk %d arrived while no snapshot is accepted: aborting state sync", req.index)
            return abci.ResponseApplySnapshotChunk(result=abci.ResponseApplySnapshotChunk.ABORT)
        resp = self._restore.apply(req)
        if self._restore.finished:
            self._drop_restore()
        return resp

    def _drop_restore(self) -> None:
        if self._restore is not None:
            self._restore.close()
            self._restore = None
