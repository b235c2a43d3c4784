"""A relay (or a rogue validator) forging a receipt for `llmnet receipt verify`.

Promise: a receipt that verifies is true: it takes > 2/3 of the voting power, each validator counted
once, signing for the pinned chain id. The evidence here is built by hand, exactly as CometBFT's RPC
would hand it over, around a forged receipt and a real Merkle proof of it.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from abci_app.store.db import CommittedStore
from abci_app.x.inference.types import receipt_key
from llmnet.client.verify import Evidence, VerifyError, header_hash, validators_hash, verify, vote_sign_bytes
from wire.llmnet.inference.v1 import inference_pb2 as inf

CHAIN = "test-chain"
KEYS = [SigningKey(bytes([i + 1]) * 32) for i in range(4)]
STAMP = "2026-11-30T12:00:00.000000001Z"


def _validator(key: SigningKey) -> dict[str, Any]:
    public = bytes(key.verify_key)
    return {"address": hashlib.sha256(public).digest()[:20].hex().upper(), "voting_power": "10",
            "pub_key": {"type": "tendermint/PubKeyEd25519", "value": base64.b64encode(public).decode()}}


VALIDATORS = [_validator(k) for k in KEYS]


def _evidence(tmp_path: Path, answer: str, signers: list[int], chain_id: str = CHAIN,
              slots: list[int] | None = None) -> Evidence:
    """A receipt whose final answer is `answer`, proven into an app hash, in a header that validators
    `signers` sign for chain_id; slots[i] says whose signature sits in slot i (default: its own)."""
    receipt = inf.Receipt(query_id=7, final_index=0, final_answer=answer, domain="kestrel-lang",
                          answer_hashes=[hashlib.sha256(answer.encode()).hexdigest()])
    store = CommittedStore(tmp_path / f"{answer}-{chain_id}.db", ["auth", "bank", "experts", "inference"])
    store.commit(store.stage({("inference", receipt_key(7)): receipt.SerializeToString()}), 1)
    zero = "00" * 32
    header = {"version": {"block": "11", "app": "1"}, "chain_id": chain_id, "height": "2", "time": STAMP,
              "last_block_id": {"hash": zero, "parts": {"total": 1, "hash": zero}},
              "last_commit_hash": zero, "data_hash": zero, "validators_hash": validators_hash(VALIDATORS).hex(),
              "next_validators_hash": zero, "consensus_hash": zero, "app_hash": store.app_hash.hex().upper(),
              "last_results_hash": zero, "evidence_hash": zero, "proposer_address": VALIDATORS[0]["address"]}
    block_id = {"hash": header_hash(header).hex().upper(), "parts": {"total": 1, "hash": zero}}
    message = vote_sign_bytes(chain_id, 2, 0, block_id, STAMP)
    signatures = []
    for slot, who in enumerate(slots or range(4)):
        if who in signers:
            signatures.append({"block_id_flag": 2, "validator_address": VALIDATORS[who]["address"],
                               "timestamp": STAMP, "signature": base64.b64encode(KEYS[who].sign(message).signature)
                               .decode()})
        else:
            signatures.append({"block_id_flag": 1, "validator_address": "", "timestamp": STAMP, "signature": None})
        assert slot < 4
    commit = {"height": "2", "round": 0, "block_id": block_id, "signatures": signatures}
    ops = store.prove("inference", receipt_key(7))
    store.close()
    return Evidence(7, 1, receipt.SerializeToString(), ops, header, commit, VALIDATORS)


def test_a_genuine_receipt_verifies(tmp_path: Path) -> None:
    report = verify(_evidence(tmp_path, "Marta Vensel", signers=[0, 1, 2]), CHAIN, validators_hash(VALIDATORS))
    assert report.signed_power == 30 and report.receipt.final_answer == "Marta Vensel"


def test_one_validator_listed_three_times_is_one_validator(tmp_path: Path) -> None:
    """25% of the power, its signature in three slots: it used to count 75% and verify the forgery,
    even against the trusted validator-set hash."""
    forged = _evidence(tmp_path, "send all your tokens to llm1thief", signers=[0], slots=[0, 0, 0, 3])
    with pytest.raises(VerifyError, match="sits in the slot of"):
        verify(forged, CHAIN, validators_hash(VALIDATORS))


def test_a_receipt_of_another_chain_is_refused(tmp_path: Path) -> None:
    """Signed by everyone, but on a test network with the same validators: not this chain's receipt."""
    other = _evidence(tmp_path, "Marta Vensel", signers=[0, 1, 2, 3], chain_id="llmnet-testnet")
    with pytest.raises(VerifyError, match="not 'test-chain'"):
        verify(other, CHAIN, validators_hash(VALIDATORS))
    other.header["chain_id"] = CHAIN  # relabelled: the signatures no longer hold
    with pytest.raises(VerifyError):
        verify(other, CHAIN, validators_hash(VALIDATORS))


def test_a_validator_list_must_match_its_keys(tmp_path: Path) -> None:
    ev = _evidence(tmp_path, "Marta Vensel", signers=[0, 1, 2])
    ev.validators = [dict(v) for v in VALIDATORS]
    ev.validators[3] = dict(ev.validators[3], address=VALIDATORS[0]["address"])  # a second claim to one address
    with pytest.raises(VerifyError, match="not the address of its public key"):
        verify(ev, CHAIN)
    ev.validators = [VALIDATORS[0], VALIDATORS[0], VALIDATORS[2], VALIDATORS[3]]
    with pytest.raises(VerifyError):
        verify(ev, CHAIN)


