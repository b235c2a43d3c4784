"""The message registry: what each message type is, who signs it, how it is checked and run."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message

from abci_app.context import Ctx
from abci_app.events import Event, event

EV_MESSAGE = "message"
"""Every message that runs: action (its type URL), sender (its signer), module."""


@dataclass(frozen=True)
class MsgSpec:
    cls: type[Message]
    signer: Callable[[Any], str]
    """The bech32 address that must sign this message."""
    validate: Callable[[Any], None]
    """Stateless checks; raises an AppError."""
    handle: Callable[[Ctx, Any], object]
    """The state transition; raises an AppError to reject (its writes are rolled back)."""
    duty: bool = False
    """A drawn participant's part in a query (commit, reveal), which the query's fee already pays for: a tx
    of duties alone may pay no fee (abci_app/x/auth/ante.py), as long as every one of them succeeds."""

    @property
    def type_url(self) -> str:
        return "/" + self.cls.DESCRIPTOR.full_name

    @property
    def module(self) -> str:
        """The module a message belongs to, read from its package as Cosmos does (llmnet.bank.v1 -> bank)."""
        return self.cls.DESCRIPTOR.full_name.split(".")[1]

    def message_event(self, sender: str) -> Event:
        """The Cosmos `message` event every message emits before it runs, so that
        `tx_search "message.sender='llm1…'"` or `message.action='/llmnet…'` finds any tx."""
        return event(EV_MESSAGE, action=self.type_url, sender=sender, module=self.module)


class MsgRegistry:
    def __init__(self) -> None:
        self._specs: dict[str, MsgSpec] = {}

    def register_all(self, specs: Iterable[MsgSpec]) -> None:
        for spec in specs:
            if spec.type_url in self._specs:
                raise ValueError(f"message {spec.type_url} registered twice")
            self._specs[spec.type_url] = spec

    def get(self, type_url: str) -> MsgSpec | None:
        return self._specs.get(type_url)
