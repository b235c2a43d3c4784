"""Auth genesis: params (defaults filled in) and the chain id."""

from __future__ import annotations

from typing import Any

from abci_app.context import Ctx
from abci_app.params import from_genesis
from abci_app.tx import MAX_GAS_LIMIT
from abci_app.x.auth.keeper import AuthKeeper
from abci_app.x.auth.types import default_params


def init_genesis(ctx: Ctx, keeper: AuthKeeper, section: dict[str, Any]) -> None:
    params = from_genesis(section, default_params())
    if params.max_tx_bytes == 0 or params.max_block_gas == 0:
        raise ValueError("genesis auth.params.max_tx_bytes and max_block_gas must be positive")
    if params.max_block_gas > MAX_GAS_LIMIT:  # a tx's gas reaches ABCI as an int64: beyond, no result could be built
        raise ValueError(f"genesis auth.params.max_block_gas must be at most {MAX_GAS_LIMIT}")
    keeper.set_params(ctx, params)
    keeper.set_chain_id(ctx, ctx.env.chain_id)
