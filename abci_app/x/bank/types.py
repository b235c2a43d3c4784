"""Bank module: keys, errors, events and the stateless checks of its messages."""

from __future__ import annotations

from abci_app.crypto import check_address
from abci_app.errors import AppError
from abci_app.events import Event, event
from wire.llmnet.bank.v1 import bank_pb2

STORE = "bank"
BALANCE_PREFIX = b"bal/"
SUPPLY_KEY = b"supply"
MAX_AMOUNT = (1 << 63) - 1
DEFAULT_DENOM = "ullm"

EV_TRANSFER = "transfer"
"""Tokens moved: sender, recipient, amount (with denom)."""
EV_BURN = "burn"
"""Tokens destroyed (slashing): burner, amount."""


class BankError(AppError):
    codespace = "bank"


class ErrInsufficientFunds(BankError):
    code = 2


class ErrInvalidAmount(BankError):
    code = 4


class ErrSendDisabled(BankError):
    code = 5


def balance_key(address: bytes) -> bytes:
    return BALANCE_PREFIX + address


def default_params() -> bank_pb2.Params:
    return bank_pb2.Params(denom=DEFAULT_DENOM, send_enabled=True)


def validate_send(msg: bank_pb2.MsgSend) -> None:
    check_address("from_address", msg.from_address)
    check_address("to_address", msg.to_address)
    if msg.amount == 0 or msg.amount > MAX_AMOUNT:
        raise ErrInvalidAmount(f"amount must be between 1 and {MAX_AMOUNT}, got {msg.amount}")


def transfer_event(sender: str, recipient: str, amount: int, denom: str) -> Event:
    return event(EV_TRANSFER, sender=sender, recipient=recipient, amount=f"{amount}{denom}")
