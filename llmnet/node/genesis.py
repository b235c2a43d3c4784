"""CometBFT genesis.json with LLM-Net's app_state: create, read, add balances."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from abci_app.crypto import address_bytes, parse_address
from abci_app.x.auth.types import default_params as auth_defaults
from abci_app.x.bank.types import default_params as bank_defaults
from abci_app.x.experts.types import default_params as experts_defaults
from abci_app.x.inference.types import default_params as inference_defaults
from abci_app.x.validators.types import default_params as validators_defaults

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
        "validators": {"params": json_format.MessageToDict(validators_defaults(), preserving_proto_field_name=True),
                       "validators": []},
    }


def override_params(genesis: dict[str, Any], overrides: dict[str, dict[str, Any]]) -> None:
    """Set module params, e.g. {"inference": {"scorers": 2}}; unknown modules are an error."""
    app_state = genesis.setdefault("app_state", {})
    for module, params in overrides.items():
        if module not in ("auth", "bank", "experts", "inference", "validators"):
            raise ValueError(f"unknown module {module!r} in genesis overrides")
        app_state.setdefault(module, {}).setdefault("params", {}).update(params)
    sync_consensus_params(genesis)


def sync_consensus_params(genesis: dict[str, Any]) -> None:
    """CometBFT's block.max_gas follows auth.max_block_gas, so its proposers reap what the app accepts;
    vote extensions are on from height 1, so every block after the first carries the selection beacon; evidence
    of double-signing expires within validators.unbonding_blocks."""
    params = genesis.get("app_state", {}).get("auth", {}).get("params", {})
    max_gas = int(params.get("max_block_gas") or auth_defaults().max_block_gas)
    consensus = genesis.setdefault("consensus_params", {})
    consensus.setdefault("block", {})["max_gas"] = str(max_gas)
    abci = consensus.setdefault("abci", {})
    if int(abci.get("vote_extensions_enable_height") or 0) == 0:
        abci["vote_extensions_enable_height"] = "1"
    # Evidence must expire before a bond can be paid back (the app refuses a genesis where it would not).
    unbonding = int(genesis.get("app_state", {}).get("validators", {}).get("params", {}).get("unbonding_blocks")
                    or validators_defaults().unbonding_blocks)
    evidence = consensus.setdefault("evidence", {})
    evidence["max_age_num_blocks"] = str(min(int(evidence.get("max_age_num_blocks") or unbonding), unbonding))
    evidence["max_age_duration"] = "1000000000"  # CometBFT expires evidence when both ages pass: let blocks decide


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


def add_validator(genesis: dict[str, Any], operator: str, pub_key_b64: str, moniker: str, bond: int) -> None:
    """Bond a validator from the first block: operator's genesis balance pays the bond (so fund it first).
    CometBFT's own genesis list is filled to match, so both agree on the first set."""
    parse_address(operator)
    key = base64.b64decode(pub_key_b64, validate=True)
    if len(key) != 32:
        raise ValueError("the consensus key must be a base64 32-byte ed25519 key")
    section = genesis.setdefault("app_state", {}).setdefault("validators", {})
    listed = section.setdefault("validators", [])
    if any(v["pub_key"] == pub_key_b64 or v["operator"] == operator for v in listed):
        raise ValueError("that consensus key or operator already has a genesis validator")
    listed.append({"operator": operator, "pub_key": pub_key_b64, "moniker": moniker, "bond": str(bond)})
    reduction = int(section.get("params", {}).get("power_reduction") or validators_defaults().power_reduction)
    genesis["validators"] = [{  # the app hands CometBFT exactly this set in InitChain
        "address": address_bytes(base64.b64decode(v["pub_key"])).hex().upper(),
        "pub_key": {"type": "tendermint/PubKeyEd25519", "value": v["pub_key"]},
        "power": str(int(v["bond"]) // reduction), "name": v["moniker"]} for v in listed]
