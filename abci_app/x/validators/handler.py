"""Validators message handlers: message -> keeper. Every message is signed by the validator's operator."""

from __future__ import annotations

from abci_app.msgs import MsgSpec
from abci_app.x.validators.keeper import ValidatorsKeeper
from abci_app.x.validators.types import (
    validate_bond,
    validate_create,
    validate_edit,
    validate_operator_only,
    validate_unbond,
)
from wire.llmnet.validators.v1 import validators_pb2 as pb


def msg_specs(keeper: ValidatorsKeeper) -> list[MsgSpec]:
    return [
        MsgSpec(pb.MsgCreateValidator, lambda m: m.operator, validate_create, keeper.create),
        MsgSpec(pb.MsgEditValidator, lambda m: m.operator, validate_edit, keeper.edit),
        MsgSpec(pb.MsgBondValidator, lambda m: m.operator, validate_bond, keeper.bond),
        MsgSpec(pb.MsgUnbondValidator, lambda m: m.operator, validate_unbond, keeper.unbond),
        MsgSpec(pb.MsgUnjailValidator, lambda m: m.operator, validate_operator_only, keeper.unjail),
    ]
