"""Decoding the signed envelope. Pure: bytes in, DecodedTx or a typed error out."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError

from abci_app.crypto import PUBKEY_LEN, address_of
from abci_app.errors import (
    ErrGasLimitTooHigh,
    ErrInvalidPubKey,
    ErrNoMessages,
    ErrTxDecode,
    ErrUnauthorized,
    ErrUnknownMessage,
)
from abci_app.msgs import MsgRegistry, MsgSpec
from wire.llmnet.tx.v1 import tx_pb2

MAX_MESSAGES = 64
MAX_GAS_LIMIT = 2**63 - 1
"""A tx's gas limit is a uint64, but ABCI reports gas wanted as an int64: a result could not even be built for
more (and building it raised, which stopped the node)."""


@dataclass(frozen=True)
class DecodedTx:
    raw: bytes
    hash: bytes
    body: tx_pb2.TxBody
    auth: tx_pb2.AuthInfo
    signature: bytes
    body_bytes: bytes
    auth_bytes: bytes
    signer: str
    msgs: tuple[tuple[MsgSpec, Any], ...]

    def sign_bytes(self, chain_id: str) -> bytes:
        return sign_bytes(self.body_bytes, self.auth_bytes, chain_id)


def sign_bytes(body_bytes: bytes, auth_bytes: bytes, chain_id: str) -> bytes:
    """The bytes a signer signs: the raw body and auth bytes bound to the chain id."""
    doc = tx_pb2.SignDoc(body_bytes=body_bytes, auth_info_bytes=auth_bytes, chain_id=chain_id)
    return doc.SerializeToString()


def _parse(cls: Any, raw: bytes, what: str) -> Any:
    try:
        return cls.FromString(raw)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise ErrTxDecode(f"cannot decode {what}: {exc}") from None


def decode_tx(raw: bytes, registry: MsgRegistry) -> DecodedTx:
    """Parse and statelessly check a tx. Raises TxError subclasses or a module's validation error."""
    if not raw:
        raise ErrTxDecode("empty tx")
    tx = _parse(tx_pb2.Tx, raw, "tx envelope")
    tx.DiscardUnknownFields()  # protobuf writes them back: the comparison below would let them through
    if tx.SerializeToString() != raw:  # the envelope is not signed: any other bytes for it are another tx hash
        raise ErrTxDecode("tx envelope is not canonically encoded (fields out of order, repeated or unknown)")
    body = _parse(tx_pb2.TxBody, tx.body_bytes, "tx body")
    auth = _parse(tx_pb2.AuthInfo, tx.auth_info_bytes, "auth info")
    if len(auth.public_key) != PUBKEY_LEN:
        raise ErrInvalidPubKey(f"public key must be {PUBKEY_LEN} bytes of ed25519, got {len(auth.public_key)}")
    if len(tx.signature) != 64:
        raise ErrUnauthorized(f"signature must be 64 bytes, got {len(tx.signature)}")
    if auth.fee.gas_limit > MAX_GAS_LIMIT:
        raise ErrGasLimitTooHigh(f"gas limit {auth.fee.gas_limit} does not fit ABCI's gas (a signed 64-bit integer)")
    if not body.messages:
        raise ErrNoMessages("tx has no messages")
    if len(body.messages) > MAX_MESSAGES:
        raise ErrTxDecode(f"tx has {len(body.messages)} messages, at most {MAX_MESSAGES} allowed")
    signer = address_of(auth.public_key)
    msgs = []
    for i, packed in enumerate(body.messages):
        spec = registry.get(packed.type_url)
        if spec is None:
            raise ErrUnknownMessage(f"message {i}: unknown type {packed.type_url!r}")
        msg = _parse(spec.cls, packed.value, f"message {i} ({packed.type_url})")
        size = msg.ByteSize()
        msg.DiscardUnknownFields()  # recursive
        if msg.ByteSize() != size:  # as Cosmos SDK: what no handler reads must not reach state (or the app hash)
            raise ErrTxDecode(f"message {i} ({packed.type_url}) carries fields this chain does not know")
        spec.validate(msg)
        if spec.signer(msg) != signer:
            raise ErrUnauthorized(f"message {i} must be signed by {spec.signer(msg)}, tx is signed by {signer}")
        msgs.append((spec, msg))
    return DecodedTx(
        raw=raw,
        hash=hashlib.sha256(raw).digest(),
        body=body,
        auth=auth,
        signature=tx.signature,
        body_bytes=tx.body_bytes,
        auth_bytes=tx.auth_info_bytes,
        signer=signer,
        msgs=tuple(msgs),
    )
