"""The ante handler: the checks and charges every tx passes before its messages run.

One function serves CheckTx, PrepareProposal, ProcessProposal and FinalizeBlock, so a tx that the
mempool admits is judged by exactly the rules a block applies.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

from abci_app.context import Ctx, GasCosts, GasMeter
from abci_app.crypto import parse_address, verify
from abci_app.errors import (
    ErrFeeUnpaid,
    ErrGasLimitTooHigh,
    ErrInsufficientFee,
    ErrMemoTooLarge,
    ErrTxTimeout,
    ErrTxTooLarge,
    ErrUnauthorized,
    ErrWrongSequence,
)
from abci_app.events import event
from abci_app.tx import DecodedTx
from abci_app.x.auth.keeper import AuthKeeper
from abci_app.x.auth.types import (
    DUTY_GAS_LIMIT,
    DUTY_TX_BYTES,
    EV_TX,
    FEE_COLLECTOR,
    SIMULATION_SIGNATURE,
    required_fee,
)
from abci_app.x.bank.keeper import BankKeeper


class SignatureCache:
    """Remembers signatures already verified. A pure speed-up: verification is a function of
    (public key, sign bytes, signature), so a hit returns what a fresh check would. The sign bytes are kept
    as their sha256 (a tx's may be 64 KiB, and a tx refused after its signature check pays nothing)."""

    def __init__(self, capacity: int = 100_000) -> None:
        self._capacity = capacity
        self._seen: OrderedDict[tuple[bytes, bytes, bytes], None] = OrderedDict()

    def verify(self, public_key: bytes, message: bytes, signature: bytes) -> bool:
        key = (public_key, hashlib.sha256(message).digest(), signature)
        if key in self._seen:
            return True
        if not verify(public_key, message, signature):
            return False
        self._seen[key] = None
        if len(self._seen) > self._capacity:
            self._seen.popitem(last=False)
        return True


def check_size(raw_len: int, max_tx_bytes: int) -> None:
    if raw_len > max_tx_bytes:
        raise ErrTxTooLarge(f"tx is {raw_len} bytes, the limit is {max_tx_bytes}")


class AnteHandler:
    def __init__(self, auth: AuthKeeper, bank: BankKeeper, sigs: SignatureCache) -> None:
        self.auth = auth
        self.bank = bank
        self.sigs = sigs

    def run(self, ctx: Ctx, tx: DecodedTx, simulate: bool = False) -> bool:
        """Check tx against ctx's state and charge it: bump the sequence, take the fee. Returns whether it pays
        less than its fee by right: a tx of duties alone (MsgSpec.duty), memo-less, within DUTY_GAS_LIMIT and
        DUTY_TX_BYTES, which the caller then keeps only if every message succeeds. A drawn expert's commits and
        reveals are paid for by the query's fee: charged to the expert, a requester's cheapest queries cost
        its respondents more than they could earn, and an expert drained of funds misses its duties and is
        jailed.

        Raises ErrTxTooLarge, ErrMemoTooLarge, ErrTxTimeout, ErrInsufficientFee, ErrUnauthorized,
        ErrWrongSequence, ErrFeeUnpaid or ErrOutOfGas; on error the caller's scope discards writes.
        """
        params = self.auth.params(ctx)
        check_size(len(tx.raw), params.max_tx_bytes)
        if len(tx.body.memo) > params.max_memo_chars:
            raise ErrMemoTooLarge(f"memo is {len(tx.body.memo)} characters, the limit is {params.max_memo_chars}")
        if tx.body.timeout_height and ctx.env.height > tx.body.timeout_height:
            raise ErrTxTimeout(f"tx timed out at height {tx.body.timeout_height}; block height is {ctx.env.height}")
        fee = tx.auth.fee
        if fee.gas_limit > params.max_block_gas:
            raise ErrGasLimitTooHigh(f"gas limit {fee.gas_limit} is above the block limit {params.max_block_gas}")
        needed = required_fee(fee.gas_limit, params.min_gas_price_micro)
        free = fee.amount < needed and fee.gas_limit <= DUTY_GAS_LIMIT and len(tx.raw) <= DUTY_TX_BYTES and \
            not tx.body.memo and bool(tx.msgs) and all(spec.duty for spec, _ in tx.msgs)  # paid: as any other
        if fee.amount < needed and not free:
            raise ErrInsufficientFee(
                f"fee {fee.amount} is below {needed} (gas limit {fee.gas_limit} at "
                f"{params.min_gas_price_micro}/1e6 per gas)"
            )
        ctx.gas = GasMeter(fee.gas_limit)
        ctx.costs = GasCosts(params.read_cost_flat, params.write_cost_per_byte)
        ctx.gas.consume(params.tx_size_cost_per_byte * len(tx.raw), "tx size")
        ctx.gas.consume(params.sig_verify_cost, "signature")
        placeholder = simulate and tx.signature == SIMULATION_SIGNATURE  # checked nowhere else: never valid
        if not placeholder and not self.sigs.verify(tx.auth.public_key, tx.sign_bytes(ctx.env.chain_id),
                                                    tx.signature):
            raise ErrUnauthorized(
                f"signature verification failed for {tx.signer} on chain {ctx.env.chain_id!r} "
                "(wrong key, wrong chain id, or tampered bytes)"
            )
        address = parse_address(tx.signer)
        account = self.auth.account(ctx, address)
        if tx.auth.sequence != account.sequence:
            raise ErrWrongSequence(
                f"account sequence mismatch for {tx.signer}: expected {account.sequence}, got {tx.auth.sequence}"
            )
        # The minimum for the gas limit, however much more the tx offers: with no priority to buy, more bought
        # nothing, and a node that told a client a higher gas price made its validator richer.
        charged = min(fee.amount, needed)
        if fee.amount:  # what it offered must be there all the same
            if self.bank.balance(ctx, address) < fee.amount:
                raise ErrFeeUnpaid(f"{tx.signer} cannot cover the fee it offers, {fee.amount}{self.bank.denom(ctx)}")
            if charged:  # 0 at a minimum gas price of 0
                self.bank.move(ctx, address, FEE_COLLECTOR, charged)
        account.public_key = tx.auth.public_key
        account.sequence += 1
        self.auth.set_account(ctx, address, account)
        ctx.emit(event(EV_TX, fee=f"{charged}{self.bank.denom(ctx)}", fee_payer=tx.signer,
                       acc_seq=f"{tx.signer}/{tx.auth.sequence}"))
        return free
