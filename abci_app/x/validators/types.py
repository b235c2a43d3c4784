"""Validators module: keys, errors, events, defaults and stateless message checks."""

from __future__ import annotations

import re

from abci_app.crypto import PUBKEY_LEN, check_address, module_address
from abci_app.errors import AppError, Missing
from wire.llmnet.validators.v1 import validators_pb2 as pb

STORE = "validators"
VALIDATOR_PREFIX = b"val/"  # val/<consensus address> -> Validator
OPERATOR_PREFIX = b"opr/"  # opr/<operator address> -> consensus address
RANK_PREFIX = b"rank/"  # rank/<be8(MAX_BOND - bond)><consensus address>: eligible validators, highest bond first
SET_PREFIX = b"set/"  # set/<consensus address>: validators with power > 0 (what CometBFT has been told)
SIGNING_PREFIX = b"sign/"  # sign/<consensus address> -> SigningInfo
MISSED_PREFIX = b"miss/"  # miss/<consensus address><be8 height>: it did not sign the block before that height
RELEASE_PREFIX = b"rel/"  # HeightQueue rel/<be8 height><consensus address>: bond released then
RELEASE_AMOUNT_PREFIX = b"ramt/"  # ramt/<be8 height><consensus address> -> be8 amount
BONDED_POOL = module_address("validators/bonded")
UNBONDING_POOL = module_address("validators/unbonding")
UNCLAIMED_FEES = module_address("validators/unclaimed-fees")
"""Fee shares nobody may take (a fixed genesis validator's, a jailed one's): set apart for good, so the supply
stays whole and nothing piles up for whoever bonds first."""
MAX_BOND = (1 << 63) - 1
MAX_MONIKER = 64
MAX_DETAILS = 280
MAX_VALIDATORS_HARD = 1000
"""The hard bound; params.max_validators may be lower (CometBFT's set must stay small enough to gossip)."""
MAX_RELEASES_PER_BLOCK = 200
MAX_TOTAL_VOTING_POWER = ((1 << 63) - 1) // 8
"""CometBFT's MaxTotalVotingPower: updates taking the total above it are refused (and the chain halts)."""
MAX_BLOCKS_PARAM = 1 << 40
DUPLICATE_VOTE = 1
LIGHT_CLIENT_ATTACK = 2

Status = pb.ValidatorStatus

EV_CREATED = "validator_created"
EV_EDITED = "validator_edited"
EV_BONDED = "validator_bonded"
EV_UNBONDING = "validator_unbonding"
EV_RELEASED = "validator_released"
EV_UNJAILED = "validator_unjailed"
EV_JAILED = "validator_jailed"
EV_SLASHED = "validator_slashed"
EV_POWER = "validator_power"
"""CometBFT is told a new power: address, operator, power (takes effect two heights later)."""
EV_FEES = "fees_distributed"
"""The fees collected were shared by the previous height's validators: amount (paid), unclaimed, validators."""


class ValidatorsError(AppError):
    codespace = "validators"


class ErrUnknownValidator(ValidatorsError, Missing):
    code = 2


class ErrAlreadyExists(ValidatorsError):
    code = 3


class ErrBondTooLow(ValidatorsError):
    code = 4


class ErrInvalidValidator(ValidatorsError):
    code = 5


class ErrNotJailed(ValidatorsError):
    code = 6


class ErrStillJailed(ValidatorsError):
    code = 7


class ErrNotActive(ValidatorsError):
    code = 8


def key_proof_bytes(chain_id: str, operator: str) -> bytes:
    """What a consensus key signs to be bonded by operator on this chain (MsgCreateValidator.key_proof)."""
    return b"llmnet/validator-key\x00" + chain_id.encode() + b"\x00" + operator.encode()


def be8(n: int) -> bytes:
    return n.to_bytes(8, "big")


def validator_key(address: bytes) -> bytes:
    return VALIDATOR_PREFIX + address


def operator_key(operator: bytes) -> bytes:
    return OPERATOR_PREFIX + operator


def rank_key(bond: int, address: bytes) -> bytes:
    return RANK_PREFIX + be8(MAX_BOND - bond) + address


MAX_SIGNED_BLOCKS_WINDOW = 100_000
"""Cosmos chains use 10,000-30,000. A jailing deletes the validator's missed heights in the window, up to this
many keys in one block. (When liveness was a bitmap rewritten every block, the old bound, MAX_BLOCKS_PARAM, let a
genesis ask for a 128 GiB one: every node stopped at block 1.)"""


