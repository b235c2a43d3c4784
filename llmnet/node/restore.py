"""State sync, the joining side: judging an offered snapshot, then receiving its chunks, each checked against
the hash the snapshot lists for it and kept on disk until the last one arrives, then importing them
(abci_app/store/snapshot.py) and handing the restored state to the Application.

Results, as CometBFT acts on them (statesync/syncer.go):
- OfferSnapshot: REJECT_FORMAT for a format other than 1; ABORT when this node already has state (a state sync
  only fills an empty node, so no other snapshot could do better; the operator must empty it); REJECT for a
  snapshot whose chunk count, metadata, hash or trusted app hash cannot be right, so another is tried.
- ApplySnapshotChunk: RETRY with the chunk refetched and its sender rejected when it does not hash as listed
  (never REJECT_SNAPSHOT: CometBFT takes a chunk from any peer, asked or not, and a rejected snapshot is
  blacklisted for every peer, so one liar pushing a bad chunk first could throw away each honest snapshot in
  turn; when the liar was the only peer offering the snapshot, CometBFT's own chunk timeout, two minutes,
  moves on to another);
  REJECT_SNAPSHOT when the complete snapshot does not decode or does not hash to the trusted app hash (nothing
  is written); ACCEPT otherwise, and for the last chunk once the state is restored and adopted.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

from abci_app.app import Application
from abci_app.store.snapshot import FORMAT, MAGIC, SnapshotError, import_snapshot
from llmnet.node.config import MAX_CHUNK_BYTES
from wire.tendermint.abci import types_pb2 as abci

log = logging.getLogger("llmnet.snapshots")
HASH_BYTES = 32
MAX_CHUNKS = 100_000
"""CometBFT's own default max_snapshot_chunks; their hashes then fit its 4 MB snapshot message."""
Offer = abci.ResponseOfferSnapshot
Apply = abci.ResponseApplySnapshotChunk


def judge_offer(snapshot: abci.Snapshot, app_hash: bytes, local_height: int) -> tuple[Offer, str]:
    """The OfferSnapshot answer for this snapshot, and why if it is not ACCEPT."""
    result, reason = Offer.ACCEPT, ""
    if snapshot.format != FORMAT:
        result, reason = Offer.REJECT_FORMAT, f"this node reads format {FORMAT} only"
    elif local_height:
        result, reason = Offer.ABORT, (f"this node already has state at height {local_height}; state sync only "
                                       "fills an empty node (stop it and empty its data to join by state sync)")
    elif not snapshot.height:
        result, reason = Offer.REJECT, "height 0 is before any block"
    elif not 0 < snapshot.chunks <= MAX_CHUNKS:
        result, reason = Offer.REJECT, f"{snapshot.chunks} chunks (1 to {MAX_CHUNKS} can be right)"
    elif len(snapshot.metadata) != HASH_BYTES * snapshot.chunks:
        result, reason = Offer.REJECT, f"metadata of {len(snapshot.metadata)} bytes is not one sha256 per chunk"
    elif snapshot.hash != hashlib.sha256(snapshot.metadata).digest():
        result, reason = Offer.REJECT, "its hash is not the sha256 of its chunk hashes"
    elif len(app_hash) != HASH_BYTES:
        result, reason = Offer.REJECT, f"the trusted app hash has {len(app_hash)} bytes, not {HASH_BYTES}"
    return Offer(result=result), reason


class Restore:
    """One accepted snapshot being received. `finished` once it was imported or refused as a whole."""

    def __init__(self, app: Application, snapshot: abci.Snapshot, app_hash: bytes, workdir: Path) -> None:
        self.app = app
        self.height, self.app_hash = snapshot.height, bytes(app_hash)
        self.expected = [bytes(snapshot.metadata[i * HASH_BYTES : (i + 1) * HASH_BYTES])
                         for i in range(snapshot.chunks)]
        self.workdir = workdir
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        self.received: set[int] = set()
        self.finished = False

    def apply(self, req: abci.RequestApplySnapshotChunk) -> abci.ResponseApplySnapshotChunk:
        if req.index >= len(self.expected):
            log.error("snapshot of height %d has %d chunks, yet chunk %d arrived", self.height,
                      len(self.expected), req.index)
            self.finished = True
            return Apply(result=Apply.REJECT_SNAPSHOT)
        if len(req.chunk) > MAX_CHUNK_BYTES or hashlib.sha256(req.chunk).digest() != self.expected[req.index]:
            log.warning("snapshot of height %d: chunk %d from peer %s does not match the hash the snapshot lists; "
                        "refetching it and rejecting that peer", self.height, req.index, req.sender or "(unknown)")
            return Apply(result=Apply.RETRY, refetch_chunks=[req.index],
                         reject_senders=[req.sender] if req.sender else [])
        if req.index == 0 and not req.chunk.startswith(MAGIC[:len(req.chunk)]):
            log.error("snapshot of height %d is not format %d (its first chunk says so); refused", self.height, FORMAT)
            self.finished = True
            return Apply(result=Apply.REJECT_SNAPSHOT)
        try:
            (self.workdir / str(req.index)).write_bytes(req.chunk)
        except OSError as exc:  # a full disk: no other snapshot would fit better
            log.error("cannot keep chunk %d of the snapshot of height %d: %s; state sync aborted", req.index,
                      self.height, exc)
            self.finished = True
            return Apply(result=Apply.ABORT)
        self.received.add(req.index)
        if len(self.received) < len(self.expected):
            return Apply(result=Apply.ACCEPT)
        self.finished = True
        return self._import()

    def _chunks(self) -> Iterator[bytes]:
        for index in range(len(self.expected)):
            yield (self.workdir / str(index)).read_bytes()

    def _import(self) -> abci.ResponseApplySnapshotChunk:
        try:
            import_snapshot(self.app.committed, self._chunks, self.height, self.app_hash)
        except SnapshotError as err:
            log.error("snapshot of height %d refused, nothing applied: %s", self.height, err)
            return Apply(result=Apply.REJECT_SNAPSHOT)
        self.app.adopt_restored_state()
        log.info("state restored from the snapshot of height %d: app hash %s", self.height,
                 self.app.committed.app_hash.hex())
        return Apply(result=Apply.ACCEPT)

    def close(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)
