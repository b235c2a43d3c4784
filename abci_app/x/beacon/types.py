"""Beacon module: keys, errors, the extension every validator signs, and the beacon pseudo-tx."""

from __future__ import annotations

import hashlib

from abci_app.errors import AppError
from wire.llmnet.beacon.v1 import beacon_pb2 as pb

STORE = "beacon"
VALIDATOR_PREFIX = b"val/"  # val/<address> -> ValidatorKey: the set of the height before the current block
PENDING_PREFIX = b"pend/"  # pend/<be8 effective height><address> -> ValidatorKey (power 0: leaves)
ENABLE_HEIGHT_KEY = b"enable_height"
COMMIT_FLAG = 2
"""BlockIDFlag COMMIT: the validator precommitted the block."""
EXTENSION = b"llmnet/beacon/v1"
"""What every validator's app puts in its precommit's vote extension (CometBFT signs it)."""
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


def seed_of(beacon: pb.Beacon) -> bytes:
    """sha256 over the signatures in validator-address order: the same whatever order they came in."""
    votes = sorted(beacon.votes, key=lambda v: v.validator_address)
    return hashlib.sha256(b"llmnet/beacon-seed" + beacon.height.to_bytes(8, "big") +
                          b"".join(v.validator_address + v.extension_signature for v in votes)).digest()


def from_last_commit(votes: list[tuple[bytes, bytes]], height: int, round_: int) -> pb.Beacon:
    """The beacon a proposer builds from the previous height's commit: (validator address, extension
    signature) of every vote it has that carries one, in address order."""
    return pb.Beacon(height=height, round=round_, votes=[
        pb.BeaconVote(validator_address=a, extension_signature=s) for a, s in sorted(votes) if s])
