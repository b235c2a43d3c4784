"""Attacks by a block proposer (or anyone feeding one): blocks that carry txs nobody pays for.

Promise: every tx in a block pays its fee. A proposal is judged by executing its txs in order, messages
and all, on the state they will run on; one that would carry an unpaid tx is rejected.
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf.timestamp_pb2 import Timestamp

from llmnet.client.txbuilder import build_tx, send_msg
from tests.helpers import CHAIN_ID, FUNDS, Harness
from wire.tendermint.abci import types_pb2 as abci

FEE = 2_000
MEMO = "x" * 200  # followers padded with a memo: bytes in blocks, no fee behind them


def _drain_then_follow(h: Harness, followers: int) -> list[bytes]:
    """The sender's first tx sends away everything but its own fee; the followers cannot pay."""
    key = h.keys[0]
    txs = [build_tx(key, CHAIN_ID, 0, [send_msg(key.address, h.keys[1].address, FUNDS - FEE)], fee=FEE)]
    txs += [build_tx(key, CHAIN_ID, 1 + i, [send_msg(key.address, h.keys[1].address, 1)], fee=FEE, memo=MEMO)
            for i in range(followers)]
    return txs


def test_a_proposal_with_unpaid_txs_is_rejected_and_never_built(tmp_path: Path) -> None:
    h = Harness.create(tmp_path / "s.db")
    h.finalize([])
    txs = _drain_then_follow(h, 50)
    time = Timestamp(seconds=1_700_000_100)
    prepared = h.app.prepare_proposal(abci.RequestPrepareProposal(txs=txs, max_tx_bytes=10**7, height=2, time=time))
    assert list(prepared.txs) == txs[:1]
    verdict = h.app.process_proposal(abci.RequestProcessProposal(txs=txs, height=2, time=time, hash=b"\x01" * 32))
    assert verdict.status == abci.ResponseProcessProposal.REJECT
    # what the attack bought before: 50 txs of bytes in a block for one fee
    results = h.finalize(txs).tx_results
    paid = sum(1 for r in results if r.code == 0)
    assert paid == 1 and sum(len(t) for t in txs[1:]) > 10_000


def test_recheck_sees_what_the_admitted_txs_did(tmp_path: Path) -> None:
    h = Harness.create(tmp_path / "s.db")
    h.finalize([])
    drain, follower = _drain_then_follow(h, 1)
    assert h.app.check_tx(abci.RequestCheckTx(tx=drain)).code == 0
    h.finalize([])  # a block without them; Commit resets the check state and CometBFT rechecks the mempool
    recheck = abci.CheckTxType.RECHECK
    assert h.app.check_tx(abci.RequestCheckTx(tx=drain, type=recheck)).code == 0
    again = h.app.check_tx(abci.RequestCheckTx(tx=follower, type=recheck))
    assert again.code != 0  # the recheck of the drain left the check state drained: the follower cannot pay
