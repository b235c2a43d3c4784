"""Typed events: every state change a module makes is announced as one of these."""

from __future__ import annotations

from dataclasses import dataclass

from wire.tendermint.abci import types_pb2 as abci


@dataclass(frozen=True)
class Event:
    type: str
    attributes: tuple[tuple[str, str], ...]

    def to_pb(self) -> abci.Event:
        return abci.Event(
            type=self.type,
            attributes=[abci.EventAttribute(key=k, value=v, index=True) for k, v in self.attributes],
        )


def event(kind: str, **attributes: str | int) -> Event:
    """Build an event; attribute order is the keyword order, which is fixed in source."""
    return Event(kind, tuple((k, str(v)) for k, v in attributes.items()))