def default_params() -> pb.Params:
    return pb.Params(
        min_bond=10_000_000,
        power_reduction=1_000_000,
        max_validators=100,
        unbonding_blocks=200,
        signed_blocks_window=100,
        min_signed_ppm=500_000,
        jail_blocks=50,
        downtime_slash_ppm=10_000,
        double_sign_slash_ppm=50_000,
    )


def check_params(params: pb.Params) -> None:
    """Genesis refuses params the module could not work with."""
    if params.power_reduction == 0 or params.min_bond < params.power_reduction:
        raise ValueError("genesis validators.params: need 0 < power_reduction <= min_bond")
    if not 1 <= params.max_validators <= MAX_VALIDATORS_HARD:
        raise ValueError(f"genesis validators.params.max_validators must be 1..{MAX_VALIDATORS_HARD}")
    if params.max_validators * (MAX_BOND // params.power_reduction) > MAX_TOTAL_VOTING_POWER:
        raise ValueError("genesis validators.params: power_reduction is so small that max_validators could hold more "
                         "than CometBFT's MaxTotalVotingPower")
    if params.signed_blocks_window > MAX_SIGNED_BLOCKS_WINDOW:
        raise ValueError(f"genesis validators.params.signed_blocks_window must be at most {MAX_SIGNED_BLOCKS_WINDOW}: "
                         "a jailing deletes up to that many missed heights in one block")
    for name in ("signed_blocks_window", "unbonding_blocks", "jail_blocks"):
        if not (0 if name == "jail_blocks" else 1) <= getattr(params, name) <= MAX_BLOCKS_PARAM:
            raise ValueError(f"genesis validators.params.{name} must be 1..{MAX_BLOCKS_PARAM} (jail_blocks may be 0)")
    if max(params.min_signed_ppm, params.downtime_slash_ppm, params.double_sign_slash_ppm) > 1_000_000:
        raise ValueError("genesis validators.params: *_ppm values must be at most 1000000")


UNPRINTABLE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u00a0\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u1680\u180e"
    "\u2000-\u200f\u2028-\u202f\u205f-\u206f\u3000\ud800-\uf8ff\ufeff\ufff9-\ufffb\U000110bd\U000110cd"
    "\U00013430-\U0001343f\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0000-\U000e007f"
    "\U000f0000-\U0010ffff]")
"""Controls, spaces other than " ", invisible format characters (zero-width, bidirectional, tags),
surrogates and private use: what a name or description must not hide or forge (a no-break space makes
"node A" look like "node A"). A literal table, not str.isprintable, whose Unicode tables differ between
Python versions (a character new in Unicode 15 was refused by Python 3.11 and taken by 3.12: nodes on the
two would have split on one MsgCreateValidator). Unassigned code points pass, alike on every node."""


def printable(text: str) -> bool:
    return UNPRINTABLE.search(text) is None


def check_description(moniker: str, details: str) -> None:
    if not 1 <= len(moniker) <= MAX_MONIKER or not printable(moniker):
        raise ErrInvalidValidator(f"moniker must be 1-{MAX_MONIKER} printable characters")
    if len(details) > MAX_DETAILS or not printable(details):
        raise ErrInvalidValidator(f"details must be at most {MAX_DETAILS} printable characters")


def validate_create(msg: pb.MsgCreateValidator) -> None:
    check_address("operator", msg.operator)
    if len(msg.pub_key) != PUBKEY_LEN:
        raise ErrInvalidValidator(f"pub_key must be a {PUBKEY_LEN}-byte ed25519 key, got {len(msg.pub_key)} bytes")
    check_description(msg.moniker, msg.details)
    if msg.bond == 0 or msg.bond > MAX_BOND:
        raise ErrBondTooLow(f"bond must be between 1 and {MAX_BOND}")


def validate_edit(msg: pb.MsgEditValidator) -> None:
    check_address("operator", msg.operator)
    check_description(msg.moniker, msg.details)


def validate_bond(msg: pb.MsgBondValidator) -> None:
    check_address("operator", msg.operator)
    if msg.amount == 0 or msg.amount > MAX_BOND:
        raise ErrBondTooLow(f"amount must be between 1 and {MAX_BOND}")


def validate_unbond(msg: pb.MsgUnbondValidator) -> None:
    check_address("operator", msg.operator)
    if msg.amount > MAX_BOND:
        raise ErrBondTooLow(f"amount must be at most {MAX_BOND}")


def validate_operator_only(msg: pb.MsgUnjailValidator) -> None:
    check_address("operator", msg.operator)
