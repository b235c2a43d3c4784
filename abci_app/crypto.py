"""Keys and addresses: ed25519 signatures, 20-byte addresses, bech32 with the chain's prefix."""

from __future__ import annotations

import hashlib
from functools import lru_cache

from nacl.bindings import crypto_sign_open
from nacl.exceptions import BadSignatureError, CryptoError

from abci_app import bech32
from abci_app.errors import ErrInvalidAddress

ADDRESS_PREFIX = "llm"
ADDRESS_LEN = 20
PUBKEY_LEN = 32


def address_bytes(public_key: bytes) -> bytes:
    """CometBFT's ed25519 address rule: the first 20 bytes of sha256(public key)."""
    return hashlib.sha256(public_key).digest()[:ADDRESS_LEN]


# Address conversions are pure and hot (every message names two), so they are memoized.
@lru_cache(maxsize=1 << 16)
def address_of(public_key: bytes) -> str:
    return bech32.encode(ADDRESS_PREFIX, address_bytes(public_key))


@lru_cache(maxsize=1 << 16)
def parse_address(text: str) -> bytes:
    """Decode a bech32 account address. Raises ValueError saying what is wrong."""
    hrp, data = bech32.decode(text)
    if hrp != ADDRESS_PREFIX:
        raise ValueError(f"address prefix is {hrp!r}, expected {ADDRESS_PREFIX!r}")
    if len(data) != ADDRESS_LEN:
        raise ValueError(f"address is {len(data)} bytes, expected {ADDRESS_LEN}")
    return data


@lru_cache(maxsize=1 << 16)
def format_address(raw: bytes) -> str:
    return bech32.encode(ADDRESS_PREFIX, raw)


def check_address(field: str, text: str) -> bytes:
    """A message's address field, decoded; raises ErrInvalidAddress naming the field."""
    try:
        return parse_address(text)
    except ValueError as exc:
        raise ErrInvalidAddress(f"{field}: {exc}") from None


def module_address(name: str) -> bytes:
    """A module account's address: no key can sign for it, only its module moves its funds."""
    return hashlib.sha256(b"module:" + name.encode()).digest()[:ADDRESS_LEN]


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    if len(public_key) != PUBKEY_LEN or len(signature) != 64:
        return False
    try:
        crypto_sign_open(signature + message, public_key)  # libsodium: about half the cost of OpenSSL here
    except (BadSignatureError, CryptoError, ValueError):
        return False
    return True
