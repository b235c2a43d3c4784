"""Reading the chain's events in whichever shape they arrive: ABCI protobuf (in process), the node
API's TxResult events, or CometBFT's JSON (block_results). Kinds and attribute names are the
constants beside the module that emits them (abci_app/x/*/types.py)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from abci_app.x.inference.types import ATTR_QUERY_ID, EV_QUERY_SUBMITTED


def _parts(event: Any) -> tuple[str, dict[str, str]]:
    if isinstance(event, dict):
        return str(event["type"]), {a["key"]: a.get("value", "") for a in event.get("attributes") or []}
    return event.type, {a.key: a.value for a in event.attributes}


def find(events: Iterable[Any], kind: str) -> list[dict[str, str]]:
    """The attributes of every event of this kind, in order."""
    return [attrs for k, attrs in map(_parts, events) if k == kind]


def query_ids(events: Iterable[Any], kind: str = EV_QUERY_SUBMITTED) -> list[int]:
    """The query ids that events of this kind name (by default: the queries a tx submitted)."""
    return [int(attrs[ATTR_QUERY_ID]) for attrs in find(events, kind)]
