"""Bank state access and transitions. Every move keeps the total supply unchanged."""

from __future__ import annotations

from abci_app import params
from abci_app.context import Ctx
from abci_app.crypto import format_address
from abci_app.events import event
from abci_app.x.bank.types import (
    EV_BURN,
    MAX_AMOUNT,
    STORE,
    SUPPLY_KEY,
    ErrInsufficientFunds,
    ErrInvalidAmount,
    balance_key,
    transfer_event,
)
from wire.llmnet.bank.v1 import bank_pb2


def _amount(raw: bytes | None) -> int:
    return 0 if raw is None else bank_pb2.Balance.FromString(raw).amount


class BankKeeper:
    def params(self, ctx: Ctx) -> bank_pb2.Params:
        return params.load(ctx, STORE, bank_pb2.Params)

    def set_params(self, ctx: Ctx, value: bank_pb2.Params) -> None:
        params.save(ctx, STORE, value)

    def denom(self, ctx: Ctx) -> str:
        return self.params(ctx).denom

    def balance(self, ctx: Ctx, address: bytes) -> int:
        return _amount(ctx.kv(STORE).get(balance_key(address)))

    def supply(self, ctx: Ctx) -> int:
        return _amount(ctx.kv(STORE).get(SUPPLY_KEY))

    def _set_balance(self, ctx: Ctx, address: bytes, amount: int) -> None:
        kv = ctx.kv(STORE)
        if amount == 0:
            kv.delete(balance_key(address))
        else:
            kv.set(balance_key(address), bank_pb2.Balance(amount=amount).SerializeToString())

    def move(self, ctx: Ctx, sender: bytes, recipient: bytes, amount: int) -> None:
        """Move amount between accounts. Raises ErrInsufficientFunds or ErrInvalidAmount."""
        if amount <= 0:
            raise ErrInvalidAmount(f"amount must be positive, got {amount}")
        have = self.balance(ctx, sender)
        if have < amount:
            raise ErrInsufficientFunds(
                f"{format_address(sender)} has {have}{self.denom(ctx)}, needs {amount}{self.denom(ctx)}"
            )
        self._set_balance(ctx, sender, have - amount)
        self._set_balance(ctx, recipient, self.balance(ctx, recipient) + amount)
        ctx.emit(transfer_event(format_address(sender), format_address(recipient), amount, self.denom(ctx)))

    def burn(self, ctx: Ctx, holder: bytes, amount: int) -> None:
        """Destroy amount held by holder; the supply shrinks by the same amount."""
        if amount <= 0:
            return
        have = self.balance(ctx, holder)
        if have < amount:
            raise ErrInsufficientFunds(f"{format_address(holder)} has {have}, cannot burn {amount}")
        self._set_balance(ctx, holder, have - amount)
        ctx.kv(STORE).set(SUPPLY_KEY, bank_pb2.Balance(amount=self.supply(ctx) - amount).SerializeToString())
        ctx.emit(event(EV_BURN, burner=format_address(holder), amount=f"{amount}{self.denom(ctx)}"))

    def mint_genesis(self, ctx: Ctx, address: bytes, amount: int) -> None:
        """Create coins at genesis only; the supply grows by the same amount."""
        supply = self.supply(ctx) + amount
        if amount <= 0 or supply > MAX_AMOUNT:
            raise ValueError(f"genesis balance {amount} is not positive or overflows the supply")
        self._set_balance(ctx, address, self.balance(ctx, address) + amount)
        ctx.kv(STORE).set(SUPPLY_KEY, bank_pb2.Balance(amount=supply).SerializeToString())
