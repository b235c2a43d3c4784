"""Every rejection a user can cause, with its stable code, through CheckTx and through a block."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from abci_app.errors import (
    ErrFeeUnpaid,
    ErrInsufficientFee,
    ErrInvalidAddress,
    ErrInvalidPubKey,
    ErrMemoTooLarge,
    ErrNoMessages,
    ErrOutOfGas,
    ErrTxDecode,
    ErrTxTimeout,
    ErrTxTooLarge,
    ErrUnauthorized,
    ErrUnknownMessage,
    ErrWrongSequence,
)
from abci_app.x.bank.types import ErrInsufficientFunds, ErrInvalidAmount
from llmnet.client.txbuilder import build_tx, pack, send_msg
from tests.helpers import CHAIN_ID, FUNDS, Harness, deterministic_key
from wire.llmnet.query.v1 import query_pb2 as q
from wire.llmnet.tx.v1 import tx_pb2
from wire.tendermint.abci import types_pb2 as abci


def _resign(h: Harness, body: tx_pb2.TxBody | None = None, auth: tx_pb2.AuthInfo | None = None,
            key_index: int = 0) -> bytes:
    key = h.keys[key_index]
    body = body if body is not None else _body(h)
    fee = tx_pb2.Fee(amount=2000, gas_limit=200_000)
    auth = auth or tx_pb2.AuthInfo(public_key=key.public_key, sequence=0, fee=fee)
    from abci_app.tx import sign_bytes

    bb, ab = body.SerializeToString(), auth.SerializeToString()
    signature = key.sign(sign_bytes(bb, ab, CHAIN_ID))
    return tx_pb2.Tx(body_bytes=bb, auth_info_bytes=ab, signature=signature).SerializeToString()


def _body(h: Harness, **fields: object) -> tx_pb2.TxBody:
    """A body with one valid send from key0 to key1, plus the given fields."""
    return tx_pb2.TxBody(messages=[pack(send_msg(h.keys[0].address, h.keys[1].address, 1))], **fields)


def _flip_sig(raw: bytes) -> bytes:
    tx = tx_pb2.Tx.FromString(raw)
    sig = bytearray(tx.signature)
    sig[0] ^= 1
    tx.signature = bytes(sig)
    return tx.SerializeToString()


def _other_signer(h: Harness) -> bytes:
    k0, k1 = h.keys[0], h.keys[1]
    return build_tx(k1, CHAIN_ID, 0, [send_msg(k0.address, k1.address, 1)], fee=2000)


def _with_unknown_field(packed: Any) -> Any:
    """The message with field 99 appended: protobuf keeps such fields through parsing and re-encoding, so
    without a check they reached the chain's state."""
    packed.value += b"\x98\x06\x05"
    return packed


Case = tuple[str, Callable[[Harness], bytes], type]
CHECK_TX_CASES: list[Case] = [
    ("random bytes", lambda h: b"\xff\x00garbage\x13", ErrTxDecode),
    ("truncated protobuf", lambda h: h.send_tx(0, 1, 5)[:-7], ErrTxDecode),
    ("empty", lambda h: b"", ErrTxDecode),
    ("bad signature", lambda h: _flip_sig(h.send_tx(0, 1, 5)), ErrUnauthorized),
    ("wrong chain id", lambda h: h.send_tx(0, 1, 5, chain_id="other-chain"), ErrUnauthorized),
    ("signer is not the sender", _other_signer, ErrUnauthorized),
    ("sequence too high", lambda h: h.send_tx(0, 1, 5, sequence=3), ErrWrongSequence),
    ("fee below minimum gas price", lambda h: h.send_tx(0, 1, 5, fee=1), ErrInsufficientFee),
    ("fee larger than balance", lambda h: h.send_tx(0, 1, 5, fee=FUNDS + 1), ErrFeeUnpaid),
    ("send more than balance", lambda h: h.send_tx(0, 1, FUNDS * 2), ErrInsufficientFunds),
    ("zero amount", lambda h: h.send_tx(0, 1, 0), ErrInvalidAmount),
    ("oversize", lambda h: _resign(h, _body(h, memo="x" * 70_000)), ErrTxTooLarge),
    ("memo too long", lambda h: _resign(h, _body(h, memo="x" * 300)), ErrMemoTooLarge),
    ("timed out", lambda h: _resign(h, _body(h, timeout_height=1)), ErrTxTimeout),
    ("no messages", lambda h: _resign(h, tx_pb2.TxBody()), ErrNoMessages),
    ("unknown message type", lambda h: _resign(h, tx_pb2.TxBody(messages=[pack(tx_pb2.Fee())])), ErrUnknownMessage),
    ("bad recipient address", lambda h: _resign(h, tx_pb2.TxBody(messages=[pack(
        send_msg(h.keys[0].address, "llm1notanaddress", 1))])), ErrInvalidAddress),
    ("gas limit too low", lambda h: _resign(h, auth=tx_pb2.AuthInfo(
        public_key=h.keys[0].public_key, sequence=0, fee=tx_pb2.Fee(amount=2000, gas_limit=100))), ErrOutOfGas),
    ("a field the chain does not know", lambda h: _resign(h, tx_pb2.TxBody(messages=[_with_unknown_field(
        pack(send_msg(h.keys[0].address, h.keys[1].address, 1)))])), ErrTxDecode),
    ("short public key", lambda h: _resign(h, auth=tx_pb2.AuthInfo(
        public_key=b"\x01" * 31, sequence=0, fee=tx_pb2.Fee(amount=2000, gas_limit=200_000))), ErrInvalidPubKey),
]


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    h = Harness.create(tmp_path / "state.db")
    h.finalize([])
    h.finalize([])  # height 2, so timeout_height=1 has passed
    return h


