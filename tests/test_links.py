"""Absence proofs: every store commits a sorted linked list of its keys (abci_app/store/links.py), so a
missing key is proven missing by one ordinary presence proof that CometBFT's stock runtime checks."""

from __future__ import annotations

import bisect
import random
from pathlib import Path

import pytest

from abci_app.app import ABSENT
from abci_app.crypto import parse_address
from abci_app.store.db import CommittedStore
from abci_app.store.links import LINK_PREFIX, decode_next, link_key, link_updates, proves_absence
from abci_app.store.state import State
from abci_app.store.versions import VersionView
from abci_app.x.bank.types import balance_key
from llmnet.client.keys import Key
from llmnet.client.proof import ProofError, verify_absence, verify_store_proof
from tests.helpers import Harness
from wire.tendermint.abci import types_pb2 as abci

UNIVERSE = [b"k%02d" % i for i in range(24)]


def _chain(store: CommittedStore, name: str) -> list[bytes]:
    """The keys in link order, walked from the head."""
    out, at = [], b""
    while True:
        value = store.get(name, link_key(at))
        nxt = None if value is None else decode_next(value)
        if nxt is None:
            return out
        out.append(nxt)
        at = nxt


@pytest.mark.parametrize("seed", range(6))
def test_links_always_list_the_present_keys_in_order_and_prove_every_gap(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    store = CommittedStore(tmp_path / "s.db", ["s"])
    present: dict[bytes, bytes] = {}
    for height in range(1, 30):
        writes: dict[tuple[str, bytes], bytes | None] = {}
        for key in rng.sample(UNIVERSE, rng.randrange(1, 8)):
            value = None if rng.random() < 0.4 else b"v%d" % rng.randrange(1000)
            writes[("s", key)] = value
        store.commit(store.stage(writes), height)
        for (_, key), value in writes.items():
            if value is None:
                present.pop(key, None)
            else:
                present[key] = value
        assert _chain(store, "s") == sorted(present)
        state = State(store)
        assert [k for k, _ in state.iterate("s", b"")] == sorted(present)  # links never show to modules
        links = [(bytes(k), bytes(v)) for k, v in store.rows_at(
            "SELECT key, value FROM kv WHERE store=? AND key>=? AND value IS NOT NULL", ("s", LINK_PREFIX))]
        for key in UNIVERSE:
            skipping = [(k, v) for k, v in links if proves_absence(key, k, v)]
            assert len(skipping) == (0 if key in present else 1)  # exactly one gap holds an absent key


def test_a_missing_key_is_proven_missing_now_and_at_a_kept_height(tmp_path: Path) -> None:
    h = Harness.create(tmp_path / "s.db", n_keys=3)
    for n in range(3):
        h.ok(h.send_tx(0, 1, 10 + n))
    nobody = balance_key(parse_address(Key.generate("nobody").address))
    for height in (h.height, h.height - 2):
        resp = h.app.query(abci.RequestQuery(path="/store/bank/key", data=nobody, prove=True, height=height))
        assert resp.code == 0 and resp.info == ABSENT and resp.key != nobody and resp.key.startswith(LINK_PREFIX)
        app_hash = VersionView(h.app.committed, height).app_hash()
        verify_absence(list(resp.proof_ops.ops), "bank", nobody, resp.key, resp.value, app_hash)
    plain = h.app.query(abci.RequestQuery(path="/store/bank/key", data=nobody))
    assert plain.code != 0  # without a proof, a missing key is simply not found


def test_an_absence_claim_cannot_hide_a_present_key(tmp_path: Path) -> None:
    h = Harness.create(tmp_path / "s.db", n_keys=3)
    h.ok(h.send_tx(0, 1, 10))
    present = balance_key(parse_address(h.keys[1].address))
    nobody = balance_key(parse_address(Key.generate("nobody").address))
    absent = h.app.query(abci.RequestQuery(path="/store/bank/key", data=nobody, prove=True, height=h.height))
    app_hash = h.app.committed.app_hash
    with pytest.raises(ProofError):  # the proven gap of another key says nothing about this one
        verify_absence(list(absent.proof_ops.ops), "bank", present, absent.key, absent.value, app_hash)
    value = h.app.query(abci.RequestQuery(path="/store/bank/key", data=present, prove=True, height=h.height))
    with pytest.raises(ProofError):  # a value proof is no absence proof
        verify_absence(list(value.proof_ops.ops), "bank", present, value.key, value.value, app_hash)
    forged = b"\x00"  # "nothing after": only the link's real value verifies
    with pytest.raises(ProofError):
        verify_store_proof(list(absent.proof_ops.ops), "bank", absent.key, forged, app_hash)


@pytest.mark.parametrize("key", [LINK_PREFIX + b"x", LINK_PREFIX, b"\xff\xffz", b"\xff\xff\xff"])
def test_modules_cannot_write_link_keys_or_above(tmp_path: Path, key: bytes) -> None:
    store = CommittedStore(tmp_path / "s.db", ["s"])
    with pytest.raises(KeyError, match="reserved"):
        store.stage({("s", key): b"forged"})


def test_removing_a_run_of_neighbouring_keys_costs_linear_lookups() -> None:
    """A block that empties n adjacent keys (say, drained balances with a ground address prefix) must not
    make every validator walk the run once per key."""
    present = [b"k%05d" % i for i in range(3000)]

    class Counting:
        calls = 0

        def next_present(self, store: str, after: bytes) -> bytes | None:
            Counting.calls += 1
            i = bisect.bisect_right(present, after)
            return present[i] if i < len(present) else None

        def prev_present(self, store: str, before: bytes) -> bytes | None:
            Counting.calls += 1
            i = bisect.bisect_left(present, before)
            return present[i - 1] if i else None

    run = present[500:2500]
    writes = link_updates(Counting(), "s", {k: False for k in run})
    assert writes[link_key(present[499])] == b"\x01" + present[2500]  # the gap is bridged
    assert sum(v is None for v in writes.values()) == len(run)
    assert Counting.calls <= 4 * len(run)
