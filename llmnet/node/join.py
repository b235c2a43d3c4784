"""`llmnetd init --join`: a home for a new full node that joins a running chain by state sync.

What the node must trust comes from RPC servers the operator trusts: the genesis, a recent block's height and
hash (CometBFT's light client verifies the snapshot's app hash from there), and the peers to dial. The trusted
height sits a few blocks below the tip, so it is final and still there when the node starts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from llmnet.node import genesis
from llmnet.node.config import ConfigError, NodeConfig, set_toml_values
from llmnet.node.init import init_home

NODE_ID = re.compile(r"[0-9a-f]{40}")
BLOCK_HASH = re.compile(r"[0-9A-F]{64}")
DIGITS = re.compile(r"[0-9]{1,18}")
PRINTABLE = re.compile(r"[\x21-\x7e]{1,256}")
"""Visible ASCII without spaces or quotes' escapes mattering: safe to put between TOML quotes."""
TRUST_MARGIN = 5
TRUST_PERIOD = "168h0m0s"
WILDCARD_HOSTS = ("", "0.0.0.0", "::", "[::]")


@dataclass(frozen=True)
class JoinPlan:
    chain_id: str
    genesis: dict[str, Any]
    rpc_servers: list[str]
    trust_height: int
    trust_hash: str
    peers: list[str]


def parse_rpc_urls(text: str) -> list[str]:
    urls = [u.strip().rstrip("/") for u in text.split(",") if u.strip()]
    if not urls:
        raise ConfigError("--trust-rpc needs at least one URL")
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"--trust-rpc URL {url!r} must look like http://host:26657")
    return urls


def _get(url: str, endpoint: str, **params: int) -> dict[str, Any]:
    try:
        resp = httpx.get(f"{url}/{endpoint}", params=params, timeout=10)
        data = resp.json()
    except httpx.HTTPError as exc:
        raise ConfigError(f"cannot reach the CometBFT RPC at {url}: {exc}") from None
    except ValueError:
        raise ConfigError(f"{url}/{endpoint} answered HTTP {resp.status_code} without JSON: is it CometBFT's RPC?") \
            from None
    if not isinstance(data, dict) or "result" not in data:
        error = data.get("error") if isinstance(data, dict) else data
        raise ConfigError(f"{url}/{endpoint} answered an error: {error}")
    result: dict[str, Any] = data["result"]
    return result


def _text(data: Any, *path: str, pattern: re.Pattern[str] = PRINTABLE) -> str:
    """data[path[0]][path[1]]... as a string matching pattern, or a ConfigError naming what the RPC got wrong
    (a hostile or broken server must not crash init, nor put a newline into config.toml)."""
    value = data
    for name in path:
        value = value.get(name) if isinstance(value, dict) else None
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ConfigError(f"the RPC answered an unusable {'.'.join(path)}: {str(value)[:80]!r}")
    return value


def _peer(url: str, status: dict[str, Any]) -> str:
    """The RPC node's own p2p address, with the RPC's host where it listens on every interface."""
    node_id = _text(status, "node_info", "id", pattern=NODE_ID)
    host, _, port = _text(status, "node_info", "listen_addr").split("://")[-1].rpartition(":")
    if host in WILDCARD_HOSTS:
        host = urlsplit(url).hostname or host
    if not port.isdigit():
        raise ConfigError(f"the RPC at {url} listens for peers on an unusable address")
    return f"{node_id}@{host}:{port}"


def _trusted_block(url: str, height: int) -> str:
    block = _get(url, "block", height=height)
    if _text(block, "block", "header", "height", pattern=DIGITS) != str(height):
        raise ConfigError(f"{url} answered another block than {height}")
    return _text(block, "block_id", "hash", pattern=BLOCK_HASH)


