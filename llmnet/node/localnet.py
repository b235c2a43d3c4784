"""`llmnetd localnet`: an N-validator network on loopback for development and tests.

Node i lives in DIR/node<i> and uses ports base+10i (p2p), +1 (CometBFT RPC), +2 (ABCI), +3 (gRPC API),
+4 (app metrics), +5 (web explorer), +6 (CometBFT's own Prometheus metrics). Each node is two processes,
the app and CometBFT, started in their own sessions with pids and logs beside their home. DIR/localnet.json
tells tools where things are; DIR/keyring holds the funded test keys (plaintext: test use only).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from llmnet.client.keys import Key, Keyring
from llmnet.node import genesis
from llmnet.node.config import APP_TOML, NodeConfig, find_cometbft, load, set_toml_values
from llmnet.node.init import init_home
from llmnet.node.join import apply_join, plan_join

MANIFEST = "localnet.json"
FUNDS_PER_KEY = 10**12
VALIDATOR_BOND = 10_000_000
"""Each localnet validator's genesis bond: 10 voting power at the default power_reduction."""


class LocalnetError(Exception):
    pass


@dataclass(frozen=True)
class Ports:
    p2p: int
    rpc: int
    abci: int
    grpc: int
    metrics: int
    explorer: int
    cometbft_metrics: int

    @classmethod
    def for_node(cls, base: int, i: int) -> Ports:
        b = base + 10 * i
        return cls(b, b + 1, b + 2, b + 3, b + 4, b + 5, b + 6)


def node_id(home: Path) -> str:
    """CometBFT's node ID: hex of the first 20 bytes of sha256(node public key)."""
    key = json.loads((home / "config" / "node_key.json").read_text())
    public = base64.b64decode(key["priv_key"]["value"])[32:]
    return hashlib.sha256(public).digest()[:20].hex()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] not in "ZX"
    except (FileNotFoundError, IndexError):
        return False


def _wait_port(port: int, timeout: float, what: str, pid: int) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if not _alive(pid):
            raise LocalnetError(f"{what} exited during start-up; see its log")
        time.sleep(0.1)
    raise LocalnetError(f"{what} did not listen on port {port} within {timeout:.0f}s")


