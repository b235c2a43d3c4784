"""Verify a settled query's receipt the way a light client would, from CometBFT's RPC alone.

1. The receipt, read with a Merkle proof at height H (`/store/inference/key`).
2. The signed header of H+1 (it carries the app hash after block H) and the validator set of H+1.
3. The header is for the pinned chain id and height H+1; the validator set hashes to its
   validators_hash; the header hashes (CometBFT's Header.Hash: a Merkle tree over its proto-encoded
   fields) to the block id the commit signed, at that height.
4. CometBFT's light-client commit rule (VerifyCommitLight): signature i belongs to validator i (same
   address, and the address is the hash of that validator's key), each validator counts once, and
   those that signed the block id for the pinned chain id (ed25519 over CanonicalVote, length-prefixed,
   as VoteSignBytes) hold more than 2/3 of the voting power.
5. The proof takes the receipt's bytes to that app hash.
6. The final answer hashes to the receipt's answer hash for the final respondent.

Trust anchor: the validator set comes from the same RPC and is checked against the header; only a
`trusted_validators_hash` the user got elsewhere (a block explorer, the genesis, a friend's node) ties it
to the real chain. Without one, a receipt verifies as consistent, and the report says so.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from google.protobuf.message import DecodeError

from abci_app.crypto import verify as ed25519_verify
from abci_app.encoding import uvarint
from abci_app.store.merkle import hash_from_leaves, leaf_hash
from abci_app.x.inference.types import STORE, receipt_key
from llmnet.client.comet import CometError, comet_get
from llmnet.client.proof import ProofError, verify_store_proof
from wire.llmnet.inference.v1 import inference_pb2 as inf
from wire.tendermint.crypto import keys_pb2, proof_pb2
from wire.tendermint.types import canonical_pb2, types_pb2, validator_pb2
from wire.tendermint.version import types_pb2 as version_pb2

PRECOMMIT = 2
BLOCK_ID_FLAG_COMMIT = 2
VALIDATORS_PER_PAGE = 100
MAX_VALIDATORS = 10_000
"""Far beyond any chain's validator set (CometBFT chains run a few hundred): a node that said a billion, with
empty pages after the first, kept the verifier asking for ever."""


class VerifyError(Exception):
    pass


MALFORMED = (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError, DecodeError,
             RecursionError)
"""What reading a reply of the wrong shape raises (a missing field, a number that is not one, bad hex or base64):
the node or relay answering is not trusted, so a reply it shaped wrongly is a failed verification, never a crash."""
RFC3339_UTC = re.compile(r"([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2})(?:\.([0-9]{1,9}))?Z")
"""A time as CometBFT writes it in JSON: UTC, at most nanoseconds."""
_F = TypeVar("_F", bound=Callable[..., Any])


def _untrusted(fn: _F) -> _F:
    @functools.wraps(fn)
    def checked(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MALFORMED as exc:
            raise VerifyError(f"the node's reply is malformed ({type(exc).__name__}: {str(exc)[:200]})") from None
    return checked  # type: ignore[return-value]


@dataclass
class Evidence:
    """Everything fetched from the network; verify() trusts none of it."""
    query_id: int
    height: int
    value: bytes
    proof_ops: list[proof_pb2.ProofOp]
    header: dict[str, Any]
    commit: dict[str, Any]
    validators: list[dict[str, Any]]


@dataclass
class Report:
    receipt: inf.Receipt
    height: int
    chain_id: str
    signed_power: int
    total_power: int
    checks: list[str] = field(default_factory=list)
    validators_pinned: bool = False
    """Whether the validator set was checked against a hash the user got elsewhere: without it, the receipt is
    consistent with what the node sent, which a lying node can make up whole."""


def _rpc(url: str, method: str, **params: Any) -> dict[str, Any]:
    try:
        return comet_get(url, method, **params)
    except CometError as exc:
        raise VerifyError(str(exc)) from None


@_untrusted
def fetch(rpc_url: str, query_id: int) -> Evidence:
    resp = _rpc(rpc_url, "abci_query", path=f'"/store/{STORE}/key"', data="0x" + receipt_key(query_id).hex(),
                prove="true")["response"]
    proven_key = base64.b64decode(resp.get("key") or "")
    if int(resp.get("code", 0)) != 0 or not resp.get("value") or proven_key != receipt_key(query_id):
        raise VerifyError(f"query {query_id} has no receipt on chain (not settled, or unknown)")
    height = int(resp["height"])
    ops = [proof_pb2.ProofOp(type=o["type"], key=base64.b64decode(o["key"]), data=base64.b64decode(o["data"]))
           for o in resp["proofOps"]["ops"]]
    signed = _wait_commit(rpc_url, height + 1)
    validators: list[dict[str, Any]] = []
    for page in range(1, MAX_VALIDATORS // VALIDATORS_PER_PAGE + 1):
        got = _rpc(rpc_url, "validators", height=height + 1, page=page, per_page=VALIDATORS_PER_PAGE)
        total, listed = int(got["total"]), got["validators"]
        if not 0 < total <= MAX_VALIDATORS or not 0 < len(listed) <= VALIDATORS_PER_PAGE:
            raise VerifyError(f"the node lists a validator set of {total} with a page of {len(listed)}")
        validators += listed
        if len(validators) >= total:
            break
    else:
        raise VerifyError(f"the node's validator set did not end within {MAX_VALIDATORS} validators")
    return Evidence(query_id, height, base64.b64decode(resp["value"]), ops, signed["header"], signed["commit"],
                    validators)


def _wait_commit(rpc_url: str, height: int, attempts: int = 50) -> dict[str, Any]:
    import time

    for _ in range(attempts):  # the next block may still be in the making
        try:
            result: dict[str, Any] = _rpc(rpc_url, "commit", height=height)["signed_header"]
            return result
        except VerifyError:
            time.sleep(0.2)
    raise VerifyError(f"no signed header for height {height}")


def _hex(s: str) -> bytes:
    return bytes.fromhex(s or "")


def _timestamp(text: str) -> Any:
    from google.protobuf.timestamp_pb2 import Timestamp

    match = RFC3339_UTC.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise VerifyError(f"{str(text)[:60]!r} is not a UTC time as CometBFT writes it (2026-01-02T03:04:05.6Z)")
    main, frac = match.groups()
    seconds = int(datetime.fromisoformat(main + "+00:00").timestamp())
    return Timestamp(seconds=seconds, nanos=int((frac or "0").ljust(9, "0")))


def _cdc_bytes(b: bytes) -> bytes:
    """gogotypes.BytesValue / StringValue encoding (field 1), empty when the value is empty."""
    return b"\x0a" + uvarint(len(b)) + b if b else b""


def _cdc_int(n: int) -> bytes:
    return b"\x08" + uvarint(n & (2**64 - 1)) if n else b""


def header_hash(h: dict[str, Any]) -> bytes:
    version = version_pb2.Consensus(block=int(h["version"]["block"]), app=int(h["version"].get("app", 0)))
    last = h["last_block_id"]
    last_id = types_pb2.BlockID(hash=_hex(last["hash"]), part_set_header=types_pb2.PartSetHeader(
        total=int(last["parts"]["total"]), hash=_hex(last["parts"]["hash"])))
    fields = [
        version.SerializeToString(),
        _cdc_bytes(h["chain_id"].encode()),
        _cdc_int(int(h["height"])),
        _timestamp(h["time"]).SerializeToString(),
        last_id.SerializeToString(),
        *[_cdc_bytes(_hex(h[k])) for k in ("last_commit_hash", "data_hash", "validators_hash",
                                            "next_validators_hash", "consensus_hash", "app_hash",
                                            "last_results_hash", "evidence_hash", "proposer_address")],
    ]
    return hash_from_leaves([leaf_hash(f) for f in fields])


def validators_hash(validators: list[dict[str, Any]]) -> bytes:
    leaves = []
    for v in validators:
        if v["pub_key"]["type"] != "tendermint/PubKeyEd25519":
            raise VerifyError(f"unsupported validator key type {v['pub_key']['type']}")
        simple = validator_pb2.SimpleValidator(pub_key=keys_pb2.PublicKey(ed25519=base64.b64decode(
            v["pub_key"]["value"])), voting_power=int(v["voting_power"]))
        leaves.append(leaf_hash(simple.SerializeToString()))
    return hash_from_leaves(leaves)


def vote_sign_bytes(chain_id: str, height: int, round_: int, block_id: dict[str, Any], timestamp: str) -> bytes:
    vote = canonical_pb2.CanonicalVote(
        type=PRECOMMIT, height=height, round=round_, chain_id=chain_id,
        block_id=canonical_pb2.CanonicalBlockID(hash=_hex(block_id["hash"]), part_set_header=(
            canonical_pb2.CanonicalPartSetHeader(total=int(block_id["parts"]["total"]),
                                                 hash=_hex(block_id["parts"]["hash"])))))
    vote.timestamp.CopyFrom(_timestamp(timestamp))
    body = vote.SerializeToString()
    return uvarint(len(body)) + body


def _check_validators(validators: list[dict[str, Any]]) -> int:
    """Each validator's address is the hash of its key, no validator appears twice, every power is
    positive. Returns the total voting power."""
    seen: set[bytes] = set()
    for v in validators:
        key = base64.b64decode(v["pub_key"]["value"])
        if _hex(v["address"]) != hashlib.sha256(key).digest()[:20]:
            raise VerifyError(f"validator {v['address']} is not the address of its public key")
        if key in seen:
            raise VerifyError(f"validator {v['address']} is listed twice")
        seen.add(key)
        if int(v["voting_power"]) <= 0:
            raise VerifyError(f"validator {v['address']} has no voting power")
    return sum(int(v["voting_power"]) for v in validators)


def verify_commit(header: dict[str, Any], commit: dict[str, Any], validators: list[dict[str, Any]],
                  chain_id: str) -> tuple[int, int]:
    """CometBFT's VerifyCommitLight for the pinned chain id: returns (signed power, total power)."""
    height = int(header["height"])
    if int(commit["height"]) != height:
        raise VerifyError(f"the commit is for height {commit['height']}, the header for {height}")
    if header_hash(header) != _hex(commit["block_id"]["hash"]):
        raise VerifyError("the header does not hash to the block id the validators signed")
    total = _check_validators(validators)
    signatures = commit["signatures"]
    if len(signatures) != len(validators):
        raise VerifyError(f"the commit has {len(signatures)} signatures for {len(validators)} validators")
    signed = 0
    for v, sig in zip(validators, signatures, strict=True):  # signature i is validator i's, or nobody's
        if int(sig["block_id_flag"]) != BLOCK_ID_FLAG_COMMIT:
            continue
        if sig["validator_address"] != v["address"]:
            raise VerifyError(f"signature of {sig['validator_address']} sits in the slot of {v['address']}")
        message = vote_sign_bytes(chain_id, height, int(commit["round"]), commit["block_id"], sig["timestamp"])
        # A signature our stricter ed25519 rules refuse (CometBFT's ZIP-215 rules may have let it through)
        # counts for nothing; it must not make an otherwise valid commit fail, or one validator could
        # make every receipt unverifiable.
        if ed25519_verify(base64.b64decode(v["pub_key"]["value"]), message, base64.b64decode(sig["signature"])):
            signed += int(v["voting_power"])
    if 3 * signed <= 2 * total:
        raise VerifyError(f"only {signed} of {total} voting power signed the block (need more than 2/3)")
    return signed, total


