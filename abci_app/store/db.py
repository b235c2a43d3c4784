"""The committed state: one SQLite database (WAL), written in a single transaction per Commit.

Rows are (store, key, value, pos); pos is the key's leaf position in its store's Merkle tree and
never changes, and a deleted key keeps its row with a NULL value. The Merkle node cache is
rebuilt from these rows at open, so nothing beside the database can disagree with it.

Recent heights stay readable: each Commit also records the value every rewritten key had before it
(`history`) and every tree's size (`sizes`), pruned past keep_recent heights. A view of height v
(versions.py) is the current rows with those older values put back and the trees cut to their size at v.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from abci_app.store.links import LINK_PREFIX, link_updates
from abci_app.store.merkle import (
    MerkleLog,
    StagedTree,
    committed_view,
    hash_from_leaves,
    kv_leaf,
)
from wire.tendermint.crypto import proof_pb2

CACHE_ENTRIES = 200_000
Writes = Mapping[tuple[str, bytes], bytes | None]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
  store TEXT NOT NULL, key BLOB NOT NULL, value BLOB, pos INTEGER NOT NULL,
  PRIMARY KEY (store, key)) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS kv_pos ON kv (store, pos);
CREATE INDEX IF NOT EXISTS kv_present ON kv (store, key) WHERE value IS NOT NULL;
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS history (
  store TEXT NOT NULL, key BLOB NOT NULL, height INTEGER NOT NULL, old BLOB,
  PRIMARY KEY (store, key, height)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS history_height ON history (height);
CREATE TABLE IF NOT EXISTS sizes (
  height INTEGER NOT NULL, store TEXT NOT NULL, size INTEGER NOT NULL,
  PRIMARY KEY (height, store)) WITHOUT ROWID;
"""
KEEP_RECENT = 100
"""Heights kept queryable (and provable) below the latest, as Cosmos' pruning-keep-recent."""


class RowConflict(ValueError):
    """Rows to restore that the table refuses (a key twice in one store, a position twice)."""


@dataclass
class StagedCommit:
    """Everything Commit needs, computed in FinalizeBlock without touching the database."""

    rows: list[tuple[str, bytes, bytes | None, int]]
    trees: dict[str, StagedTree]
    store_roots: dict[str, bytes]
    app_hash: bytes


def prefix_end(prefix: bytes) -> bytes | None:
    """Smallest key greater than every key with this prefix (None: no upper bound)."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return None
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


def below_links(end: bytes | None) -> bytes:
    """An iteration's upper bound, never reaching the link keys."""
    return LINK_PREFIX if end is None or end > LINK_PREFIX else end


def multistore_root(store_roots: Mapping[str, bytes]) -> bytes:
    return hash_from_leaves([kv_leaf(n.encode(), store_roots[n]) for n in sorted(store_roots)])


