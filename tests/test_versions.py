"""Recent heights stay readable and provable: every kept height's view has that height's app hash,
values and proofs, through the ABCI query a light client uses; heights past keep_recent are refused."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from abci_app.app import Application
from abci_app.context import BlockEnv, Ctx
from abci_app.crypto import parse_address
from abci_app.errors import ErrHeightUnavailable, ErrNotFound
from abci_app.store.state import State
from abci_app.store.versions import VersionView
from abci_app.x.bank.types import balance_key
from llmnet.client.proof import ProofError, verify_store_proof
from llmnet.client.txbuilder import build_tx, send_msg
from llmnet.devchain import seeded_key
from tests.helpers import CHAIN_ID, Harness
from wire.llmnet.bank.v1 import bank_pb2
from wire.llmnet.query.v1 import query_pb2 as q
from wire.tendermint.abci import types_pb2 as abci

KEEP = 6


NEWCOMER = seeded_key("newcomer")


def _history(tmp_path: Path, blocks: int = 12, seed: int = 3) -> tuple[Harness, dict[int, tuple[bytes, list[int]]]]:
    """A chain whose blocks move random amounts between four funded keys, and from half way also to a
    newcomer; for each height, its app hash and the five balances."""
    h = Harness.create(tmp_path / "s.db", n_keys=4)
    h.app.committed.keep_recent = KEEP
    rng = random.Random(seed)
    seen: dict[int, tuple[bytes, list[int]]] = {}
    for n in range(blocks):
        txs = [h.send_tx(rng.randrange(4), rng.randrange(4), rng.randrange(1, 1000)) for _ in range(3)]
        if n >= blocks // 2:
            seq = h.sequences.get(h.keys[0].address, 0)
            h.sequences[h.keys[0].address] = seq + 1
            txs.append(build_tx(h.keys[0], CHAIN_ID, seq, [send_msg(h.keys[0].address, NEWCOMER.address, 7)],
                                fee=2_000))
        h.ok(*txs)
        seen[h.height] = (h.app.committed.app_hash, [_balance(h, a) for a in _addresses(h)])
    return h, seen


def _addresses(h: Harness) -> list[str]:
    return [k.address for k in h.keys] + [NEWCOMER.address]


def _balance(h: Harness, address: str) -> int:
    ctx = Ctx(State(h.app.committed), BlockEnv(CHAIN_ID, h.height, 0, b""))
    return h.app.bank.balance(ctx, parse_address(address))


def _bank_key(h: Harness, i: int) -> bytes:
    return balance_key(parse_address(_addresses(h)[i]))


def test_every_kept_height_has_its_own_app_hash_values_and_proofs(tmp_path: Path) -> None:
    h, seen = _history(tmp_path)
    kept = [v for v in seen if v >= h.height - KEEP]
    assert len(kept) == KEEP + 1
    for v in kept:
        view = VersionView(h.app.committed, v)
        app_hash, balances = seen[v]
        assert view.app_hash() == app_hash
        for i, amount in enumerate(balances):
            raw = view.get("bank", _bank_key(h, i))
            assert (0 if raw is None else bank_pb2.Balance.FromString(raw).amount) == amount
            if raw is not None:
                verify_store_proof(view.prove("bank", _bank_key(h, i)), "bank", _bank_key(h, i), raw, app_hash)
    older, newer = kept[0], kept[-1]
    raw = VersionView(h.app.committed, older).get("bank", _bank_key(h, 0))
    with pytest.raises(ProofError):  # an old value does not verify against a newer app hash
        verify_store_proof(VersionView(h.app.committed, older).prove("bank", _bank_key(h, 0)), "bank",
                           _bank_key(h, 0), raw or b"", seen[newer][0])


def test_typed_queries_and_store_queries_answer_at_the_height_asked(tmp_path: Path) -> None:
    h, seen = _history(tmp_path)
    for v in (h.height - KEEP, h.height - 1, h.height):
        req = q.BalanceRequest(address=h.keys[2].address).SerializeToString()
        resp = h.app.query(abci.RequestQuery(path="/llmnet.query.v1.QueryService/Balance", data=req, height=v))
        assert resp.code == 0 and resp.height == v
        assert q.BalanceResponse.FromString(resp.value).amount == seen[v][1][2]
        store = h.app.query(abci.RequestQuery(path="/store/bank/key", data=_bank_key(h, 2), height=v, prove=True))
        assert store.code == 0 and store.height == v
        verify_store_proof(list(store.proof_ops.ops), "bank", _bank_key(h, 2), store.value, seen[v][0])


def test_a_proof_without_a_height_is_answered_where_a_header_already_holds_its_app_hash(tmp_path: Path) -> None:
    h, seen = _history(tmp_path, blocks=4)
    resp = h.app.query(abci.RequestQuery(path="/store/bank/key", data=_bank_key(h, 1), prove=True))
    assert resp.height == h.height - 1
    verify_store_proof(list(resp.proof_ops.ops), "bank", _bank_key(h, 1), resp.value, seen[h.height - 1][0])
    plain = h.app.query(abci.RequestQuery(path="/store/bank/key", data=_bank_key(h, 1)))
    assert plain.height == h.height  # without a proof, the latest


@pytest.mark.parametrize("offset", [KEEP + 1, KEEP + 5, -1, -1000])
def test_heights_not_kept_are_refused_clearly(tmp_path: Path, offset: int) -> None:
    h, _ = _history(tmp_path)
    asked = h.height - offset
    resp = h.app.query(abci.RequestQuery(path="/store/bank/key", data=_bank_key(h, 1), height=asked))
    assert (resp.codespace, resp.code) == (ErrHeightUnavailable.codespace, ErrHeightUnavailable.code)
    assert f"heights {h.height - KEEP} to {h.height}" in resp.log


def test_a_key_written_later_did_not_exist_before(tmp_path: Path) -> None:
    h, seen = _history(tmp_path)
    first = next(v for v in sorted(seen) if seen[v][1][4] > 0)  # key 4 was funded at this height
    assert first - 1 >= h.height - KEEP  # still kept
    resp = h.app.query(abci.RequestQuery(path="/store/bank/key", data=_bank_key(h, 4), height=first - 1))
    assert (resp.codespace, resp.code) == (ErrNotFound.codespace, ErrNotFound.code)
    assert VersionView(h.app.committed, first).get("bank", _bank_key(h, 4)) is not None


def test_history_survives_a_restart(tmp_path: Path) -> None:
    h, seen = _history(tmp_path)
    h.app.close()
    reopened = Application(tmp_path / "s.db", keep_recent=KEEP)
    v = reopened.committed.height - 2
    assert VersionView(reopened.committed, v).app_hash() == seen[v][0]


def test_a_proof_of_a_key_written_in_the_latest_block_is_answered_there(tmp_path: Path) -> None:
    h, _ = _history(tmp_path, blocks=2)
    newest = build_tx(h.keys[1], CHAIN_ID, h.sequences.get(h.keys[1].address, 0),
                      [send_msg(h.keys[1].address, seeded_key("latecomer").address, 5)], fee=2_000)
    h.ok(newest)
    key = balance_key(parse_address(seeded_key("latecomer").address))
    resp = h.app.query(abci.RequestQuery(path="/store/bank/key", data=key, prove=True))
    assert resp.code == 0 and resp.height == h.height
    verify_store_proof(list(resp.proof_ops.ops), "bank", key, resp.value, h.app.committed.app_hash)


def test_a_past_heights_scans_match_that_heights_state_and_skip_long_deleted_rows(tmp_path: Path) -> None:
    """VersionView.iterate merges the rows present now with the keys written since its height: every range,
    limit and direction at every kept height gives what the state held then. Rows deleted before the kept
    heights (queue entries leave many) are not read at all: a proof of absence once walked every one."""
    h = Harness.create(tmp_path / "s.db", n_keys=1)
    store = h.app.committed
    store.keep_recent = KEEP
    rng = random.Random(11)
    keys = [bytes([0x40 + i // 8, i % 8]) for i in range(24)]
    state: dict[bytes, bytes] = {}
    snapshots: dict[int, dict[bytes, bytes]] = {}
    height = store.height
    for _ in range(14):
        writes: dict[tuple[str, bytes], bytes | None] = {}
        for key in rng.sample(keys, 6):
            value = None if rng.random() < 0.4 else rng.randbytes(3)
            writes[("inference", key)] = value
            if value is None:
                state.pop(key, None)
            else:
                state[key] = value
        height += 1
        store.commit(store.stage(writes), height)
        snapshots[height] = dict(state)
    for at in range(store.oldest_height(), height + 1):
        view = VersionView(store, at) if at < height else store
        for _ in range(30):
            start, end = sorted(rng.sample(keys + [b"\x00", b"\x7f"], 2))
            limit, reverse = rng.choice([None, 1, 3]), rng.random() < 0.5
            want = sorted(((k, v) for k, v in snapshots[at].items() if start <= k < end), reverse=reverse)
            assert view.iterate("inference", start, end, limit, reverse) == want[:limit], (at, start, end)
    dead = [b"\x30" + i.to_bytes(4, "big") for i in range(5_000)]
    for value in (b"\x01", None):
        height += 1
        store.commit(store.stage({("inference", k): value for k in dead}), height)
    for _ in range(KEEP + 1):
        height += 1
        store.commit(store.stage({}), height)
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    store._db.set_progress_handler(count, 100)  # called every 100 SQLite VM steps
    try:
        found = VersionView(store, height - 1).iterate("inference", b"", b"\x40", limit=1, reverse=True)
    finally:
        store._db.set_progress_handler(None, 0)
    assert found == [] and steps[0] < 100, steps  # walking the 5,000 deleted rows takes far more


def test_proofs_far_back_are_refused_and_a_flood_at_one_height_builds_its_trees_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A proof at height v rebuilds every store's tree from the rows written since v, on the loop that serves
    consensus too: a flood of them at the oldest of 100 kept heights held consensus for seconds. Proofs are
    answered at the latest PROOF_WINDOW heights (reads without one at every kept height), and a past
    height's trees are built once until the next Commit."""
    from abci_app.app import PROOF_WINDOW

    h = Harness.create(tmp_path / "s.db")
    hashes, balances = {}, {}
    for _ in range(PROOF_WINDOW + 4):
        h.ok(h.send_tx(0, 1, 5))
        hashes[h.height], balances[h.height] = h.app.committed.app_hash, _balance(h, h.keys[1].address)
    builds = []
    rows_at = h.app.committed.rows_at

    def counted(sql: str, args: tuple[object, ...]) -> list[tuple[object, ...]]:
        if "h.old" in sql:  # the rows a past height's tree is built from
            builds.append(args)
        return rows_at(sql, args)

    monkeypatch.setattr(h.app.committed, "rows_at", counted)
    key = _bank_key(h, 1)
    far, edge = h.height - PROOF_WINDOW - 1, h.height - PROOF_WINDOW
    refused = h.app.query(abci.RequestQuery(path="/store/bank/key", data=key, height=far, prove=True))
    assert (refused.codespace, refused.code) == (ErrHeightUnavailable.codespace, ErrHeightUnavailable.code)
    assert f"the latest height and the {PROOF_WINDOW} before it" in refused.log
    plain = h.app.query(abci.RequestQuery(path="/store/bank/key", data=key, height=far))
    assert plain.code == 0 and bank_pb2.Balance.FromString(plain.value).amount == balances[far]
    for _ in range(5):
        proven = h.app.query(abci.RequestQuery(path="/store/bank/key", data=key, height=edge, prove=True))
        verify_store_proof(list(proven.proof_ops.ops), "bank", key, proven.value, hashes[edge])
        for v in hashes:  # cheap reads at every other height do not push the proof's trees out
            assert h.app.query(abci.RequestQuery(path="/store/bank/key", data=key, height=v)).code == 0
    stores = len(h.app.committed.store_names)
    assert len(builds) == stores  # five proofs, one build of each store's tree
    recent = h.height - 2
    h.app.query(abci.RequestQuery(path="/store/bank/key", data=key, height=recent, prove=True))
    assert len(builds) == 2 * stores
    h.finalize([])  # a new latest tree: the views built on the old one are dropped
    again = h.app.query(abci.RequestQuery(path="/store/bank/key", data=key, height=recent, prove=True))
    verify_store_proof(list(again.proof_ops.ops), "bank", key, again.value, hashes[recent])
    assert len(builds) == 3 * stores