@pytest.mark.parametrize("name, make, error", CHECK_TX_CASES, ids=[c[0] for c in CHECK_TX_CASES])
def test_check_tx_rejects(harness: Harness, name: str, make: Callable[[Harness], bytes], error: type) -> None:
    before = dict(harness.app.check_state.writes())
    resp = harness.app.check_tx(abci.RequestCheckTx(tx=make(harness)))
    assert (resp.codespace, resp.code) == (error.codespace, error.code), resp.log
    assert resp.log  # readable reason
    assert dict(harness.app.check_state.writes()) == before


@pytest.mark.parametrize("name, make, error", CHECK_TX_CASES, ids=[c[0] for c in CHECK_TX_CASES])
def test_block_rejects_with_same_code(harness: Harness, name: str, make: Callable[[Harness], bytes],
                                      error: type) -> None:
    hash_before = harness.app.committed.app_hash
    result = harness.finalize([make(harness)]).tx_results[0]
    assert (result.codespace, result.code) == (error.codespace, error.code), result.log
    if error is not ErrInsufficientFunds:  # a failing message still pays its fee
        assert harness.app.committed.app_hash == hash_before


def test_valid_tx_passes_and_pipelines(harness: Harness) -> None:
    txs = [harness.send_tx(0, 1, 5) for _ in range(3)]
    for raw in txs:
        assert harness.app.check_tx(abci.RequestCheckTx(tx=raw)).code == 0
    # the same tx again is a replay
    again = harness.app.check_tx(abci.RequestCheckTx(tx=txs[0]))
    assert again.code == ErrWrongSequence.code
    results = harness.finalize(txs).tx_results
    assert [r.code for r in results] == [0, 0, 0]
    assert harness.balance(1) == FUNDS + 15
    assert harness.balance(0) == FUNDS - 15 - 3 * 2000
    replay = harness.finalize([txs[0]]).tx_results[0]
    assert replay.code == ErrWrongSequence.code


def test_failed_message_charges_fee_and_sequence(harness: Harness) -> None:
    result = harness.finalize([harness.send_tx(0, 1, FUNDS * 2)]).tx_results[0]
    assert result.code == ErrInsufficientFunds.code
    assert harness.balance(0) == FUNDS - 2000
    assert harness.balance(1) == FUNDS
    assert harness.finalize([harness.send_tx(0, 1, 1)]).tx_results[0].code == 0


def test_new_account_can_receive_and_then_spend(harness: Harness) -> None:
    newcomer = deterministic_key("newcomer")
    harness.keys.append(newcomer)
    assert harness.finalize([harness.send_tx(0, 4, 50_000)]).tx_results[0].code == 0
    assert harness.finalize([harness.send_tx(4, 0, 100)]).tx_results[0].code == 0
    assert harness.balance(4) == 50_000 - 100 - 2000


def test_recheck_after_commit_drops_only_what_the_block_invalidated(harness: Harness) -> None:
    first, second = harness.send_tx(0, 1, 5), harness.send_tx(0, 1, 5)
    for raw in (first, second):
        assert harness.app.check_tx(abci.RequestCheckTx(tx=raw)).code == 0
    harness.finalize([first])  # Commit resets the check state; CometBFT then rechecks its mempool
    recheck = abci.CheckTxType.RECHECK
    assert harness.app.check_tx(abci.RequestCheckTx(tx=second, type=recheck)).code == 0
    stale = harness.app.check_tx(abci.RequestCheckTx(tx=first, type=recheck))
    assert (stale.codespace, stale.code) == (ErrWrongSequence.codespace, ErrWrongSequence.code)
    assert "expected 2, got 0" in stale.log


