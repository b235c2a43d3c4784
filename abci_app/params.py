"""Module params: stored as protobuf under b"params" in the module's own store; genesis JSON over defaults."""

from __future__ import annotations

from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message

from abci_app.context import Ctx

PARAMS_KEY = b"params"
P = TypeVar("P", bound=Message)


def load(ctx: Ctx, store: str, cls: type[P]) -> P:
    """The module's params; params reads are not metered. Missing params mean a broken genesis."""
    raw = ctx.state.get(store, PARAMS_KEY)
    if raw is None:
        raise RuntimeError(f"{store} params missing from state")
    return cls.FromString(raw)


def save(ctx: Ctx, store: str, params: Message) -> None:
    ctx.kv(store).set(PARAMS_KEY, params.SerializeToString())


def from_genesis(section: dict[str, Any], defaults: P) -> P:
    """defaults overlaid with section["params"]; a listed repeated field replaces the default list."""
    given = section.get("params")
    if given:
        for name, value in given.items():
            if isinstance(value, list) and name in defaults.DESCRIPTOR.fields_by_name:
                defaults.ClearField(name)
        json_format.ParseDict(given, defaults)
    return defaults
