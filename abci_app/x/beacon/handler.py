"""The beacon has no messages: its data is the beacon pseudo-tx the proposer puts first in a block."""

from __future__ import annotations

from abci_app.msgs import MsgSpec
from abci_app.x.beacon.keeper import BeaconKeeper


def msg_specs(keeper: BeaconKeeper) -> list[MsgSpec]:
    return []
