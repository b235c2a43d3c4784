"""The serving side: snapshots taken on the node's own disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmnet.node import snapshots as snapshots_mod
from tests.test_statesync import _chain


def test_a_failed_export_does_not_leave_its_chunks_on_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SnapshotDir.write has no cleanup on failure: the .partial-<height> directory with every chunk written so far
    stays until the next restart. When the state outgrows MAX_CHUNKS * snapshot_chunk_bytes (100,000 x 1 MiB by
    default) every interval writes ~100 GB more that is never removed, until the disk fills and Commit fails."""
    h = _chain(tmp_path, blocks=2)
    monkeypatch.setattr(snapshots_mod, "MAX_CHUNKS", 3)
    manager = snapshots_mod.SnapshotManager(h.app, tmp_path / "snapshots", interval=1, chunk_bytes=256)
    manager.after_commit()
    manager.wait()
    assert manager.list_snapshots(snapshots_mod.abci.RequestListSnapshots()).snapshots == []
    leftovers = sorted(p.name for p in (tmp_path / "snapshots").iterdir())
    assert leftovers == [], f"a failed export left {leftovers}"