def test_a_failure_no_rule_foresaw_refuses_the_tx_instead_of_stopping_the_node(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug a tx can reach (here a handler made to raise) used to stop the node from CheckTx, and every
    validator judging a proposal that carried the tx: outside a decided block it now refuses the tx (tx/15)
    with nothing written; a decided block still stops the node (it cannot be applied, and guessing forks)."""
    from google.protobuf.timestamp_pb2 import Timestamp

    from abci_app.errors import ErrInternal

    h = Harness.create(tmp_path / "s.db")
    h.finalize([])
    raw = h.send_tx(0, 1, 100)
    real = h.app.bank.move

    def broken(ctx: object, sender: bytes, recipient: bytes, amount: int) -> None:
        if amount == 100:  # the message's transfer, after the fee (2,000) was taken
            raise ZeroDivisionError("a bug")
        real(ctx, sender, recipient, amount)  # type: ignore[arg-type]

    monkeypatch.setattr(h.app.bank, "move", broken)
    checked = h.app.check_tx(abci.RequestCheckTx(tx=raw))
    assert (checked.codespace, checked.code) == (ErrInternal.codespace, ErrInternal.code)
    assert "ZeroDivisionError" in checked.log
    assert h.app.simulate(raw).code == ErrInternal.code
    time, height = Timestamp(seconds=1_700_000_100), h.height + 1
    prepared = h.app.prepare_proposal(abci.RequestPrepareProposal(txs=[raw], max_tx_bytes=10**6, height=height,
                                                                  time=time))
    assert raw not in prepared.txs
    judged = h.app.process_proposal(abci.RequestProcessProposal(
        txs=[h.beacon(height), raw], height=height, time=time, hash=b"\x01" * 32,
        proposed_last_commit=h.last_commit()))
    assert judged.status == abci.ResponseProcessProposal.REJECT
    with pytest.raises(ZeroDivisionError):
        h.finalize([raw])
    # the same for a failure while decoding the tx, or in the proposal's beacon check
    monkeypatch.setattr(h.app, "_decode", lambda ctx, raw: 1 // 0)
    assert h.app.check_tx(abci.RequestCheckTx(tx=raw)).code == ErrInternal.code
    assert raw not in h.app.prepare_proposal(abci.RequestPrepareProposal(
        txs=[raw], max_tx_bytes=10**6, height=height, time=time)).txs
    assert h.app.process_proposal(abci.RequestProcessProposal(
        txs=[h.beacon(height), raw], height=height, time=time, hash=b"\x01" * 32,
        proposed_last_commit=h.last_commit())).status == abci.ResponseProcessProposal.REJECT
    monkeypatch.undo()
    monkeypatch.setattr(h.app.beacon, "take", lambda *args: 1 // 0)
    assert h.app.process_proposal(abci.RequestProcessProposal(
        txs=[h.beacon(height)], height=height, time=time, hash=b"\x01" * 32,
        proposed_last_commit=h.last_commit())).status == abci.ResponseProcessProposal.REJECT
    monkeypatch.undo()
    monkeypatch.setattr(h.app.bank, "move", real)
    assert h.app.check_tx(abci.RequestCheckTx(tx=raw)).code == 0  # the refusal left the sender's sequence alone


def test_what_a_client_simulates_cannot_be_broadcast(harness: Harness) -> None:
    """A client sent Simulate a fully signed tx: a hostile node broadcast it, and the user's send ran twice (the
    client's own copy then re-signed for the next sequence). A simulation carries SIMULATION_SIGNATURE instead:
    Simulate runs it with the same gas as a signed one, CheckTx and blocks refuse it."""
    from abci_app.errors import ErrUnauthorized

    key = harness.keys[0]
    msgs = [send_msg(key.address, harness.keys[1].address, 5)]
    signed = build_tx(key, CHAIN_ID, 0, msgs, fee=2_000)
    placeholder = build_tx(key, CHAIN_ID, 0, msgs, fee=2_000, for_simulation=True)
    assert len(placeholder) == len(signed)
    simulated, real = harness.app.simulate(placeholder), harness.app.simulate(signed)
    assert simulated.code == 0 and simulated.gas_used == real.gas_used
    assert harness.app.check_tx(abci.RequestCheckTx(tx=placeholder)).code == ErrUnauthorized.code
    assert harness.finalize([placeholder]).tx_results[0].code == ErrUnauthorized.code
    assert harness.balance(1) == FUNDS
    other_chain = build_tx(key, "another-chain", 0, msgs, fee=2_000)  # simulate still checks a real signature
    assert harness.app.simulate(other_chain).code == ErrUnauthorized.code


def test_a_fee_above_the_minimum_is_not_taken(harness: Harness) -> None:
    """With no priority to buy, more bought nothing; and since fees go to the validators, a node that told a
    client a higher gas price made its own validator richer (up to the client's cap)."""
    key = harness.keys[0]
    raw = build_tx(key, CHAIN_ID, 0, [send_msg(key.address, harness.keys[1].address, 5)], fee=50_000)
    [result] = harness.finalize([raw]).tx_results
    assert result.code == 0
    assert harness.balance(0) == FUNDS - 5 - 2_000  # the default 200,000 gas at 10,000/1e6: 2,000
    assert any(a.value == "2000ullm" for e in result.events if e.type == "tx" for a in e.attributes)


def test_a_chain_with_no_minimum_gas_price_takes_no_fee(tmp_path: Path) -> None:
    """The fee taken is the minimum, 0 here: moving 0 was refused (bank/4), and with it every tx offering a fee."""
    from llmnet.devchain import DevChain, seeded_key

    key = seeded_key("payer")
    chain = DevChain(tmp_path / "z.db", [key], FUNDS, app_state={"auth": {"params": {"min_gas_price_micro": 0}}})
    chain.ok()
    chain.ok(chain.tx(key, send_msg(key.address, key.address, 1), fee=5_000))
    assert chain.query("Balance", q.BalanceRequest(address=key.address), q.BalanceResponse).amount == FUNDS
