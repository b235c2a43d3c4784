"""CometBFT genesis.json with LLM-Net's app_state: create, read, add balances."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from abci_app.crypto import parse_address
from abci_app.x.auth.types import default_params as auth_defaults
from abci_app.x.bank.types import default_params as bank_defaults
from abci_app.x.experts.types import default_params as experts_defaults
from abci_app.x.inference.types import default_params as inference_defaults

GENESIS = "config/genesis.json"


def default_app_state() -> dict[str, Any]:
    return {
        "auth": {"params": json_format.MessageToDict(auth_defaults(), preserving_proto_field_name=True)},
        "bank": {
            "params": json_format.MessageToDict(bank_defaults(), preserving_proto_field_name=True),
            "balances": [],
        },
        "experts": {"params": json_format.MessageToDict(experts_defaults(), preserving_proto_field_name=True)},
        "inference": {"params": json_format.MessageToDict(inference_defaults(), preserving_proto_field_name=True)},
    }


def override_params(genesis: dict[str, Any], overrides: dict[str, dict[str, Any]]) -> None:
    """Set module params, e.g. {"inference": {"scorers": 2}}; unknown modules are an error."""
    app_state = genesis.setdefault("app_state", {})
    for module, params in overrides.items():
        if module not in ("auth", "bank", "experts", "inference"):
            raise ValueError(f"unknown module {module!r} in genesis overrides")
        app_state.setdefault(module, {}).setdefault("params", {}).update(params)
    sync_consensus_params(genesis)


def sync_consensus_params(genesis: dict[str, Any]) -> None:
    """CometBFT's block.max_gas follows auth.max_block_gas, so its proposers reap what the app accepts;
    vote extensions are on from height 1, so every block after the first carries the selection beacon."""
    params = genesis.get("app_state", {}).get("auth", {}).get("params", {})
    max_gas = int(params.get("max_block_gas") or auth_defaults().max_block_gas)
    consensus = genesis.setdefault("consensus_params", {})
    consensus.setdefault("block", {})["max_gas"] = str(max_gas)
    abci = consensus.setdefault("abci", {})
    if int(abci.get("vote_extensions_enable_height") or 0) == 0:
        abci["vote_extensions_enable_height"] = "1"


def read(home: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((home / GENESIS).read_text())
    return data


def write(home: Path, genesis: dict[str, Any]) -> None:
    path = home / GENESIS
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(genesis, indent=2) + "\n")
    tmp.replace(path)


def add_balance(genesis: dict[str, Any], address: str, amount: int) -> None:
    """Fund address at genesis (adds to an existing entry). Raises ValueError on bad input."""
    parse_address(address)
    if amount <= 0:
        raise ValueError(f"amount must be positive, got {amount}")
    balances = genesis.setdefault("app_state", {}).setdefault("bank", {}).setdefault("balances", [])
    for entry in balances:
        if entry["address"] == address:
            entry["amount"] = str(int(entry["amount"]) + amount)
            return
    balances.append({"address": address, "amount": str(amount)})
