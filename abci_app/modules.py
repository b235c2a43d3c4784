"""The app's modules and how they plug in, in one table (as a Cosmos app's module manager).

Every module under x/ has the same files: types.py (keys, params, errors, event names), keeper.py
(state access and transitions), handler.py (`msg_specs`: message -> keeper), query.py (a Querier with
`routes`), genesis.py (`init_genesis`). The app registers them all the same way. Order matters and
is part of consensus: genesis runs, and begin- and end-block work happen, in table order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message

from abci_app.context import Ctx
from abci_app.msgs import MsgSpec
from abci_app.queries import Route, Routes
from abci_app.x.auth import genesis as auth_genesis
from abci_app.x.auth import handler as auth_handler
from abci_app.x.auth import query as auth_query
from abci_app.x.auth.keeper import AuthKeeper
from abci_app.x.auth.types import STORE as AUTH
from abci_app.x.bank import genesis as bank_genesis
from abci_app.x.bank import handler as bank_handler
from abci_app.x.bank import query as bank_query
from abci_app.x.bank.keeper import BankKeeper
from abci_app.x.bank.types import STORE as BANK
from abci_app.x.beacon import genesis as beacon_genesis
from abci_app.x.beacon import handler as beacon_handler
from abci_app.x.beacon import query as beacon_query
from abci_app.x.beacon.keeper import BeaconKeeper
from abci_app.x.beacon.types import STORE as BEACON
from abci_app.x.experts import genesis as experts_genesis
from abci_app.x.experts import handler as experts_handler
from abci_app.x.experts import query as experts_query
from abci_app.x.experts.keeper import ExpertsKeeper
from abci_app.x.experts.types import STORE as EXPERTS
from abci_app.x.inference import genesis as inference_genesis
from abci_app.x.inference import handler as inference_handler
from abci_app.x.inference import query as inference_query
from abci_app.x.inference.keeper import InferenceKeeper
from abci_app.x.inference.types import STORE as INFERENCE
from abci_app.x.validators import genesis as validators_genesis
from abci_app.x.validators import handler as validators_handler
from abci_app.x.validators import query as validators_query
from abci_app.x.validators.keeper import ValidatorsKeeper
from abci_app.x.validators.types import STORE as VALIDATORS
from wire.llmnet.query.v1 import query_pb2


@dataclass(frozen=True)
class Module:
    name: str
    """Its store's name, its genesis section and its field in the Params query."""
    msgs: Sequence[MsgSpec]
    queries: Routes
    init_genesis: Callable[[Ctx, dict[str, Any]], None]
    params: Callable[[Ctx], Message] | None
    """None for a module without params of its own."""
    begin_block: Callable[[Ctx], None] | None = None
    end_block: Callable[[Ctx], None] | None = None


@dataclass(frozen=True)
class Keepers:
    auth: AuthKeeper
    bank: BankKeeper
    experts: ExpertsKeeper
    inference: InferenceKeeper
    beacon: BeaconKeeper
    validators: ValidatorsKeeper

    @classmethod
    def new(cls) -> Keepers:
        auth, bank, beacon = AuthKeeper(), BankKeeper(), BeaconKeeper()
        experts = ExpertsKeeper(bank)
        return cls(auth, bank, experts, InferenceKeeper(auth, bank, experts), beacon, ValidatorsKeeper(bank, beacon))


def modules(k: Keepers) -> list[Module]:
    return [
        Module(AUTH, auth_handler.msg_specs(k.auth),
               auth_query.Querier(k.auth, lambda ctx, a: k.bank.balance(ctx, a) > 0).routes(),
               lambda ctx, s: auth_genesis.init_genesis(ctx, k.auth, s), k.auth.params),
        Module(BANK, bank_handler.msg_specs(k.bank), bank_query.Querier(k.bank).routes(),
               lambda ctx, s: bank_genesis.init_genesis(ctx, k.bank, s), k.bank.params),
        Module(EXPERTS, experts_handler.msg_specs(k.experts), experts_query.Querier(k.experts).routes(),
               lambda ctx, s: experts_genesis.init_genesis(ctx, k.experts, s), k.experts.params,
               end_block=k.experts.end_block),
        Module(INFERENCE, inference_handler.msg_specs(k.inference), inference_query.Querier(k.inference).routes(),
               lambda ctx, s: inference_genesis.init_genesis(ctx, k.inference, s), k.inference.params,
               begin_block=k.inference.begin_block, end_block=k.inference.end_block),
        Module(BEACON, beacon_handler.msg_specs(k.beacon), beacon_query.Querier(k.beacon).routes(),
               lambda ctx, s: beacon_genesis.init_genesis(ctx, k.beacon, s), None, begin_block=k.beacon.begin_block),
        Module(VALIDATORS, validators_handler.msg_specs(k.validators), validators_query.Querier(k.validators).routes(),
               lambda ctx, s: validators_genesis.init_genesis(ctx, k.validators, s), k.validators.params,
               begin_block=k.validators.begin_block, end_block=k.validators.end_block),
    ]


def params_routes(table: Sequence[Module]) -> Routes:
    """The Params query answers with every module's params, each under the module's name."""
    def params(ctx: Ctx, req: query_pb2.ParamsRequest) -> query_pb2.ParamsResponse:
        resp = query_pb2.ParamsResponse(height=ctx.env.height)
        for m in table:
            if m.params is not None:
                getattr(resp, m.name).CopyFrom(m.params(ctx))
        return resp

    return {"Params": Route(query_pb2.ParamsRequest, query_pb2.ParamsResponse, params)}
