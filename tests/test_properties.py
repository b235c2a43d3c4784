"""Properties of the state machine over random block sequences (Hypothesis)."""

from __future__ import annotations

import json
import sqlite3
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import FUNDS, Harness
from wire.tendermint.abci import types_pb2 as abci

N_KEYS = 4
GOLDEN = Path(__file__).parent / "golden" / "app_hash.json"

# A tx spec: (sender, recipient, amount, fee, sequence skew, corrupt). Skew 0 and corrupt False
# make a valid tx; the others exercise every rejection path in the middle of real traffic.
tx_spec = st.tuples(
    st.integers(0, N_KEYS - 1),
    st.integers(0, N_KEYS - 1),
    st.sampled_from([1, 7, 1000, FUNDS // 3, FUNDS * 2]),
    st.sampled_from([2000, 2500, 1, FUNDS * 2]),
    st.sampled_from([0, 0, 0, 1, -1]),
    st.booleans(),
)
blocks = st.lists(st.lists(tx_spec, max_size=6), min_size=1, max_size=6)


def build(h: Harness, spec: tuple[int, int, int, int, int, bool]) -> bytes:
    sender, recipient, amount, fee, skew, corrupt = spec
    key = h.keys[sender].address
    expected = h.sequences.get(key, 0)
    raw = h.send_tx(sender, recipient, amount, fee=fee, sequence=max(0, expected + skew))
    if skew == 0:
        h.sequences[key] = expected + 1  # may still fail (fee/funds); resync below
    return raw[:-3] if corrupt else raw


def run_blocks(db: Path, seq: list[list[tuple[int, int, int, int, int, bool]]]) -> list[bytes]:
    h = Harness.create(db, N_KEYS)
    hashes = []
    for block in seq:
        h.finalize([build(h, spec) for spec in block])
        resync(h)
        hashes.append(h.app.committed.app_hash)
    h.app.close()
    return hashes


def resync(h: Harness) -> None:
    from abci_app.context import BlockEnv, Ctx
    from abci_app.crypto import parse_address
    from abci_app.store.state import State

    ctx = Ctx(State(h.app.committed), BlockEnv("", 0, 0, b""))
    for key in h.keys:
        h.sequences[key.address] = h.app.auth.account(ctx, parse_address(key.address)).sequence


def total_balances(h: Harness) -> int:
    from abci_app.context import BlockEnv, Ctx
    from abci_app.store.state import State
    from abci_app.x.bank.types import BALANCE_PREFIX, STORE
    from wire.llmnet.bank.v1 import bank_pb2

    ctx = Ctx(State(h.app.committed), BlockEnv("", 0, 0, b""))
    return sum(bank_pb2.Balance.FromString(v).amount for _, v in ctx.kv(STORE).iterate(BALANCE_PREFIX))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks)
def test_two_fresh_apps_reach_the_same_app_hash(seq: list[list[tuple[int, int, int, int, int, bool]]]) -> None:
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        assert run_blocks(Path(a) / "s.db", seq) == run_blocks(Path(b) / "s.db", seq)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks)
def test_supply_is_conserved(seq: list[list[tuple[int, int, int, int, int, bool]]]) -> None:
    with tempfile.TemporaryDirectory() as d:
        h = Harness.create(Path(d) / "s.db", N_KEYS)
        for block in seq:
            h.finalize([build(h, spec) for spec in block])
            resync(h)
            from abci_app.context import BlockEnv, Ctx
            from abci_app.store.state import State

            ctx = Ctx(State(h.app.committed), BlockEnv("", 0, 0, b""))
            assert total_balances(h) == h.app.bank.supply(ctx) == N_KEYS * FUNDS
        h.app.close()


def _dump(db: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT store, key, value, pos FROM kv ORDER BY store, key").fetchall()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, N_KEYS - 1), st.sampled_from([1, 5, -1]), st.booleans()), min_size=1,
                max_size=5))
def test_rejected_txs_leave_state_byte_identical(bad: list[tuple[int, int, bool]]) -> None:
    with tempfile.TemporaryDirectory() as d:
        db = Path(d) / "s.db"
        h = Harness.create(db, N_KEYS)
        h.finalize([h.send_tx(0, 1, 10)])
        h.finalize([])  # its fee is shared out at the next block: block-level work, not the txs' doing
        before, root = _dump(db), h.app.committed.app_hash
        check_before = dict(h.app.check_state.writes())
        txs = []
        for sender, skew, truncate in bad:
            expected = h.sequences.get(h.keys[sender].address, 0)
            wrong = expected + skew if expected + skew >= 0 else expected + 2  # never the expected one
            raw = h.send_tx(sender, 1, 10, sequence=wrong)
            txs.append(raw[:-2] if truncate else raw)
        for raw in txs:
            assert h.app.check_tx(abci.RequestCheckTx(tx=raw)).code != 0
        assert dict(h.app.check_state.writes()) == check_before
        results = h.finalize(txs).tx_results
        assert all(r.code != 0 for r in results)
        assert _dump(db) == before and h.app.committed.app_hash == root
        h.app.close()


def golden_scenario(db: Path) -> list[str]:
    h = Harness.create(db, N_KEYS)
    out = []
    for n in range(5):
        h.finalize([h.send_tx(i, (i + n + 1) % N_KEYS, 1000 * (n + 1)) for i in range(N_KEYS)])
        out.append(h.app.committed.app_hash.hex())
    h.app.close()
    return out


def test_golden_app_hashes(tmp_path: Path) -> None:
    """A fixed scenario's app hashes. A change here changes consensus: update the file deliberately
    (python -m tests.test_properties) and say why in the commit."""
    assert golden_scenario(tmp_path / "s.db") == json.loads(GOLDEN.read_text())


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as d:
        GOLDEN.write_text(json.dumps(golden_scenario(Path(d) / "s.db"), indent=1) + "\n")