@_untrusted
def verify(ev: Evidence, chain_id: str, trusted_validators_hash: bytes | None = None) -> Report:
    """Raise VerifyError naming the first check that fails; return what was verified."""
    h, commit = ev.header, ev.commit
    height = int(h["height"])
    checks = []
    if h["chain_id"] != chain_id:
        raise VerifyError(f"the header is for chain {h['chain_id']!r}, not {chain_id!r}")
    if height != ev.height + 1:
        raise VerifyError(f"header is for height {height}, expected {ev.height + 1}")
    vhash = validators_hash(ev.validators)
    if vhash != _hex(h["validators_hash"]):
        raise VerifyError("validator set does not hash to the header's validators_hash")
    if trusted_validators_hash is not None and vhash != trusted_validators_hash:
        raise VerifyError("validator set is not the trusted one")
    checks.append(f"validator set ({len(ev.validators)} validators) matches the header's validators_hash "
                  f"{vhash.hex().upper()[:16]}…" + (" and the trusted hash" if trusted_validators_hash else
                                                     " (not pinned: pass --trusted-validators-hash)"))
    signed, total = verify_commit(h, commit, ev.validators, chain_id)
    checks.append(f"header of {chain_id} at height {height} hashes to the committed block id "
                  f"{commit['block_id']['hash'][:16]}…")
    checks.append(f"commit signatures from {signed}/{total} of the voting power verify (ed25519, > 2/3, each "
                  "validator once)")
    try:
        verify_store_proof(ev.proof_ops, STORE, receipt_key(ev.query_id), ev.value, _hex(h["app_hash"]))
    except ProofError as exc:
        raise VerifyError(f"Merkle proof: {exc}") from None
    checks.append(f"Merkle proof takes the receipt to the app hash {h['app_hash'][:16]}… of that header")
    try:
        receipt = inf.Receipt.FromString(ev.value)
    except Exception:  # noqa: BLE001 - any decode failure is a verification failure
        raise VerifyError("receipt bytes do not decode") from None
    if receipt.query_id != ev.query_id:
        raise VerifyError(f"receipt is for query {receipt.query_id}, not {ev.query_id}")
    if receipt.final_index >= 0 and receipt.final_answer:
        want = receipt.answer_hashes[receipt.final_index] if receipt.final_index < len(receipt.answer_hashes) else ""
        if hashlib.sha256(receipt.final_answer.encode()).hexdigest() != want:
            raise VerifyError("the final answer does not hash to the receipt's answer hash")
        checks.append("the final answer's sha256 matches its answer hash in the receipt")
    return Report(receipt, ev.height, chain_id, signed, total, checks, trusted_validators_hash is not None)
