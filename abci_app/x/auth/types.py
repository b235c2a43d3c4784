"""Auth module records and defaults."""

from __future__ import annotations

from wire.llmnet.auth.v1 import auth_pb2

STORE = "auth"
ACCOUNT_PREFIX = b"acc/"
CHAIN_ID_KEY = b"chain_id"
FEE_COLLECTOR = b"\x00" * 19 + b"\x01"
"""Module account that receives fees (no key can sign for it)."""


def default_params() -> auth_pb2.Params:
    return auth_pb2.Params(
        max_tx_bytes=65_536,
        max_memo_chars=256,
        tx_size_cost_per_byte=10,
        sig_verify_cost=1_000,
        min_gas_price_micro=10_000,
        write_cost_per_byte=30,
        read_cost_flat=100,
    )


def account_key(address: bytes) -> bytes:
    return ACCOUNT_PREFIX + address
