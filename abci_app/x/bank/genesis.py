"""Bank genesis: params and the initial balances, which define the total supply."""

from __future__ import annotations

from typing import Any

from abci_app.context import Ctx
from abci_app.crypto import parse_address
from abci_app.params import from_genesis
from abci_app.x.bank.keeper import BankKeeper
from abci_app.x.bank.types import default_params


def init_genesis(ctx: Ctx, keeper: BankKeeper, section: dict[str, Any]) -> None:
    params = from_genesis(section, default_params())
    if not params.denom:
        raise ValueError("genesis bank.params.denom must not be empty")
    keeper.set_params(ctx, params)
    for i, entry in enumerate(section.get("balances", [])):
        try:
            address = parse_address(entry["address"])
            amount = int(entry["amount"])
        except (KeyError, ValueError, TypeError) as exc:
            raise ValueError(f"genesis bank.balances[{i}] is invalid: {exc}") from None
        keeper.mint_genesis(ctx, address, amount)
