"""Inference genesis: params (defaults filled in)."""

from __future__ import annotations

from typing import Any

from abci_app.context import Ctx
from abci_app.fixedpoint import PPM
from abci_app.params import from_genesis
from abci_app.x.inference.keeper import InferenceKeeper
from abci_app.x.inference.types import MAX_SCORE, MIN_ANSWER_BYTES, default_params, query_life_blocks


def init_genesis(ctx: Ctx, keeper: InferenceKeeper, section: dict[str, Any]) -> None:
    params = from_genesis(section, default_params())
    if params.scorers < 1 or params.max_k < 1 or params.max_rounds < 1:
        raise ValueError("genesis inference.params: scorers, max_k and max_rounds must be at least 1")
    if params.commit_blocks < 1 or params.reveal_blocks < 1:
        raise ValueError("genesis inference.params: windows must be at least one block")
    if params.scorer_share_ppm > PPM or params.quality_threshold > MAX_SCORE:
        raise ValueError(f"genesis inference.params: scorer_share_ppm <= {PPM} and quality_threshold <= {MAX_SCORE}")
    if params.max_answer_bytes < MIN_ANSWER_BYTES:
        raise ValueError(f"genesis inference.params.max_answer_bytes must be at least {MIN_ANSWER_BYTES}")
    if params.max_closes_per_block < 1:
        raise ValueError("genesis inference.params.max_closes_per_block must be at least 1")
    if params.evidence_max_age_blocks < 1 or not 0 < params.max_scorer_weight_ppm <= PPM:
        raise ValueError("genesis inference.params: evidence_max_age_blocks >= 1 and 0 < max_scorer_weight_ppm <= "
                         f"{PPM}")
    punishable = query_life_blocks(params) + params.evidence_max_age_blocks
    unbonding = keeper.experts.params(ctx).unbonding_blocks
    if unbonding <= punishable:
        raise ValueError(f"genesis: experts.params.unbonding_blocks ({unbonding}) must exceed a query's life plus "
                         f"the evidence age ({punishable} blocks), or an expert could unbond out of a slash")
    keeper.set_params(ctx, params)
