"""Beacon genesis: the height vote extensions start at, as InitChain hands it over (the app puts it in this
module's section; it is not part of app_state). The validators come from x/validators' genesis."""

from __future__ import annotations

from typing import Any

from abci_app.context import Ctx
from abci_app.x.beacon.keeper import BeaconKeeper


def init_genesis(ctx: Ctx, keeper: BeaconKeeper, section: dict[str, Any]) -> None:
    keeper.set_enable_height(ctx, int(section.get("vote_extensions_enable_height", 0)))
