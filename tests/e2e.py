"""Helpers for end-to-end tests against a running localnet."""

from __future__ import annotations

import base64
import json
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from abci_app.crypto import parse_address
from abci_app.x.bank.types import balance_key
from llmnet.client.keys import Key, Keyring
from llmnet.client.proof import verify_store_proof
from llmnet.node.localnet import Localnet
from wire.tendermint.crypto import proof_pb2


def keys(net: Localnet) -> list[Key]:
    ring = Keyring(net.manifest()["keyring"])
    return [ring.load(n) for n in net.manifest()["keys"]]


def rpc(net: Localnet, i: int, endpoint: str, **params: Any) -> dict[str, Any]:
    url = f"http://{net.manifest()['nodes'][i]['rpc']}/{endpoint}"
    data: dict[str, Any] = httpx.get(url, params=params, timeout=10).json()
    if "error" in data:
        raise RuntimeError(f"{endpoint}: {data['error']}")
    return data["result"]  # type: ignore[no-any-return]


def header_app_hash(net: Localnet, i: int, height: int, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return str(rpc(net, i, "commit", height=height)["signed_header"]["header"]["app_hash"])
        except (RuntimeError, httpx.HTTPError, KeyError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def wait_app_height(net: Localnet, i: int, height: int, timeout: float = 30) -> None:
    """Wait until node i's app has committed `height` (a proven query without a height answers one
    below the app's latest, so a value written at H is provable only once H+1 is committed)."""
    deadline = time.monotonic() + timeout
    while int(rpc(net, i, "abci_info")["response"].get("last_block_height", 0)) < height:
        if time.monotonic() > deadline:
            raise TimeoutError(f"node {i} did not commit height {height} within {timeout} s")
        time.sleep(0.2)


def prove_balance(net: Localnet, node: int, address: str, proofcheck: str) -> int:
    from wire.llmnet.bank.v1 import bank_pb2

    value = prove_key(net, node, "bank", balance_key(parse_address(address)), proofcheck)
    return int(bank_pb2.Balance.FromString(value).amount)


def prove_key(net: Localnet, node: int, store: str, key: bytes, proofcheck: str) -> bytes:
    """Read store/key with a proof and check it twice, with our verifier and CometBFT's proof
    runtime, against the app hash in the next block's header. Returns the proven value."""
    resp = rpc(net, node, "abci_query", path=f'"/store/{store}/key"', data="0x" + key.hex(),
               prove="true")["response"]
    assert int(resp.get("code", 0)) == 0, resp
    height = int(resp["height"])
    value = base64.b64decode(resp["value"])
    app_hash = header_app_hash(net, node, height + 1)
    ops = [proof_pb2.ProofOp(type=o["type"], key=base64.b64decode(o["key"]), data=base64.b64decode(o["data"]))
           for o in resp["proofOps"]["ops"]]
    verify_store_proof(ops, store, key, value, bytes.fromhex(app_hash))
    payload = {"proof_ops": resp["proofOps"]["ops"], "app_hash": app_hash, "keypath": f"/{store}/x:" + key.hex(),
               "value": resp["value"]}
    out = subprocess.run([proofcheck], input=json.dumps(payload), capture_output=True, text=True)
    assert out.returncode == 0, f"CometBFT proof runtime rejected the proof: {out.stdout}{out.stderr}"
    return value


@contextmanager
def light_proxy(cometbft: str, net: Localnet, home: Path, primary: int = 0, witness: int = 0) -> Iterator[str]:
    """CometBFT's own light client proxy (`cometbft light`) in front of node `primary`, trusting block 1;
    yields its RPC URL once it answers."""
    from llmnet.client.comet import comet_get
    from tests.conftest import free_port

    nodes = net.manifest()["nodes"]
    rpc_url, witness_url = f"http://{nodes[primary]['rpc']}", f"http://{nodes[witness]['rpc']}"
    while int(comet_get(rpc_url, "status")["sync_info"]["latest_block_height"]) < 3:
        time.sleep(0.2)
    trusted = comet_get(rpc_url, "commit", height=1)["signed_header"]["commit"]["block_id"]["hash"]
    address = f"127.0.0.1:{free_port()}"
    proc = subprocess.Popen([cometbft, "light", net.manifest()["chain_id"], "-p", rpc_url, "-w", witness_url,
                             "--height", "1", "--hash", trusted, "--laddr", f"tcp://{address}",
                             "--home-dir", str(home)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                comet_get(f"http://{address}", "commit", height=2)
                break
            except Exception:  # noqa: BLE001 - the proxy is still starting
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.3)
        yield f"http://{address}"
    finally:
        proc.terminate()
        proc.wait(10)
