"""Beacon module: keys, errors, the extension every validator signs, and the beacon pseudo-tx."""

from __future__ import annotations

import hashlib
import hmac

from abci_app.errors import AppError
from wire.llmnet.beacon.v1 import beacon_pb2 as pb

STORE = "beacon"
VALIDATOR_PREFIX = b"val/"  # val/<address> -> ValidatorKey: the set of the height before the current block
PENDING_PREFIX = b"pend/"  # pend/<be8 effective height><address> -> ValidatorKey (power 0: leaves)
ENABLE_HEIGHT_KEY = b"enable_height"
COMMIT_FLAG = 2
"""BlockIDFlag COMMIT: the validator precommitted the block."""
EXTENSION_TAG = b"llmnet/beacon/v2"
SECRET_BYTES = 32
EXTENSION_BYTES = len(EXTENSION_TAG) + 2 * SECRET_BYTES
"""A validator's vote extension at height h: EXTENSION_TAG, its secret of height h - 1 (revealed), and the
commitment to its secret of height h. The secrets come from a key its node keeps (beacon_secret_at)."""
COMMITMENTS_KEY = b"commitments"  # -> BeaconCommitments of the last beacon kept
TX_TAG = b"\x00llmnet-beacon\x00"
"""Prefix of the beacon pseudo-tx. A real tx never starts with a zero byte (protobuf field 0 does not
exist), so the mempool refuses these bytes and no user can pose as the beacon."""


class BeaconError(AppError):
    codespace = "beacon"


class ErrInvalidBeacon(BeaconError):
    code = 2


def validator_key(address: bytes) -> bytes:
    return VALIDATOR_PREFIX + address


def pending_key(effective: int, address: bytes) -> bytes:
    return PENDING_PREFIX + effective.to_bytes(8, "big") + address


def encode_tx(beacon: pb.Beacon) -> bytes:
    return TX_TAG + beacon.SerializeToString(deterministic=True)


def is_beacon_tx(raw: bytes) -> bool:
    return raw.startswith(TX_TAG)


def beacon_secret_at(node_key: bytes, chain_id: str, height: int) -> bytes:
    """A validator's secret for one height, from the key its node keeps: the same after a restart, so it can
    reveal what it committed to; unknowable to anyone without the key."""
    return hmac.new(node_key, b"llmnet/beacon-secret\x00" + chain_id.encode() + b"\x00" + height.to_bytes(8, "big"),
                    hashlib.sha256).digest()


def commitment_of(secret: bytes) -> bytes:
    return hashlib.sha256(b"llmnet/beacon-commit\x00" + secret).digest()


def extension_at(node_key: bytes, chain_id: str, height: int) -> bytes:
    """The vote extension a validator whose node keeps node_key makes at height."""
    return (EXTENSION_TAG + beacon_secret_at(node_key, chain_id, height - 1)
            + commitment_of(beacon_secret_at(node_key, chain_id, height)))


def parse_extension(extension: bytes) -> tuple[bytes, bytes] | None:
    """(revealed secret, commitment), or None for bytes of any other shape."""
    if len(extension) != EXTENSION_BYTES or not extension.startswith(EXTENSION_TAG):
        return None
    body = extension[len(EXTENSION_TAG):]
    return body[:SECRET_BYTES], body[SECRET_BYTES:]


def seed_of(height: int, reveals: list[tuple[bytes, bytes]]) -> bytes:
    """sha256 over (validator address, revealed secret) in address order; b"" when there is none."""
    if not reveals:
        return b""
    return hashlib.sha256(b"llmnet/beacon-seed" + height.to_bytes(8, "big") +
                          b"".join(a + r for a, r in sorted(reveals))).digest()


def from_last_commit(votes: list[tuple[bytes, bytes, bytes]], height: int, round_: int) -> pb.Beacon:
    """The beacon a proposer builds from the previous height's commit: (validator address, extension,
    extension signature) of every vote it has that carries one, in address order."""
    return pb.Beacon(height=height, round=round_, votes=[
        pb.BeaconVote(validator_address=a, extension=e, extension_signature=s) for a, e, s in sorted(votes) if s])
