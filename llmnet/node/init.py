"""`llmnetd init`: a CometBFT home with our genesis app_state and app.toml."""

from __future__ import annotations

import subprocess
from pathlib import Path

from llmnet.node import genesis
from llmnet.node.config import APP_TOML, ConfigError, NodeConfig, set_toml_values


def init_home(
    home: Path,
    chain_id: str,
    cometbft: str,
    moniker: str = "llmnet-node",
    app: NodeConfig | None = None,
) -> NodeConfig:
    """Create HOME with CometBFT's files, then make them ours. Refuses to overwrite a genesis."""
    if (home / genesis.GENESIS).exists():
        raise ConfigError(f"{home / genesis.GENESIS} already exists; choose another --home or delete it")
    home.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([cometbft, "init", "--home", str(home)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ConfigError(f"cometbft init failed: {proc.stderr.strip() or proc.stdout.strip()}")
    cfg = app or NodeConfig(home=home)
    doc = genesis.read(home)
    doc["chain_id"] = chain_id
    doc["app_state"] = genesis.default_app_state()
    genesis.sync_consensus_params(doc)
    genesis.write(home, doc)
    toml = home / "config" / "config.toml"
    text = set_toml_values(toml.read_text(), "", {"proxy_app": cfg.abci_address, "moniker": moniker, "abci": "socket"})
    toml.write_text(text)
    (home / APP_TOML).write_text(cfg.to_toml())
    return cfg
