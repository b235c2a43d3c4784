"""Experts genesis: params (defaults filled in)."""

from __future__ import annotations

from typing import Any

from abci_app.context import Ctx
from abci_app.fixedpoint import PPM
from abci_app.params import from_genesis
from abci_app.x.experts.keeper import ExpertsKeeper
from abci_app.x.experts.types import check_domains, default_params


def init_genesis(ctx: Ctx, keeper: ExpertsKeeper, section: dict[str, Any]) -> None:
    params = from_genesis(section, default_params())
    if params.reputation_scale == 0 or params.initial_reputation > params.reputation_scale:
        raise ValueError("genesis experts.params: need 0 < initial_reputation <= reputation_scale")
    if max(params.alpha_ppm, params.slash_ppm, params.reporter_share_ppm) > PPM:
        raise ValueError(f"genesis experts.params: *_ppm values must be at most {PPM}")
    if params.max_releases_per_block < 1 or not 1 <= params.default_capacity <= params.max_capacity:
        raise ValueError("genesis experts.params: max_releases_per_block >= 1 and 1 <= default_capacity <= "
                         "max_capacity")
    check_domains(sorted(params.domains))
    keeper.set_params(ctx, params)
