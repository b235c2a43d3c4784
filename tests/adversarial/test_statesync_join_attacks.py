"""`llmnetd init --join` against a hostile or buggy RPC: every bad answer should be a ConfigError (which the CLI
prints cleanly), never a traceback (KeyError/TypeError escape cli.main's except clause), and nothing that cannot
be right may reach config.toml / genesis.json."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmnet.node import join
from llmnet.node.config import ConfigError

GOOD_HASH = "AB" * 32


def _answers() -> dict[str, Any]:
    return {
        "status": {"node_info": {"network": "chain-a", "id": "a" * 40, "listen_addr": "tcp://0.0.0.0:26656"},
                   "sync_info": {"latest_block_height": "100"}},
        "block": {"block_id": {"hash": GOOD_HASH}, "block": {"header": {"height": "95", "chain_id": "chain-a"}}},
        "genesis": {"genesis": {"chain_id": "chain-a", "genesis_time": "2024-01-01T00:00:00Z"}},
    }


def _serve(monkeypatch: pytest.MonkeyPatch, answers: dict[str, Any]) -> None:
    def get(url: str, params: Any = None, timeout: Any = None) -> httpx.Response:
        endpoint = url.rsplit("/", 1)[1]
        return httpx.Response(200, json={"jsonrpc": "2.0", "id": -1, "result": answers[endpoint]},
                              request=httpx.Request("GET", url))
    monkeypatch.setattr(join.httpx, "get", get)


def _break(path: str, value: Any) -> dict[str, Any]:
    answers = copy.deepcopy(_answers())
    *parents, last = path.split(".")
    node = answers
    for p in parents:
        node = node[p]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    return answers


def test_the_honest_answers_make_a_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    _serve(monkeypatch, _answers())
    plan = join.plan_join(["http://rpc:26657"])
    assert plan.trust_hash == GOOD_HASH and plan.trust_height == 95 and plan.chain_id == "chain-a"


CASES = {
    "result is null": ("status", None),
    "status without node_info": ("status.node_info", KeyError),
    "height is null": ("status.sync_info.latest_block_height", None),
    "network is a list": ("status.node_info.network", ["chain-a"]),
    "block without block_id": ("block.block_id", KeyError),
    "trust hash not hex": ("block.block_id.hash", "not-a-hash\n[p2p]"),
    "trust hash empty": ("block.block_id.hash", ""),
    "trust hash a number": ("block.block_id.hash", 12345),
    "block of another height": ("block.block.header.height", "7"),
    "genesis of another chain": ("genesis.genesis.chain_id", "chain-b"),
    "genesis not an object": ("genesis.genesis", "oops"),
    "listen_addr a number": ("status.node_info.listen_addr", 26656),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_hostile_rpc_answer_is_a_clean_config_error(monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    path, value = CASES[case]
    _serve(monkeypatch, _break(path, value))
    with pytest.raises(ConfigError):
        join.plan_join(["http://rpc:26657"])


def test_a_hash_with_a_newline_never_breaks_config_toml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """An RPC's trust hash (or node id, listen_addr) with a newline must not make config.toml unparsable (CometBFT
    would then fail at start instead of init failing)."""
    import tomllib

    home = tmp_path
    (home / "config").mkdir()
    (home / "config" / "config.toml").write_text(
        '[p2p]\npersistent_peers = ""\n[statesync]\nenable = false\nrpc_servers = ""\ntrust_height = 0\n'
        'trust_hash = ""\ntrust_period = "168h0m0s"\n')
    _serve(monkeypatch, _break("block.block_id.hash", "AB\nCD"))
    try:
        plan = join.plan_join(["http://rpc:26657"])
    except ConfigError:
        return  # refused cleanly: fine
    join.apply_join(home, plan)
    tomllib.loads((home / "config" / "config.toml").read_text())
