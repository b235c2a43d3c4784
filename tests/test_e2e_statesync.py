"""State sync with real CometBFT: two validators take snapshots every 10 blocks; a new full node joins from one,
though every chunk the other serves is corrupted, and then follows the chain with the same app hashes.
`llmnetd init --join` writes what such a node needs from a running node's RPC, and fails cleanly without one."""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from abci_app.crypto import parse_address
from abci_app.errors import ErrHeightUnavailable
from abci_app.x.bank.types import balance_key
from llmnet.client.sdk import Client, Sender
from llmnet.client.txbuilder import send_msg
from llmnet.devchain import seeded_key
from llmnet.node.config import APP_TOML, load
from llmnet.node.localnet import Localnet, node_id
from tests.conftest import free_base_port, free_port
from tests.e2e import header_app_hash, keys, rpc

pytestmark = pytest.mark.e2e
SNAPSHOTS: dict[str, Any] = {"snapshot_interval": 30, "snapshot_chunk_bytes": 256, "snapshot_keep_recent": 5}
"""30 blocks (about 8 s): the joiner asks its peers for their snapshots seconds after a snapshot height, not
as one is being taken. Had only the lying node taken the newest one when asked, the joiner would wait out
CometBFT's two-minute chunk timeout before trying another (llmnet/node/restore.py); the catch-up wait allows
for that too."""
NEWCOMERS = 30


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory, cometbft: str) -> Iterator[Localnet]:
    network = Localnet(tmp_path_factory.mktemp("statesync"), cometbft)
    network.create(2, base_port=free_base_port(3), accounts=3, timeout_commit="200ms", timeout_propose="1s")
    for node in network.manifest()["nodes"]:
        home = Path(node["home"])
        (home / APP_TOML).write_text(dataclasses.replace(load(home), **SNAPSHOTS).validate().to_toml())
    try:
        network.start()
        yield network
    finally:
        network.stop()


def _fund_newcomers(net: Localnet) -> None:
    """Thirty new accounts, so the state takes a few dozen 256-byte chunks."""
    faucet = keys(net)[0]
    with Client(net.manifest()["nodes"][0]["grpc"]) as client:
        sender = Sender(client, faucet)
        sent = [sender.send([send_msg(faucet.address, seeded_key(f"newcomer{i}").address, 1000 + i)])
                for i in range(NEWCOMERS)]
        for s in sent:
            assert client.wait_tx(s.tx_hash, timeout=60).result.code == 0


def _snapshot_dirs(net: Localnet, i: int) -> list[Path]:
    root = Path(net.manifest()["nodes"][i]["home"]) / "data" / "snapshots"
    return sorted((p for p in root.glob("[0-9]*") if (p / "manifest.json").exists()), key=lambda p: int(p.name))


class Corrupter:
    """Flips a byte in every chunk file of one node's snapshots, including snapshots it takes later, until stopped."""

    def __init__(self, net: Localnet, node: int) -> None:
        self.net, self.node, self.done = net, node, set[Path]()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sweep(self) -> None:
        for snapshot in _snapshot_dirs(self.net, self.node):
            for chunk in snapshot.iterdir():
                if chunk.name.isdigit() and chunk not in self.done:
                    data = bytearray(chunk.read_bytes())
                    data[0] ^= 0xFF
                    chunk.write_bytes(bytes(data))
                    self.done.add(chunk)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sweep()
            except OSError:
                pass  # pruned while being swept
            time.sleep(0.05)

    def __enter__(self) -> Corrupter:
        self.sweep()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _block_time(net: Localnet, height: int) -> float:
    stamp = rpc(net, 0, "block", height=height)["block"]["header"]["time"]  # RFC 3339 with nanoseconds
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    return datetime.fromisoformat(whole).replace(tzinfo=UTC).timestamp() + float("0." + (fraction or "0"))


def _app_info(net: Localnet, i: int) -> tuple[int, str]:
    info = rpc(net, i, "abci_info")["response"]
    return int(info.get("last_block_height", 0)), base64.b64decode(info.get("last_block_app_hash", "")).hex().upper()


def _wait_caught_up(net: Localnet, joiner: int, timeout: float = 240) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        h = net.height(joiner) or 0
        if h > 0 and h >= (net.height(0) or 0) - 1:
            return time.monotonic() - started
        time.sleep(0.2)
    log = (Path(net.manifest()["nodes"][joiner]["home"]) / "cometbft.log").read_text()[-3000:]
    raise AssertionError(f"node{joiner} did not catch up within {timeout}s; its CometBFT log ends:\n{log}")


