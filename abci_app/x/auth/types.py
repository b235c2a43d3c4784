"""Auth module: keys, records, defaults, the fee rule and its event."""

from __future__ import annotations

from abci_app.fixedpoint import PPM
from wire.llmnet.auth.v1 import auth_pb2

STORE = "auth"
ACCOUNT_PREFIX = b"acc/"
CHAIN_ID_KEY = b"chain_id"
FEE_COLLECTOR = b"\x00" * 19 + b"\x01"
"""Module account that receives fees (no key can sign for it)."""
SIMULATION_SIGNATURE = bytes(64)
"""What a client puts in a tx's signature to simulate it: Simulate then skips the check (and charges its gas
alike), and no node can verify it, so nobody can broadcast what was simulated. A fully signed simulation was a
tx a hostile node could broadcast: the user's send ran twice."""

EV_TX = "tx"
"""Every executed tx: attributes fee (amount and denom, as `2000ullm`), fee_payer, acc_seq."""


def default_params() -> auth_pb2.Params:
    return auth_pb2.Params(
        max_tx_bytes=65_536,
        max_memo_chars=256,
        tx_size_cost_per_byte=10,
        sig_verify_cost=1_000,
        min_gas_price_micro=10_000,
        write_cost_per_byte=30,
        read_cost_flat=100,
        max_block_gas=500_000_000,
    )


def account_key(address: bytes) -> bytes:
    return ACCOUNT_PREFIX + address


DUTY_GAS_LIMIT = 1_000_000
"""The most gas a fee-free tx of duties may ask for (abci_app/msgs.py MsgSpec.duty): a drawn expert's commit or
reveal needs a fraction of it, and no free tx may claim a block's gas. (A duty tx asking for more pays.)"""
DUTY_TX_BYTES = 6 * 1024
"""The largest fee-free tx of duties, memo-less: a reveal of the largest answer (4,096 bytes by default) with its
envelope fits; padding (unknown fields, a memo) cannot ride along for free. (A larger duty tx pays.)"""


def required_fee(gas_limit: int, min_gas_price_micro: int) -> int:
    """The least fee a tx with this gas limit pays: gas x price, price in millionths, rounded up."""
    return -(-gas_limit * min_gas_price_micro // PPM)
