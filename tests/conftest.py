from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmnet.node.config import find_cometbft
from llmnet.node.localnet import Localnet

ROOT = Path(__file__).resolve().parent.parent
PINNED = "v" + next(
    line.split(":=")[1].strip().lstrip("v") for line in (ROOT / "Makefile").read_text().splitlines()
    if line.startswith("COMETBFT_VERSION")
)


@pytest.fixture(scope="session")
def cometbft() -> str:
    """The pinned CometBFT binary that `make install` put in ./bin; a missing one fails loudly."""
    path = find_cometbft()
    version = subprocess.run([path, "version"], capture_output=True, text=True, check=True).stdout.strip()
    assert "v" + version == PINNED, f"{path} is CometBFT {version}, expected {PINNED}: run `make install`"
    return path


@pytest.fixture(scope="session")
def proofcheck() -> str:
    path = ROOT / "bin" / "proofcheck"
    assert path.exists(), "bin/proofcheck missing: run `make install`"
    return str(path)


def free_base_port(count: int) -> int:
    """A base port whose node port blocks (base+10i .. base+10i+6) are all free right now."""
    for base in range(27000, 40000, 100):
        ports = [base + 10 * i + j for i in range(count) for j in range(7)]
        if all(_free(p) for p in ports):
            return base
    raise RuntimeError("no free port block for a localnet")


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture
def make_localnet(tmp_path_factory: pytest.TempPathFactory, cometbft: str) -> Iterator:  # type: ignore[type-arg]
    nets: list[Localnet] = []

    def make(validators: int, timeout_commit: str = "200ms", accounts: int = 10,
             empty_blocks_interval: str = "") -> Localnet:
        net = Localnet(tmp_path_factory.mktemp(f"localnet{validators}"), cometbft)
        net.create(validators, base_port=free_base_port(validators), accounts=accounts,
                   timeout_commit=timeout_commit, timeout_propose="1s", empty_blocks_interval=empty_blocks_interval)
        nets.append(net)
        net.start()
        return net

    yield make
    for net in nets:
        net.stop()
