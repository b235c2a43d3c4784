"""Inference genesis: params (defaults filled in)."""

from __future__ import annotations

from typing import Any

from abci_app.context import Ctx
from abci_app.fixedpoint import PPM
from abci_app.params import from_genesis
from abci_app.x.inference.keeper import InferenceKeeper
from abci_app.x.inference.types import MAX_SCORE, default_params


def init_genesis(ctx: Ctx, keeper: InferenceKeeper, section: dict[str, Any]) -> None:
    params = from_genesis(section, default_params())
    if params.scorers < 1 or params.max_k < 1 or params.max_rounds < 1:
        raise ValueError("genesis inference.params: scorers, max_k and max_rounds must be at least 1")
    if params.commit_blocks < 1 or params.reveal_blocks < 1:
        raise ValueError("genesis inference.params: windows must be at least one block")
    if params.scorer_share_ppm > PPM or params.quality_threshold > MAX_SCORE:
        raise ValueError(f"genesis inference.params: scorer_share_ppm <= {PPM} and quality_threshold <= {MAX_SCORE}")
    keeper.set_params(ctx, params)