def test_a_reply_of_the_wrong_shape_fails_verification_and_never_crashes(tmp_path: Path) -> None:
    """The RPC answering is not trusted: whatever shape it gives its reply, `receipt verify` says NOT VERIFIED
    with a reason (an app hash that is not hex, or a time with an offset and no fraction, once escaped as a
    ValueError traceback)."""
    spoil = [
        ("header", lambda ev: ev.header.update(time="2026-11-30T14:00:00.000000001+02:00")),  # the same instant
        ("header", lambda ev: ev.header.update(time="2026-11-30T14:00:00+02:00")),
        ("header", lambda ev: ev.header.update(time="2026-11-30T12:00:00.\u0661Z")),  # an Arabic-Indic digit
        ("header", lambda ev: ev.header.update(app_hash="not hex")),
        ("header", lambda ev: ev.header.pop("last_block_id")),
        ("commit", lambda ev: ev.commit.update(signatures=None)),
        ("commit", lambda ev: ev.commit["signatures"][0].update(timestamp=12)),
        ("validators", lambda ev: ev.validators[0].update(voting_power="ten")),
        ("validators", lambda ev: ev.validators.__setitem__(1, [])),
        ("proof", lambda ev: ev.proof_ops.__setitem__(0, type(ev.proof_ops[0])(
            type="simple:v", key=ev.proof_ops[0].key, data=b"\xff\xff\xff"))),  # not protobuf
    ]
    for i, (part, change) in enumerate(spoil):
        (tmp_path / str(i)).mkdir()
        ev = _evidence(tmp_path / str(i), "Marta Vensel", signers=[0, 1, 2])
        ev.validators = [dict(v) for v in ev.validators]
        change(ev)
        with pytest.raises(VerifyError) as failed:
            verify(ev, CHAIN)
        assert str(failed.value), part
    assert verify(_evidence(tmp_path, "Marta Vensel", signers=[0, 1, 2]), CHAIN).signed_power == 30


class _HostileRPC:
    """A CometBFT RPC on loopback that answers the receipt and the commit, then `validators` as told."""

    def __init__(self, validators: Callable[[int], bytes]) -> None:
        import http.server
        import json
        import threading
        from urllib.parse import parse_qs, urlparse

        receipt = {"response": {"code": 0, "key": base64.b64encode(receipt_key(7)).decode(), "value": "AQ==",
                                "height": "5", "proofOps": {"ops": []}}}
        self.asked = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server name
                url = urlparse(self.path)
                if url.path == "/validators":
                    outer.asked += 1
                    body = validators(int(parse_qs(url.query)["page"][0]))
                else:
                    result = receipt if url.path == "/abci_query" else {"signed_header": {}}
                    body = json.dumps({"jsonrpc": "2.0", "id": -1, "result": result}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _page(total: int, listed: list[dict[str, Any]]) -> bytes:
    import json

    return json.dumps({"jsonrpc": "2.0", "id": -1, "result": {"total": str(total), "validators": listed}}).encode()


@pytest.mark.parametrize("validators, why", [
    (lambda page: _page(5_000, VALIDATORS if page == 1 else []), "a page of 0"),
    (lambda page: _page(10**9, VALIDATORS), "validator set of 1000000000"),
    (lambda page: b'{"jsonrpc": "2.0", "result": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "JSON it could read"),
    (lambda page: b'["not", "a", "reply"]', "other than a JSON-RPC reply"),
], ids=["5,000 validators, then empty pages", "a billion validators, 4 a page", "JSON nested 100,000 deep",
        "a list"])
def test_a_lying_rpc_cannot_keep_the_verifier_fetching_or_crash_it(validators: Callable[[int], bytes],
                                                                   why: str) -> None:
    """`receipt verify` asked for validator pages until it had as many as the node said there were: a billion,
    with empty pages after the first, kept it asking for ever (63,000 requests in a minute). JSON nested too
    deep for the parser escaped as a RecursionError traceback, without a NOT VERIFIED."""
    from llmnet.client.verify import MAX_VALIDATORS, VALIDATORS_PER_PAGE, fetch

    rpc = _HostileRPC(validators)
    try:
        with pytest.raises(VerifyError, match=why):
            fetch(rpc.url, 7)
        assert rpc.asked <= MAX_VALIDATORS // VALIDATORS_PER_PAGE
    finally:
        rpc.close()


@pytest.mark.e2e
def test_our_commit_rule_agrees_with_cometbft_light(make_localnet, cometbft: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The reference: CometBFT's own light client (`cometbft light`, trusting block 1) serves a header it
    verified itself; our rule accepts that very header and commit, and refuses it once a signature is
    moved into another validator's slot."""
    import copy

    from llmnet.client.comet import comet_get
    from llmnet.client.verify import verify_commit
    from tests.e2e import light_proxy

    net = make_localnet(2)
    rpc = "http://" + net.manifest()["nodes"][0]["rpc"]
    chain_id = net.manifest()["chain_id"]
    with light_proxy(cometbft, net, tmp_path / "light") as proxy:
        verified = comet_get(proxy, "commit", height=3)["signed_header"]
        validators = comet_get(rpc, "validators", height=3)["validators"]
        direct = comet_get(rpc, "commit", height=3)["signed_header"]
        assert verified["commit"]["block_id"]["hash"] == direct["commit"]["block_id"]["hash"]
        signed, total = verify_commit(verified["header"], verified["commit"], validators, chain_id)
        assert signed * 3 > total * 2
        forged = copy.deepcopy(verified["commit"])
        forged["signatures"][1] = dict(forged["signatures"][0])  # validator 0's signature twice
        with pytest.raises(VerifyError):
            verify_commit(verified["header"], forged, validators, chain_id)
        with pytest.raises(VerifyError):
            verify_commit(verified["header"], verified["commit"], validators, "another-chain")