class CommittedStore:
    def __init__(self, path: str | Path, store_names: Iterable[str], keep_recent: int = KEEP_RECENT) -> None:
        if keep_recent < 0:
            raise ValueError(f"keep_recent must be at least 0, got {keep_recent}")
        self.keep_recent = keep_recent
        self.store_names = tuple(sorted(store_names))
        self.path = str(path)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode never corrupts; a power loss can drop the last commit, which
        # CometBFT's handshake then replays.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self.trees: dict[str, MerkleLog] = {}
        for name in self.store_names:
            leaves = [
                kv_leaf(k, v)
                for k, v in self._db.execute(
                    "SELECT key, value FROM kv WHERE store=? ORDER BY pos", (name,)
                )
            ]
            self.trees[name] = MerkleLog.from_leaves(leaves)
        self.store_roots = {n: committed_view(t).root() for n, t in self.trees.items()}
        self.app_hash = multistore_root(self.store_roots)
        self.height = int(self.meta("height") or b"0")
        # A database from before history was kept is readable from its current height on.
        self._db.executemany("INSERT OR IGNORE INTO sizes (height, store, size) VALUES (?,?,?)",
                             [(self.height, n, t.size) for n, t in self.trees.items()])
        # Committed values read recently; Commit writes through it, so it is never stale.
        self._cache: dict[tuple[str, bytes], bytes | None] = {}

    def close(self) -> None:
        self._db.close()

    def meta(self, key: str) -> bytes | None:
        row = self._db.execute("SELECT v FROM meta WHERE k=?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def get(self, store: str, key: bytes) -> bytes | None:
        k = (store, key)
        try:
            return self._cache[k]
        except KeyError:
            pass
        row = self._db.execute("SELECT value FROM kv WHERE store=? AND key=?", k).fetchone()
        value = None if row is None or row[0] is None else bytes(row[0])
        if len(self._cache) >= CACHE_ENTRIES:
            self._cache.clear()
        self._cache[k] = value
        return value

    def iterate(self, store: str, start: bytes, end: bytes | None, limit: int | None = None,
                reverse: bool = False) -> list[tuple[bytes, bytes]]:
        """Present keys in [start, end) (end None: no bound), in key order (descending with reverse), at
        most limit of them. The primary-key index seeks to the range, so rows outside it (deleted keys
        included) cost nothing."""
        sql = "SELECT key, value FROM kv INDEXED BY kv_present WHERE store=? AND key>=? AND value IS NOT NULL AND key<?"
        args: tuple[object, ...] = (store, start, below_links(end))
        sql += " ORDER BY key DESC" if reverse else " ORDER BY key"
        if limit is not None:
            sql += " LIMIT ?"
            args += (limit,)
        return [(bytes(k), bytes(v)) for k, v in self._db.execute(sql, args)]

    def next_present(self, store: str, after: bytes) -> bytes | None:
        """The smallest committed present key above `after` (links excluded)."""
        row = self._db.execute("SELECT key FROM kv INDEXED BY kv_present WHERE store=? AND key>? AND key<? "
                               "AND value IS NOT NULL ORDER BY key LIMIT 1", (store, after, LINK_PREFIX)).fetchone()
        return None if row is None else bytes(row[0])

    def prev_present(self, store: str, before: bytes) -> bytes | None:
        row = self._db.execute("SELECT key FROM kv INDEXED BY kv_present WHERE store=? AND key<? AND key<? "
                               "AND value IS NOT NULL ORDER BY key DESC LIMIT 1", (store, before, LINK_PREFIX)
                               ).fetchone()
        return None if row is None else bytes(row[0])

    def _with_links(self, store: str, writes: list[tuple[bytes, bytes | None]]) -> list[tuple[bytes, bytes | None]]:
        """The block's writes to one store plus the link writes they imply (links.py)."""
        flips: dict[bytes, bool] = {}
        for key, value in writes:
            if key >= LINK_PREFIX:  # links and anything sorting above them would escape the key list
                raise KeyError(f"module write to the reserved link key space in store {store!r}: {key!r}")
            if (self.get(store, key) is not None) != (value is not None):
                flips[key] = value is not None
        return writes + list(link_updates(self, store, flips).items()) if flips else writes

    def position(self, store: str, key: bytes) -> int | None:
        row = self._db.execute("SELECT pos FROM kv WHERE store=? AND key=?", (store, key)).fetchone()
        return None if row is None else int(row[0])

    def stage(self, writes: Writes) -> StagedCommit:
        """New tree and app hash for these writes; reads the database, writes nothing."""
        by_store: dict[str, list[tuple[bytes, bytes | None]]] = {}
        for (store, key), value in writes.items():
            if store not in self.trees:
                raise KeyError(f"write to unknown store {store!r}")
            by_store.setdefault(store, []).append((key, value))
        rows: list[tuple[str, bytes, bytes | None, int]] = []
        trees: dict[str, StagedTree] = {}
        roots = dict(self.store_roots)
        for store in sorted(by_store):
            tree = self.trees[store]
            size = tree.size
            leaves: dict[int, bytes] = {}
            for key, value in sorted(self._with_links(store, by_store[store])):
                pos = self.position(store, key)
                if pos is None:
                    if value is None:
                        continue  # created and deleted before ever being committed
                    pos, size = size, size + 1
                leaves[pos] = kv_leaf(key, value)
                rows.append((store, key, value, pos))
            staged = tree.stage(leaves, size)
            trees[store] = staged
            roots[store] = staged.root()
        return StagedCommit(rows, trees, roots, multistore_root(roots))

    def commit(self, staged: StagedCommit, height: int, meta: Mapping[str, bytes] | None = None) -> None:
        """Persist one block atomically, then adopt its trees."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            self._record_history(staged, height)
            db.executemany(
                "INSERT INTO kv (store, key, value, pos) VALUES (?,?,?,?) "
                "ON CONFLICT (store, key) DO UPDATE SET value=excluded.value",
                staged.rows,
            )
            db.executemany(
                "INSERT OR REPLACE INTO meta (k, v) VALUES (?,?)",
                [("height", str(height).encode()), ("app_hash", staged.app_hash), *(meta or {}).items()],
            )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # SQLite undoes a transaction itself on some errors ("disk is full")
                db.execute("ROLLBACK")
            raise
        for store, key, value, _ in staged.rows:
            if (store, key) in self._cache:
                self._cache[(store, key)] = value
        for store, tree in staged.trees.items():
            self.trees[store].apply(tree)
        self.store_roots = dict(staged.store_roots)
        self.app_hash = staged.app_hash
        self.height = height

    def _record_history(self, staged: StagedCommit, height: int) -> None:
        """Inside Commit's transaction: the values this block overwrites and the new tree sizes; history
        past keep_recent goes. A key first written here needs no row: at older heights it lies beyond
        its tree's size."""
        old = [(store, key, height, self.get(store, key)) for store, key, _, pos in staged.rows
               if pos < self.trees[store].size] if self.keep_recent else []
        self._db.executemany("INSERT OR REPLACE INTO history (store, key, height, old) VALUES (?,?,?,?)", old)
        sizes = {n: (staged.trees[n].size if n in staged.trees else t.size) for n, t in self.trees.items()}
        self._db.executemany("INSERT OR REPLACE INTO sizes (height, store, size) VALUES (?,?,?)",
                             [(height, n, s) for n, s in sizes.items()])
        horizon = height - self.keep_recent
        self._db.execute("DELETE FROM history WHERE height <= ?", (horizon,))
        self._db.execute("DELETE FROM sizes WHERE height < ?", (horizon,))

    def oldest_height(self) -> int:
        """The oldest height still readable."""
        row = self._db.execute("SELECT MIN(height) FROM sizes").fetchone()
        return self.height if row is None or row[0] is None else max(int(row[0]), self.height - self.keep_recent)

    def read_transaction(self) -> ReadTransaction:
        """The committed state as it is now, readable from another thread while later blocks commit."""
        return ReadTransaction(self.path, self.store_names)

    def is_empty(self) -> bool:
        return self.height == 0 and self._db.execute("SELECT 1 FROM kv LIMIT 1").fetchone() is None

    def restore(self, rows: Iterable[tuple[str, bytes, bytes | None, int]], meta: Mapping[str, bytes],
                trees: Mapping[str, MerkleLog], height: int) -> None:
        """Fill an empty store in one transaction, then adopt the given trees (snapshot.py proved rows, meta
        and trees against the trusted app hash; it may fill `trees` as the last row is taken). If iterating rows
        raises, nothing is written. The restored
        height is the oldest one kept: there is no history below it."""
        if not self.is_empty():
            raise ValueError(f"only an empty store can be restored; this one is at height {self.height}")
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            for clear in ("DELETE FROM meta", "DELETE FROM history", "DELETE FROM sizes"):
                db.execute(clear)  # the rows opening an empty store leaves: height 0 was never a block
            db.executemany("INSERT INTO kv (store, key, value, pos) VALUES (?,?,?,?)", rows)
            if set(trees) != set(self.store_names):  # (filled while the rows were taken)
                raise ValueError(f"trees for stores {sorted(trees)}, expected {list(self.store_names)}")
            db.executemany("INSERT INTO meta (k, v) VALUES (?,?)", sorted(meta.items()))
            db.executemany("INSERT INTO sizes (height, store, size) VALUES (?,?,?)",
                           [(height, n, trees[n].size) for n in self.store_names])
            db.execute("COMMIT")
        except sqlite3.IntegrityError as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise RowConflict(str(exc)) from None
        except BaseException:
            if db.in_transaction:  # SQLite undoes a transaction itself on some errors ("disk is full")
                db.execute("ROLLBACK")
            raise
        self.trees = dict(trees)
        self.store_roots = {n: committed_view(t).root() for n, t in self.trees.items()}
        self.app_hash = multistore_root(self.store_roots)
        self.height = height
        self._cache.clear()

    def rows_at(self, sql: str, args: tuple[object, ...]) -> list[tuple[Any, ...]]:
        """Read-only SQL for version views (versions.py)."""
        return list(self.cursor_at(sql, args))

    def cursor_at(self, sql: str, args: tuple[object, ...]) -> Iterator[tuple[Any, ...]]:
        """Read-only SQL whose rows are read as they are consumed (a scan may stop early)."""
        return iter(self._db.execute(sql, args))

    def prove(self, store: str, key: bytes) -> list[proof_pb2.ProofOp]:
        """simple:v ProofOps for a present key: key -> store root -> app hash."""
        pos = self.position(store, key)
        if pos is None or self.get(store, key) is None:
            raise KeyError(key)
        return proof_ops(store, key, pos, committed_view(self.trees[store]), self.store_roots)


class ReadTransaction:
    """A second connection holding one read transaction open: the committed state exactly as it was when this
    opened, however many blocks commit meanwhile (a WAL reader keeps its snapshot), so it can be exported on
    another thread without holding consensus up. close() ends the transaction."""

    def __init__(self, path: str, store_names: tuple[str, ...]) -> None:
        self.store_names = store_names
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA query_only=ON")
        self._db.execute("BEGIN")
        row = self._db.execute("SELECT v FROM meta WHERE k='height'").fetchone()  # the first read pins the state
        self.height = 0 if row is None else int(bytes(row[0]))

    def meta(self) -> list[tuple[str, bytes]]:
        return [(str(k), bytes(v)) for k, v in self._db.execute("SELECT k, v FROM meta ORDER BY k")]

    def rows(self, store: str) -> Iterator[tuple[bytes, bytes | None, int]]:
        """(key, value or None, pos) in position order."""
        for key, value, pos in self._db.execute("SELECT key, value, pos FROM kv WHERE store=? ORDER BY pos",
                                                (store,)):
            yield bytes(key), None if value is None else bytes(value), int(pos)

    def close(self) -> None:
        self._db.close()


def proof_ops(store: str, key: bytes, pos: int, tree: StagedTree,
              store_roots: Mapping[str, bytes]) -> list[proof_pb2.ProofOp]:
    """Two simple:v ProofOps, as CometBFT's proof runtime checks them: the key's leaf up to its store's
    root, then the store's leaf up to the app hash."""
    inner = proof_pb2.ValueOp(
        key=key,
        proof=proof_pb2.Proof(total=tree.size, index=pos, leaf_hash=tree.node(0, pos), aunts=tree.aunts(pos)),
    )
    names = sorted(store_roots)
    leaves = [kv_leaf(n.encode(), store_roots[n]) for n in names]
    outer_tree = committed_view(MerkleLog.from_leaves(leaves))
    index = names.index(store)
    outer = proof_pb2.ValueOp(
        key=store.encode(),
        proof=proof_pb2.Proof(total=len(names), index=index, leaf_hash=leaves[index], aunts=outer_tree.aunts(index)),
    )
    return [
        proof_pb2.ProofOp(type="simple:v", key=key, data=inner.SerializeToString()),
        proof_pb2.ProofOp(type="simple:v", key=store.encode(), data=outer.SerializeToString()),
    ]
