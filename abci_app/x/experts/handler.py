"""Experts message handlers: message -> keeper."""

from __future__ import annotations

from abci_app.crypto import parse_address
from abci_app.msgs import MsgSpec
from abci_app.x.experts.keeper import ExpertsKeeper
from abci_app.x.experts.types import validate_add_domain, validate_address_only, validate_profile
from wire.llmnet.experts.v1 import experts_pb2 as pb


def msg_specs(keeper: ExpertsKeeper) -> list[MsgSpec]:
    return [
        MsgSpec(pb.MsgRegisterExpert, lambda m: m.address, validate_profile, keeper.register),
        MsgSpec(pb.MsgUpdateExpert, lambda m: m.address, validate_profile, keeper.update),
        MsgSpec(pb.MsgUnbondExpert, lambda m: m.address, validate_address_only,
                lambda ctx, m: keeper.unbond(ctx, parse_address(m.address))),
        MsgSpec(pb.MsgUnjail, lambda m: m.address, validate_address_only,
                lambda ctx, m: keeper.unjail(ctx, parse_address(m.address))),
        MsgSpec(pb.MsgAddDomain, lambda m: m.authority, validate_add_domain,
                lambda ctx, m: keeper.add_domain(ctx, m.authority, m.domain)),
    ]
