"""Auth state access."""

from __future__ import annotations

from abci_app import params
from abci_app.context import Ctx
from abci_app.crypto import format_address
from abci_app.x.auth.types import CHAIN_ID_KEY, STORE, account_key
from wire.llmnet.auth.v1 import auth_pb2


class AuthKeeper:
    def params(self, ctx: Ctx) -> auth_pb2.Params:
        return params.load(ctx, STORE, auth_pb2.Params)

    def set_params(self, ctx: Ctx, value: auth_pb2.Params) -> None:
        params.save(ctx, STORE, value)

    def chain_id(self, ctx: Ctx) -> str:
        raw = ctx.state.get(STORE, CHAIN_ID_KEY)
        return "" if raw is None else raw.decode()

    def set_chain_id(self, ctx: Ctx, chain_id: str) -> None:
        ctx.kv(STORE).set(CHAIN_ID_KEY, chain_id.encode())

    def account(self, ctx: Ctx, address: bytes) -> auth_pb2.Account:
        """The stored account, or a fresh one at sequence 0 if none is stored."""
        raw = ctx.kv(STORE).get(account_key(address))
        if raw is None:
            return auth_pb2.Account(address=format_address(address))
        return auth_pb2.Account.FromString(raw)

    def has_account(self, ctx: Ctx, address: bytes) -> bool:
        return ctx.kv(STORE).get(account_key(address)) is not None

    def set_account(self, ctx: Ctx, address: bytes, account: auth_pb2.Account) -> None:
        ctx.kv(STORE).set(account_key(address), account.SerializeToString())
