"""Bank message handlers: message -> keeper."""

from __future__ import annotations

from abci_app.context import Ctx
from abci_app.crypto import parse_address
from abci_app.msgs import MsgSpec
from abci_app.x.bank.keeper import BankKeeper
from abci_app.x.bank.types import ErrSendDisabled, validate_send
from wire.llmnet.bank.v1 import bank_pb2


def msg_specs(keeper: BankKeeper) -> list[MsgSpec]:
    def send(ctx: Ctx, msg: bank_pb2.MsgSend) -> None:
        if not keeper.params(ctx).send_enabled:
            raise ErrSendDisabled("transfers are disabled by the bank.send_enabled param")
        keeper.move(ctx, parse_address(msg.from_address), parse_address(msg.to_address), msg.amount)

    return [MsgSpec(cls=bank_pb2.MsgSend, signer=lambda m: m.from_address, validate=validate_send, handle=send)]