def test_a_new_node_joins_by_state_sync_past_corrupted_chunks_and_follows(net: Localnet) -> None:
    _fund_newcomers(net)
    interval = SNAPSHOTS["snapshot_interval"]
    net.wait_height(interval + 2, timeout=90)  # a snapshot and the two headers after it that the light client needs
    while True:  # both validators hold the newest snapshot, and the next is most of an interval away
        height = net.height(0) or 0
        newest = [int(dirs[-1].name) if (dirs := _snapshot_dirs(net, i)) else 0 for i in (0, 1)]
        if newest == [height - height % interval] * 2 and height % interval in range(2, interval // 3):
            break
        time.sleep(0.1)
    with Corrupter(net, 1) as corrupter:
        joiner = net.add_node(state_sync=True, app_settings=SNAPSHOTS)
        began = time.monotonic()
        net.start_node(joiner)
        took = _wait_caught_up(net, joiner)
    assert corrupter.done, "node 1 had no chunk to corrupt"
    home = Path(net.manifest()["nodes"][joiner]["home"])
    app_log = (home / "app.log").read_text()
    found = re.search(r"state restored from the snapshot of height (\d+)", app_log)
    assert found, app_log[-3000:]
    restored = int(found.group(1))
    node1 = node_id(Path(net.manifest()["nodes"][1]["home"]))
    assert re.search(rf"chunk \d+ from peer {node1} does not match", app_log), app_log[-3000:]
    status = rpc(net, joiner, "status")["sync_info"]
    tip = int(status["latest_block_height"])
    made = _block_time(net, tip) - _block_time(net, 1)
    print(f"\nstate sync: node{joiner} restored height {restored} and caught up to height {tip} in {took:.1f}s "
          f"({time.monotonic() - began:.1f}s with its start); the chain took {made:.1f}s to make those {tip} blocks")
    assert restored >= interval and restored % interval == 0
    assert int(status["earliest_block_height"]) == restored + 1  # blocks from the snapshot on: none replayed from 1
    _same_app_hashes(net, joiner, restored)
    _reads_and_follows(net, joiner, restored)


def _same_app_hashes(net: Localnet, joiner: int, restored: int) -> None:
    """The joiner's own app (not just the headers it fetched) has the validators' app hash at its height."""
    for _ in range(3):
        height, app_hash = _app_info(net, joiner)
        assert height > restored
        assert app_hash == header_app_hash(net, 0, height + 1) == header_app_hash(net, 1, height + 1)
        time.sleep(0.5)


def _reads_and_follows(net: Localnet, joiner: int, restored: int) -> None:
    """A transfer made after the join reads the same on the joiner; a height before its snapshot is not kept."""
    nodes = net.manifest()["nodes"]
    faucet, newcomer = keys(net)[0], seeded_key("newcomer0")
    with Client(nodes[0]["grpc"]) as client:
        sent = Sender(client, faucet).send([send_msg(faucet.address, newcomer.address, 5)])
        height = client.wait_tx(sent.tx_hash, timeout=60).height
        expected = client.balance(newcomer.address).amount
    net.wait_height(height, nodes=[joiner], timeout=30)
    with Client(nodes[joiner]["grpc"]) as client:
        assert client.balance(newcomer.address).amount == expected == 1005
    key = "0x" + balance_key(parse_address(newcomer.address)).hex()
    old = rpc(net, joiner, "abci_query", path='"/store/bank/key"', data=key, height=restored - 1)["response"]
    assert int(old.get("code", 0)) == ErrHeightUnavailable.code and "not kept" in old.get("log", ""), old


def _llmnetd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "llmnet.node.cli", *args], capture_output=True, text=True,
                          timeout=120)


def test_init_join_writes_genesis_trust_and_peers_from_a_trusted_rpc(net: Localnet, tmp_path: Path) -> None:
    nodes = net.manifest()["nodes"]
    url = f"http://{nodes[0]['rpc']}"
    out = _llmnetd("init", "--join", "--trust-rpc", url, "--home", str(tmp_path / "j"), "--moniker", "joiner")
    assert out.returncode == 0, out.stderr
    config = tomllib.loads((tmp_path / "j" / "config" / "config.toml").read_text())
    sync = config["statesync"]
    assert sync["enable"] is True and sync["rpc_servers"] == f"{url},{url}" and sync["trust_period"] == "168h0m0s"
    latest = net.height(0) or 0
    assert latest - 12 <= sync["trust_height"] <= latest
    assert sync["trust_hash"] == rpc(net, 0, "block", height=sync["trust_height"])["block_id"]["hash"]
    assert config["p2p"]["persistent_peers"] == f"{node_id(Path(nodes[0]['home']))}@{nodes[0]['p2p']}"
    assert config["moniker"] == "joiner"
    served = rpc(net, 0, "genesis")["genesis"]
    assert json.loads((tmp_path / "j" / "config" / "genesis.json").read_text()) == served
    assert served["chain_id"] == net.manifest()["chain_id"]
    assert (tmp_path / "j" / APP_TOML).exists()

    both = f"{url},http://{nodes[1]['rpc']}"
    out = _llmnetd("init", "--join", "--trust-rpc", both, "--peers", "ab@1.2.3.4:26656", "--home", str(tmp_path / "k"))
    assert out.returncode == 0, out.stderr
    config = tomllib.loads((tmp_path / "k" / "config" / "config.toml").read_text())
    assert config["statesync"]["rpc_servers"] == both and config["p2p"]["persistent_peers"] == "ab@1.2.3.4:26656"


def test_init_join_fails_cleanly_and_without_an_rpc_says_what_to_fill_in(net: Localnet, tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    for trust, message in ((dead, "cannot reach the CometBFT RPC"), ("ftp://x", "must look like http://"),
                           (net.manifest()["nodes"][0]["explorer"], "CometBFT")):
        out = _llmnetd("init", "--join", "--trust-rpc", trust, "--home", str(tmp_path / "bad"))
        assert out.returncode == 1 and message in out.stderr and out.stdout == "", (trust, out)
        assert not (tmp_path / "bad").exists()
    out = _llmnetd("init", "--join", "--trust-rpc", f"http://{net.manifest()['nodes'][0]['rpc']}",
                   "--chain-id", "another-chain", "--home", str(tmp_path / "other"))
    assert out.returncode == 1 and "another-chain" in out.stderr
    out = _llmnetd("init", "--join", "--home", str(tmp_path / "manual"))
    assert out.returncode == 0, out.stderr
    for needed in ("rpc_servers", "trust_height", "trust_hash", "persistent_peers", "curl -s", "genesis.json"):
        assert needed in out.stdout
    config = tomllib.loads((tmp_path / "manual" / "config" / "config.toml").read_text())
    assert config["statesync"]["enable"] is True