def plan_join(rpc_urls: list[str], peers: list[str] | None = None) -> JoinPlan:
    """Ask the trusted RPC servers for everything the new node's config needs; they must agree on the chain, on
    the block trusted and on the genesis."""
    statuses = [_get(url, "status") for url in rpc_urls]
    chains = {_text(s, "node_info", "network") for s in statuses}
    if len(chains) != 1:
        raise ConfigError(f"the --trust-rpc servers are on different chains: {sorted(chains)}")
    latest = min(int(_text(s, "sync_info", "latest_block_height", pattern=DIGITS)) for s in statuses)
    if latest < 1:
        raise ConfigError("the chain has no block yet: state sync needs a snapshot of a committed height")
    height = max(1, latest - TRUST_MARGIN)
    hashes = {url: _trusted_block(url, height) for url in rpc_urls}
    if len(set(hashes.values())) != 1:
        raise ConfigError(f"the --trust-rpc servers disagree on block {height}: {hashes}")
    geneses = [_get(url, "genesis").get("genesis") for url in dict.fromkeys(rpc_urls)]
    chain_id = chains.pop()
    if not isinstance(geneses[0], dict) or geneses[0].get("chain_id") != chain_id or \
            any(g != geneses[0] for g in geneses):
        raise ConfigError(f"the --trust-rpc servers do not serve one genesis of chain {chain_id}")
    own = list(dict.fromkeys(_peer(u, s) for u, s in zip(rpc_urls, statuses, strict=True)))
    return JoinPlan(
        chain_id=chain_id, genesis=geneses[0],
        rpc_servers=rpc_urls if len(rpc_urls) > 1 else rpc_urls * 2,  # CometBFT wants two; one twice will do
        trust_height=height, trust_hash=hashes[rpc_urls[0]], peers=own if peers is None else peers)


def statesync_settings(plan: JoinPlan) -> dict[str, object]:
    return {"enable": True, "rpc_servers": ",".join(plan.rpc_servers), "trust_height": plan.trust_height,
            "trust_hash": plan.trust_hash, "trust_period": TRUST_PERIOD}


def apply_join(home: Path, plan: JoinPlan, statesync_extra: dict[str, object] | None = None) -> None:
    """Into an initialized home: the chain's genesis, state sync on with the plan's trust, and its peers."""
    genesis.write(home, plan.genesis)
    toml = home / "config" / "config.toml"
    text = set_toml_values(toml.read_text(), "statesync", statesync_settings(plan) | (statesync_extra or {}))
    toml.write_text(set_toml_values(text, "p2p", {"persistent_peers": ",".join(plan.peers)}))


def init_join_home(home: Path, cometbft: str, plan: JoinPlan, moniker: str = "llmnet-node",
                   app: NodeConfig | None = None) -> NodeConfig:
    cfg = init_home(home, plan.chain_id, cometbft, moniker=moniker, app=app)
    apply_join(home, plan)
    return cfg


def init_join_by_hand(home: Path, cometbft: str, chain_id: str, moniker: str = "llmnet-node") -> str:
    """A home with state sync on but nothing trusted yet; returns what the operator must fill in, and how."""
    init_home(home, chain_id, cometbft, moniker=moniker)
    toml = home / "config" / "config.toml"
    toml.write_text(set_toml_values(toml.read_text(), "statesync", {"enable": True, "trust_period": TRUST_PERIOD}))
    rpc = "http://RPC_HOST:26657"
    return f"""state sync is on in {toml}; CometBFT will not start until you fill in, from an RPC server you trust:
  [statesync] rpc_servers = "{rpc},{rpc}"
      two CometBFT RPC URLs, comma-separated (the same one twice will do)
  [statesync] trust_height = H
      a recent height, a few below the tip:
      curl -s {rpc}/status | jq -r '.result.sync_info.latest_block_height'
  [statesync] trust_hash = "HASH"
      that block's hash:  curl -s '{rpc}/block?height=H' | jq -r '.result.block_id.hash'
  [p2p] persistent_peers = "ID@HOST:PORT"
      nodes to sync from:  curl -s {rpc}/status | jq -r '.result.node_info | .id + "@" + .listen_addr'
      (drop the tcp:// and put the node's reachable host for 0.0.0.0)
and replace {home / genesis.GENESIS} with the chain's:
  curl -s {rpc}/genesis | jq '.result.genesis' > {home / genesis.GENESIS}
Or run `llmnetd init --join --trust-rpc {rpc}` on an empty home to have all of this filled in.
"""