def _genesis(nodes: list[tuple[Path, Ports]], keys: list[Key], operators: list[Key],
             params: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Node 0's genesis with every node as a validator of equal power, bonded by its own operator key, and
    every key funded."""
    doc = genesis.read(nodes[0][0])
    for key in keys + operators:
        genesis.add_balance(doc, key.address, FUNDS_PER_KEY)
    for i, ((home, _), operator) in enumerate(zip(nodes, operators, strict=True)):
        pv = json.loads((home / "config" / "priv_validator_key.json").read_text())
        genesis.add_validator(doc, operator.address, pv["pub_key"]["value"], f"node{i}", VALIDATOR_BOND)
    genesis.override_params(doc, params)
    return doc


def _configure(home: Path, ports: Ports, peers: list[str], consensus: dict[str, Any], proxy_app: str | None,
               mempool_size: int | None) -> None:
    """Loopback addresses, the other nodes as persistent peers, and the block timing, in config.toml."""
    toml = home / "config" / "config.toml"
    text = set_toml_values(toml.read_text(), "rpc", {"laddr": f"tcp://127.0.0.1:{ports.rpc}"})
    text = set_toml_values(text, "p2p", {
        "laddr": f"tcp://127.0.0.1:{ports.p2p}", "persistent_peers": ",".join(peers),
        "allow_duplicate_ip": True, "addr_book_strict": False, "flush_throttle_timeout": "10ms",
    })
    text = set_toml_values(text, "consensus", {"peer_gossip_sleep_duration": "10ms", **consensus})
    text = set_toml_values(text, "instrumentation", {
        "prometheus": True, "prometheus_listen_addr": f"127.0.0.1:{ports.cometbft_metrics}"})
    if proxy_app:
        text = set_toml_values(text, "", {"proxy_app": proxy_app})
    if mempool_size:
        text = set_toml_values(text, "mempool", {"size": mempool_size, "cache_size": 4 * mempool_size})
    toml.write_text(text)


class Localnet:
    def __init__(self, home: str | Path, cometbft: str | None = None) -> None:
        self.home = Path(home).expanduser().resolve()
        self._cometbft = cometbft

    @property
    def cometbft(self) -> str:
        return find_cometbft(self._cometbft)

    # -- creation -----------------------------------------------------------------------

    def exists(self) -> bool:
        return (self.home / MANIFEST).exists()

    def create(self, validators: int, chain_id: str = "llmnet-local", base_port: int = 26600,
               accounts: int = 10, timeout_commit: str = "500ms", proxy_app: str | None = None,
               mempool_size: int | None = None, timeout_propose: str = "3s",
               params: dict[str, dict[str, Any]] | None = None, empty_blocks_interval: str = "") -> dict[str, Any]:
        """Write every node's files. proxy_app names one of CometBFT's built-in apps (e.g.
        "kvstore") to run it instead of ours, with otherwise identical settings (for baselines).
        empty_blocks_interval: "" makes a block every timeout_commit (CometBFT's default); a duration makes blocks
        only for txs (and the one after a block that changed state), and an empty one at least that often: an
        idle network then uses no CPU, while windows counted in blocks last longer in seconds when idle."""
        if validators < 1:
            raise LocalnetError("--validators must be at least 1")
        if self.exists():
            raise LocalnetError(f"{self.home / MANIFEST} exists; stop and delete {self.home} to make a new one")
        nodes = [self._init_node(i, chain_id, Ports.for_node(base_port, i)) for i in range(validators)]
        keys = [Key.generate(n) for n in ["faucet"] + [f"user{i}" for i in range(1, accounts)]]
        operators = [Key.generate(f"validator{i}") for i in range(validators)]
        keyring = Keyring(self.home / "keyring")
        for key in keys + operators:
            keyring.add(key, passphrase=None, unsafe_plaintext=True)
        doc = _genesis(nodes, keys, operators, params or {})
        peers = [f"{node_id(h)}@127.0.0.1:{p.p2p}" for h, p in nodes]
        for i, (home, ports) in enumerate(nodes):
            genesis.write(home, doc)
            consensus: dict[str, Any] = {"timeout_commit": timeout_commit, "timeout_propose": timeout_propose}
            if empty_blocks_interval:
                consensus |= {"create_empty_blocks": False, "create_empty_blocks_interval": empty_blocks_interval}
            _configure(home, ports, [p for j, p in enumerate(peers) if j != i], consensus, proxy_app, mempool_size)
        manifest = {
            "chain_id": chain_id,
            "nodes": [
                {"home": str(h), "rpc": f"127.0.0.1:{p.rpc}", "grpc": f"127.0.0.1:{p.grpc}",
                 "p2p": f"127.0.0.1:{p.p2p}", "abci": f"127.0.0.1:{p.abci}", "metrics": f"127.0.0.1:{p.metrics}",
                 "cometbft_metrics": f"127.0.0.1:{p.cometbft_metrics}", "explorer": f"http://127.0.0.1:{p.explorer}/"}
                for h, p in nodes
            ],
            "keys": [k.name for k in keys],
            "operators": [k.name for k in operators],
            "keyring": str(self.home / "keyring"),
            "builtin_app": proxy_app or "",
        }
        (self.home / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        return manifest

    def _init_node(self, i: int, chain_id: str, ports: Ports) -> tuple[Path, Ports]:
        home = self.home / f"node{i}"
        cfg = NodeConfig(
            home=home, abci_address=f"tcp://127.0.0.1:{ports.abci}",
            grpc_address=f"127.0.0.1:{ports.grpc}", metrics_address=f"127.0.0.1:{ports.metrics}",
            explorer_address=f"127.0.0.1:{ports.explorer}", cometbft_rpc=f"http://127.0.0.1:{ports.rpc}",
        )
        init_home(home, chain_id, self.cometbft, moniker=f"node{i}", app=cfg)
        return home, ports

    # -- joining ------------------------------------------------------------------------

    def add_node(self, state_sync: bool = True, trust_nodes: tuple[int, ...] = (0,),
                 app_settings: dict[str, Any] | None = None, discovery_time: str = "5s") -> int:
        """Write a full node (not a validator) that follows the running chain with every node as its peer, and
        return its index (start it with start_node). With state_sync it restores a snapshot the nodes took,
        trusting a recent block of `trust_nodes`' RPC (a single one is given to CometBFT twice); without, it
        replays every block from 1. app_settings go into its app.toml."""
        manifest = self.manifest()
        if manifest.get("builtin_app"):
            raise LocalnetError("a network of CometBFT's built-in app takes no added nodes")
        nodes = manifest["nodes"]
        index = len(nodes)
        ports = Ports.for_node(int(nodes[0]["p2p"].rsplit(":", 1)[1]), index)
        home, _ = self._init_node(index, manifest["chain_id"], ports)
        if app_settings:
            (home / APP_TOML).write_text(dataclasses.replace(load(home), **app_settings).validate().to_toml())
        peers = [f"{node_id(Path(n['home']))}@{n['p2p']}" for n in nodes]
        if state_sync:
            plan = plan_join([f"http://{nodes[j]['rpc']}" for j in trust_nodes], peers)
            apply_join(home, plan, {"discovery_time": discovery_time})
        else:
            genesis.write(home, genesis.read(Path(nodes[0]["home"])))
        _configure(home, ports, peers, {}, None, None)
        nodes.append({"home": str(home), "rpc": f"127.0.0.1:{ports.rpc}", "grpc": f"127.0.0.1:{ports.grpc}",
                      "p2p": f"127.0.0.1:{ports.p2p}", "abci": f"127.0.0.1:{ports.abci}",
                      "metrics": f"127.0.0.1:{ports.metrics}",
                      "cometbft_metrics": f"127.0.0.1:{ports.cometbft_metrics}",
                      "explorer": f"http://127.0.0.1:{ports.explorer}/", "validator": False, "state_sync": state_sync})
        (self.home / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        return index

    # -- processes ----------------------------------------------------------------------

    def manifest(self) -> dict[str, Any]:
        if not self.exists():
            raise LocalnetError(f"no localnet at {self.home} (run `llmnetd localnet start --home {self.home}`)")
        data: dict[str, Any] = json.loads((self.home / MANIFEST).read_text())
        return data

    def _pid(self, i: int, proc: str) -> int | None:
        path = self.home / f"node{i}" / f"{proc}.pid"
        try:
            pid = int(path.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return pid if _alive(pid) else None

    def _spawn(self, i: int, proc: str, argv: list[str]) -> int:
        node_dir = self.home / f"node{i}"
        with open(node_dir / f"{proc}.log", "ab") as logf:
            child = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        (node_dir / f"{proc}.pid").write_text(str(child.pid))
        return child.pid

    def start_node(self, i: int) -> None:
        node = self.manifest()["nodes"][i]
        home = node["home"]
        if self._pid(i, "app") is None and not self.manifest().get("builtin_app"):
            pid = self._spawn(i, "app", [sys.executable, "-m", "llmnet.node.cli", "start", "--home", home])
            _wait_port(int(node["abci"].rsplit(":", 1)[1]), 60, f"node{i} app", pid)
        if self._pid(i, "cometbft") is None:
            pid = self._spawn(i, "cometbft", [self.cometbft, "start", "--home", home])
            _wait_port(int(node["rpc"].rsplit(":", 1)[1]), 60, f"node{i} cometbft", pid)

    def start(self, wait_height: int = 1, timeout: float = 120) -> None:
        for i in range(len(self.manifest()["nodes"])):
            self.start_node(i)
        if wait_height:
            self.wait_height(wait_height, timeout=timeout)

    def signal_node(self, i: int, sig: int, procs: tuple[str, ...] = ("cometbft", "app")) -> None:
        for proc in procs:
            pid = self._pid(i, proc)
            if pid is not None:
                os.kill(pid, sig)

    def stop_node(self, i: int, timeout: float = 15) -> None:
        """Stop CometBFT first (no more ABCI calls), then the app; SIGKILL whatever lingers."""
        for proc in ("cometbft", "app"):
            pid = self._pid(i, proc)
            if pid is None:
                continue
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
            (self.home / f"node{i}" / f"{proc}.pid").unlink(missing_ok=True)

    def stop(self) -> None:
        for i in range(len(self.manifest()["nodes"])):
            self.stop_node(i)

    # -- observation --------------------------------------------------------------------

    def status(self) -> list[dict[str, Any]]:
        out = []
        for i, node in enumerate(self.manifest()["nodes"]):
            row: dict[str, Any] = {"node": i, "rpc": node["rpc"], "grpc": node["grpc"],
                                   "explorer": node.get("explorer", ""),
                                   "app_running": self._pid(i, "app") is not None,
                                   "cometbft_running": self._pid(i, "cometbft") is not None,
                                   "height": None, "app_hash": None}
            try:
                info = httpx.get(f"http://{node['rpc']}/status", timeout=2).json()["result"]["sync_info"]
                row["height"] = int(info["latest_block_height"])
                row["app_hash"] = info["latest_app_hash"]
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            out.append(row)
        return out

    def height(self, i: int) -> int | None:
        node = self.manifest()["nodes"][i]
        try:
            info = httpx.get(f"http://{node['rpc']}/status", timeout=2).json()["result"]["sync_info"]
            return int(info["latest_block_height"])
        except (httpx.HTTPError, KeyError, ValueError):
            return None

    def wait_height(self, height: int, nodes: list[int] | None = None, timeout: float = 120) -> None:
        nodes = list(range(len(self.manifest()["nodes"]))) if nodes is None else nodes
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all((self.height(i) or 0) >= height for i in nodes):
                return
            time.sleep(0.2)
        raise LocalnetError(f"nodes {nodes} did not reach height {height} within {timeout:.0f}s")
