"""`llmnet tx *-validator` and `llmnet query validator(s)`: what a validator operator runs.

The consensus key is CometBFT's (priv_validator_key.json in the node's config/); only its public half goes on
chain. The operator key (in our keyring) bonds, edits, unbonds and unjails; it never signs blocks.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
from pathlib import Path
from typing import Any

from google.protobuf.message import Message
from nacl.signing import SigningKey

from abci_app.x.validators.types import key_proof_bytes
from llmnet.client.keys import Key
from wire.llmnet.validators.v1 import validators_pb2 as pb

TX_COMMANDS = ("create-validator", "edit-validator", "bond-validator", "unbond-validator", "unjail-validator")
QUERY_COMMANDS = ("validators", "validator")


def add_tx_parsers(tx: Any, common: argparse.ArgumentParser) -> None:
    create = tx.add_parser("create-validator", parents=[common],
                           help="bond tokens behind a CometBFT consensus key and join the validator set",
                           description="Bond --bond tokens from FROM_KEY (the operator) behind a consensus key. The "
                                       "validator gets voting power bond // power_reduction once its bond is among "
                                       "the max_validators highest; CometBFT counts it two blocks later.")
    create.add_argument("from_key", help="name of the operator's key (pays the bond, controls the validator)")
    create.add_argument("--pubkey", required=True,
                        help="the consensus key: a priv_validator_key.json path or a node home directory (its "
                             "private key signs the key proof); or the base64 public key together with "
                             "--key-proof, for a key held by a remote signer")
    create.add_argument("--key-proof", help="base64 ed25519 signature of the consensus key over "
                                            "'llmnet/validator-key\\0' + chain id + '\\0' + operator address")
    create.add_argument("--moniker", required=True, help="the validator's public name (1-64 characters)")
    create.add_argument("--details", default="", help="a line about the operator (up to 280 characters)")
    create.add_argument("--bond", type=int, required=True, help="tokens to bond (at least validators.min_bond)")
    edit = tx.add_parser("edit-validator", parents=[common], help="change the validator's moniker and details")
    edit.add_argument("from_key", help="name of the operator's key")
    edit.add_argument("--moniker", required=True)
    edit.add_argument("--details", default="")
    bond = tx.add_parser("bond-validator", parents=[common], help="add tokens to the validator's bond")
    bond.add_argument("from_key", help="name of the operator's key")
    bond.add_argument("amount", type=int, help="tokens to add")
    unbond = tx.add_parser("unbond-validator", parents=[common],
                           help="take bond out (all of it by default: the validator leaves the set)",
                           description="Without --amount the validator leaves: its power goes to 0 and the whole "
                                       "bond returns after validators.unbonding_blocks. With --amount the rest must "
                                       "stay at least min_bond.")
    unbond.add_argument("from_key", help="name of the operator's key")
    unbond.add_argument("--amount", type=int, default=0, help="tokens to take out (default: all, leaving)")
    unjail = tx.add_parser("unjail-validator", parents=[common],
                           help="return a validator jailed for downtime, once its jail time is over")
    unjail.add_argument("from_key", help="name of the operator's key")


def add_query_parsers(q: Any, common: argparse.ArgumentParser) -> None:
    q.add_parser("validators", parents=[common], help="the validators, highest voting power first")
    one = q.add_parser("validator", parents=[common], help="one validator and its liveness over the signing window")
    one.add_argument("who", help="the operator's address or key name, or the hex consensus address")


def consensus_key(text: str) -> tuple[bytes, SigningKey | None]:
    """The 32-byte ed25519 public key, with its private half when text names a priv_validator_key.json or a node
    home holding one; base64 (bare or as `cometbft show-validator` prints it) gives the public key alone."""
    path = Path(text).expanduser()
    if path.is_dir():
        path = path / "config" / "priv_validator_key.json"
    if path.is_file():
        try:
            data = json.loads(path.read_text())
            signer = SigningKey(base64.b64decode(data["priv_key"]["value"])[:32])
            public = base64.b64decode(data["pub_key"]["value"])
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise ValueError(f"{path} is not a CometBFT priv_validator_key.json: {exc}") from None
        if bytes(signer.verify_key) != public:
            raise ValueError(f"{path}: its private key does not match its public key")
        return public, signer
    return consensus_pubkey(text), None


def consensus_pubkey(text: str) -> bytes:
    """A base64 ed25519 public key, bare or as `cometbft show-validator` prints it."""
    if text.lstrip().startswith("{"):
        try:
            text = json.loads(text)["value"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"--pubkey JSON must look like cometbft show-validator's output: {exc}") from None
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("--pubkey is neither a priv_validator_key.json, a node home nor a base64 key") from None
    if len(key) != 32:
        raise ValueError(f"--pubkey must be a 32-byte ed25519 key, got {len(key)} bytes")
    return key


def _key_proof(signer: SigningKey | None, given: str | None, chain_id: str, operator: str) -> bytes:
    if signer is not None:
        return bytes(signer.sign(key_proof_bytes(chain_id, operator)).signature)
    if not given:
        raise ValueError("--pubkey as base64 needs --key-proof (or give the priv_validator_key.json or node home, "
                         "whose private key then signs the proof)")
    try:
        return base64.b64decode(given, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("--key-proof must be base64") from None


def tx_msgs(args: argparse.Namespace, key: Key, chain_id: str) -> list[Message]:
    op = key.address
    if args.sub == "create-validator":
        public, signer = consensus_key(args.pubkey)
        return [pb.MsgCreateValidator(operator=op, pub_key=public, moniker=args.moniker, details=args.details,
                                      bond=_positive(args.bond, "--bond"),
                                      key_proof=_key_proof(signer, args.key_proof, chain_id, op))]
    if args.sub == "edit-validator":
        return [pb.MsgEditValidator(operator=op, moniker=args.moniker, details=args.details)]
    if args.sub == "bond-validator":
        return [pb.MsgBondValidator(operator=op, amount=_positive(args.amount, "amount"))]
    if args.sub == "unbond-validator":
        if args.amount < 0:
            raise ValueError("--amount must be at least 0")
        return [pb.MsgUnbondValidator(operator=op, amount=args.amount)]
    return [pb.MsgUnjailValidator(operator=op)]


def _positive(value: int, name: str) -> int:
    if value <= 0:
        raise ValueError(f"{name} must be positive")
    return value


def status_name(v: pb.Validator) -> str:
    return pb.ValidatorStatus.Name(v.status).removeprefix("VALIDATOR_STATUS_").lower()


def validators_text(total: int, validators: list[pb.Validator]) -> str:
    rows = [f"{'power':>8} {'share':>6}  {'status':<10} {'address':<40}  moniker (operator)"]
    for v in validators:
        share = f"{100 * v.power / total:.1f}%" if total else "-"
        rows.append(f"{v.power:>8} {share:>6}  {status_name(v):<10} {v.address.hex().upper():<40}  {v.moniker} "
                    f"({v.operator or 'fixed at genesis'})")
    return "\n".join(rows) + f"\ntotal power {total}"


def validator_text(v: pb.Validator, signing: pb.SigningInfo) -> str:
    lines = [f"moniker: {v.moniker}", f"address: {v.address.hex().upper()}",
             f"operator: {v.operator or '(fixed at genesis)'}", f"status: {status_name(v)}", f"power: {v.power}",
             f"bond: {v.bond}", f"unbonding: {v.unbonding}", f"slashed: {v.slashed}",
             f"missed in window: {signing.missed} as of its last miss (of {signing.observed} heights observed)"]
    if v.status == pb.VALIDATOR_STATUS_JAILED:
        lines.append(f"jailed until height: {v.jailed_until}")
    if v.unbond_at:
        lines.append(f"unbonds at height: {v.unbond_at}")
    return "\n".join(lines)
