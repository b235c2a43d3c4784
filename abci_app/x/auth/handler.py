"""Auth has no messages of its own: its rules are the ante handler (ante.py) that every tx passes."""

from __future__ import annotations

from abci_app.msgs import MsgSpec
from abci_app.x.auth.keeper import AuthKeeper


def msg_specs(keeper: AuthKeeper) -> list[MsgSpec]:
    return []
