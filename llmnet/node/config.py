"""Node configuration: HOME/config/app.toml, loaded and validated once at start.

CometBFT keeps its own HOME/config/config.toml and genesis.json; this file holds only what the
app process needs. Every field has a default, and a missing file means all defaults.
"""

from __future__ import annotations

import secrets
import shutil
import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from abci_app.store.db import KEEP_RECENT
from llmnet.address import host_port
from llmnet.files import write_private

APP_TOML = "config/app.toml"
SNAPSHOT_DIR = "data/snapshots"
MIN_CHUNK_BYTES = 256
MAX_CHUNK_BYTES = 8 << 20
"""CometBFT carries a chunk in one p2p message of at most 16 MB; a chunk this size leaves room to spare."""


class ConfigError(Exception):
    pass


@dataclass(frozen=True)
class NodeConfig:
    home: Path
    abci_address: str = "tcp://127.0.0.1:26658"
    """Where the app listens for CometBFT (config.toml proxy_app must match)."""
    grpc_address: str = "127.0.0.1:9090"
    """The app's gRPC API: tx broadcast/simulate/get, typed queries, health, reflection."""
    metrics_address: str = "127.0.0.1:26670"
    """Prometheus /metrics; empty string turns it off."""
    explorer_address: str = "127.0.0.1:26680"
    """Read-only web explorer (HTML page + JSON under /api); empty string turns it off."""
    cometbft_rpc: str = "http://127.0.0.1:26657"
    """CometBFT RPC the gRPC API forwards broadcasts and tx lookups to."""
    db_path: str = "data/llmnet.sqlite"
    """App state database, relative to home."""
    log_level: str = "info"
    pruning_keep_recent: int = KEEP_RECENT
    """Heights below the latest that stay queryable and provable (Cosmos' pruning-keep-recent)."""
    snapshot_interval: int = 100
    """Take a state sync snapshot after each Commit of a height divisible by this; 0 takes none."""
    snapshot_keep_recent: int = 2
    """Snapshots kept (the newest); older ones are deleted when a new one is complete."""
    snapshot_chunk_bytes: int = 1 << 20
    """Size of a snapshot chunk, the unit joining nodes fetch and check."""

    @property
    def db_file(self) -> Path:
        path = Path(self.db_path)
        return path if path.is_absolute() else self.home / path

    @property
    def beacon_key_file(self) -> Path:
        """The key the node's validator draws its beacon secrets from (x/beacon), beside CometBFT's own keys."""
        return self.home / "config" / BEACON_KEY_FILE

    @property
    def snapshot_dir(self) -> Path:
        return self.home / SNAPSHOT_DIR

    def validate(self) -> NodeConfig:
        if not self.abci_address.startswith(("tcp://", "unix://")):
            raise ConfigError(f"abci_address must start with tcp:// or unix://, got {self.abci_address!r}")
        if self.abci_address.startswith("tcp://"):
            try:
                host_port(self.abci_address.removeprefix("tcp://"), "abci_address")
            except ValueError as err:
                raise ConfigError(str(err)) from None
        for name in ("grpc_address", "metrics_address", "explorer_address"):
            value = getattr(self, name)
            try:
                if value:
                    host_port(value, name)
            except ValueError as err:
                raise ConfigError(str(err)) from None
        if not self.cometbft_rpc.startswith(("http://", "https://")):
            raise ConfigError(f"cometbft_rpc must be an http(s) URL, got {self.cometbft_rpc!r}")
        if type(self.pruning_keep_recent) is not int or self.pruning_keep_recent < 0:
            raise ConfigError(f"pruning_keep_recent must be an integer >= 0, got {self.pruning_keep_recent!r}")
        self._validate_snapshots()
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise ConfigError(f"log_level must be debug, info, warning or error, got {self.log_level!r}")
        return self

    def _validate_snapshots(self) -> None:
        for name, low in (("snapshot_interval", 0), ("snapshot_keep_recent", 1)):
            value = getattr(self, name)
            if type(value) is not int or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
        chunk = self.snapshot_chunk_bytes
        if type(chunk) is not int or not MIN_CHUNK_BYTES <= chunk <= MAX_CHUNK_BYTES:
            raise ConfigError(f"snapshot_chunk_bytes must be an integer from {MIN_CHUNK_BYTES} to {MAX_CHUNK_BYTES}, "
                              f"got {chunk!r}")

    def to_toml(self) -> str:
        lines = ["# llmnetd app configuration (CometBFT's own settings are in config.toml)"]
        for key, value in asdict(self).items():
            if key != "home":
                lines.append(f"{key} = {toml_value(value)}")
        return "\n".join(lines) + "\n"


BEACON_KEY_FILE = "beacon_key.bin"
BEACON_KEY_BYTES = 32


def beacon_key(path: Path) -> bytes:
    """The node's beacon key, made on first use (32 random bytes, readable by its owner only, written whole or
    not at all). Its secrets are what the validator reveals, a height after committing to them: kept across
    restarts so a commitment can be honoured; another node must not share it."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_private(path, secrets.token_bytes(BEACON_KEY_BYTES))
    key = path.read_bytes()
    if len(key) != BEACON_KEY_BYTES:
        raise ValueError(f"{path} holds {len(key)} bytes, not a {BEACON_KEY_BYTES}-byte beacon key: restore it, or "
                         "delete it for a new one (this validator's share of the next beacon is then left out)")
    return key


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    text = str(value)
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise ConfigError(f"a control character cannot go into a config value: {text[:60]!r}")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def load(home: str | Path, **overrides: str | None) -> NodeConfig:
    """Read HOME/config/app.toml, apply non-None overrides, validate."""
    home = Path(home).expanduser().resolve()
    values: dict[str, object] = {}
    path = home / APP_TOML
    if path.exists():
        try:
            values = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    known = {f.name for f in fields(NodeConfig)} - {"home"}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown settings {', '.join(unknown)}")
    values.update({k: v for k, v in overrides.items() if v is not None})
    return NodeConfig(home=home, **values).validate()  # type: ignore[arg-type]


def find_cometbft(explicit: str | None = None) -> str:
    """The cometbft binary: an explicit path, else ./bin/cometbft of this checkout, else PATH."""
    if explicit:
        return explicit
    local = Path(__file__).resolve().parents[2] / "bin" / "cometbft"
    if local.exists():
        return str(local)
    found = shutil.which("cometbft")
    if found is None:
        raise ConfigError("cometbft not found: run `make install` or pass --cometbft PATH")
    return found


def set_toml_values(text: str, section: str, values: dict[str, object]) -> str:
    """Rewrite `key = value` lines inside one [section] of CometBFT's config.toml ("" = top level)."""
    lines = text.splitlines()
    current = ""
    seen: set[str] = set()
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            current = stripped[1:-1]
            continue
        if current != section or "=" not in stripped or stripped.startswith("#"):
            continue
        key = stripped.split("=", 1)[0].strip()
        if key in values:
            lines[i] = f"{key} = {toml_value(values[key])}"
            seen.add(key)
    missing = sorted(set(values) - seen)
    if missing:
        raise ConfigError(f"config.toml section [{section}] has no keys {missing}")
    return "\n".join(lines) + "\n"
