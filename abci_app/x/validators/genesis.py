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
    ErrInvalidValidator,
    Status,
    check_description,
    check_params,
    default_params,
)
from wire.llmnet.validators.v1 import validators_pb2 as pb

MIN_TOTAL_POWER = 3
"""Each block may move a third of the power (power.py): below 3 nothing could ever change."""


def init_genesis(ctx: Ctx, keeper: ValidatorsKeeper, section: dict[str, Any]) -> None:
    params = from_genesis(section, default_params())
    check_params(params)
    keeper.set_params(ctx, params)
    bonded = section.get("validators") or []
    for i, entry in enumerate(bonded):
        keeper.add_genesis(ctx, _bonded(i, entry, params))
    if not bonded:
        for pub_key, power in section.get("consensus", []):
            if len(pub_key) != PUBKEY_LEN or power <= 0:
                raise ValueError("genesis validators must be ed25519 keys with positive power")
            keeper.add_genesis(ctx, pb.Validator(pub_key=pub_key, address=address_bytes(pub_key), moniker="genesis",
                                                 status=Status.VALIDATOR_STATUS_ACTIVE, fixed_power=power,
                                                 created_height=ctx.env.height))
    total = keeper.seat_genesis_set(ctx)
    if 0 < total < MIN_TOTAL_POWER:  # none at all only suits harnesses that drive the app without CometBFT
        raise ValueError(f"genesis validators hold {total} voting power; at least {MIN_TOTAL_POWER} is needed")
    if not bonded:
        ctx.validator_updates.clear()  # CometBFT already has these from genesis.json


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
