"""Beacon genesis: CometBFT's genesis validators and vote-extension height, as InitChain hands them over
(the app puts them in this module's section; they are not part of app_state)."""

from __future__ import annotations

from typing import Any

from abci_app.context import Ctx
from abci_app.crypto import address_bytes
from abci_app.x.beacon.keeper import BeaconKeeper
from wire.llmnet.beacon.v1 import beacon_pb2 as pb


def init_genesis(ctx: Ctx, keeper: BeaconKeeper, section: dict[str, Any]) -> None:
    keeper.set_enable_height(ctx, int(section.get("vote_extensions_enable_height", 0)))
    for public_key, power in section.get("validators", []):
        if len(public_key) != 32 or power <= 0:
            raise ValueError("genesis validators must be ed25519 keys with positive power")
        keeper.set_validator(ctx, pb.ValidatorKey(address=address_bytes(public_key), pub_key=public_key,
                                                  power=power))
