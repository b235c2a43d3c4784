"""Validators genesis: params, and the first validator set.

app_state.validators.validators lists bonded validators ({operator, pub_key (base64 ed25519), moniker,
details, bond}); their bonds come out of the operators' genesis balances and the app hands CometBFT that set
in InitChain (genesis.json's own list is then ignored). Without that list, the validators genesis.json names
(InitChain passes them as "consensus") become fixed validators: no operator, their power kept for good.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from abci_app.context import Ctx
from abci_app.crypto import PUBKEY_LEN, address_bytes, parse_address
from abci_app.params import from_genesis
from abci_app.x.validators.keeper import ValidatorsKeeper
from abci_app.x.validators.types import (
    MAX_BOND,
    ErrInvalidValidator,
    Status,
    check_description,
    check_params,
    default_params,
)
from wire.llmnet.validators.v1 import validators_pb2 as pb

MAX_EVIDENCE_AGE_NS = 1_000_000_000
"""What `llmnetd init` writes for evidence.max_age_duration: the blocks decide (max_age_num_blocks, at most
unbonding_blocks). A longer duration would keep evidence valid after a fast chain had paid the bond back."""
MIN_TOTAL_POWER = 3
"""Each block may move a third of the power (power.py): below 3 nothing could ever change."""


def init_genesis(ctx: Ctx, keeper: ValidatorsKeeper, section: dict[str, Any]) -> None:
    params = from_genesis(section, default_params())
    check_params(params)
    keeper.set_params(ctx, params)
    evidence_age = int(section.get("evidence_max_age_blocks", 0))
    if params.unbonding_blocks < evidence_age:
        raise ValueError(f"genesis validators.params.unbonding_blocks ({params.unbonding_blocks}) must be at least "
                         f"consensus_params.evidence.max_age_num_blocks ({evidence_age}): a bond paid back before "
                         f"evidence expires escapes its slash")
    evidence_ns = int(section.get("evidence_max_age_ns", 0))
    if evidence_ns > MAX_EVIDENCE_AGE_NS:
        raise ValueError(f"consensus_params.evidence.max_age_duration ({evidence_ns} ns) must be at most "
                         f"{MAX_EVIDENCE_AGE_NS} ns: CometBFT keeps evidence while either of its ages is within "
                         f"bounds, and the unbonding is counted in blocks (unbonding_blocks), not in time")
    bonded = section.get("validators") or []
    for i, entry in enumerate(bonded):
        keeper.add_genesis(ctx, _bonded(i, entry, params))
    if not bonded:
        _add_fixed(ctx, keeper, section.get("consensus", []), params)
    total = keeper.seat_genesis_set(ctx)
    if 0 < total < MIN_TOTAL_POWER:  # none at all only suits harnesses that drive the app without CometBFT
        raise ValueError(f"genesis validators hold {total} voting power; at least {MIN_TOTAL_POWER} is needed")
    if not bonded:
        ctx.validator_updates.clear()  # CometBFT already has these from genesis.json


def _add_fixed(ctx: Ctx, keeper: ValidatorsKeeper, consensus: list[tuple[bytes, int]], params: pb.Params) -> None:
    """genesis.json's validators as they are: every one of them is seated, since CometBFT has them all."""
    if len(consensus) > params.max_validators:
        raise ValueError(f"genesis.json names {len(consensus)} validators, over validators.params.max_validators")
    for pub_key, power in consensus:
        if len(pub_key) != PUBKEY_LEN or power <= 0 or power * params.power_reduction > MAX_BOND:
            raise ValueError("genesis validators must be ed25519 keys with positive power (at most MAX_BOND in "
                             "bond terms)")
        keeper.add_genesis(ctx, pb.Validator(pub_key=pub_key, address=address_bytes(pub_key), moniker="genesis",
                                             status=Status.VALIDATOR_STATUS_ACTIVE, fixed_power=power,
                                             created_height=ctx.env.height))


def _bonded(i: int, entry: dict[str, Any], params: pb.Params) -> pb.Validator:
    where = f"genesis validators.validators[{i}]"
    try:
        operator = str(entry["operator"])
        parse_address(operator)
        pub_key = base64.b64decode(str(entry["pub_key"]), validate=True)
        bond = int(entry["bond"])
        moniker, details = str(entry.get("moniker", f"validator{i}")), str(entry.get("details", ""))
    except (KeyError, ValueError, TypeError, binascii.Error) as exc:
        raise ValueError(f"{where} is invalid: {exc}") from None
    if len(pub_key) != PUBKEY_LEN:
        raise ValueError(f"{where}.pub_key must be a base64 {PUBKEY_LEN}-byte ed25519 key")
    if bond < params.min_bond:
        raise ValueError(f"{where}.bond {bond} is below min_bond {params.min_bond}")
    try:
        check_description(moniker, details)
    except ErrInvalidValidator as exc:
        raise ValueError(f"{where}: {exc.log}") from None
    return pb.Validator(operator=operator, pub_key=pub_key, address=address_bytes(pub_key), moniker=moniker,
                        details=details, bond=bond, status=Status.VALIDATOR_STATUS_ACTIVE,
                        created_height=0)
