"""Attacks by the node a client or an expert talks to: it may lie in every answer.

Promises: what a client simulates cannot be broadcast (tests/test_check_tx.py, tests/test_failover.py); a
node cannot set a client's fee past its cap; it cannot blind an expert's daemon for good, make it drop an
answer it has yet to reveal, or make its duties pay fees by padding the query's record; what a hostile party
wrote reaches the user's terminal as text, never as control sequences; a client told its chain (--chain-id)
signs nothing for a node that names another.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest

import experts.daemon
from experts.daemon import ExpertDaemon, gas_for
from llmnet.client.failover import FailoverClient
from llmnet.client.keys import Key
from llmnet.client.sdk import Client, ClientError, FeeTooHigh, Sender, WrongChain
from llmnet.client.txbuilder import send_msg
from wire.llmnet.inference.v1 import inference_pb2 as inf
from wire.llmnet.node.v1 import node_pb2
from wire.llmnet.query.v1 import query_pb2
from wire.llmnet.tx.v1 import service_pb2


class _LyingNode:
    """A node that reports a gas price of its choosing and a simulation of its choosing."""

    def __init__(self, price: int, gas_used: int) -> None:
        self.price, self.gas_used, self.broadcast_txs = price, gas_used, []

    def status(self) -> node_pb2.StatusResponse:
        return node_pb2.StatusResponse(chain_id="c")

    def params(self) -> query_pb2.ParamsResponse:
        resp = query_pb2.ParamsResponse()
        resp.auth.min_gas_price_micro = self.price
        return resp

    def sequence(self, address: str) -> int:
        return 0

    def simulate(self, tx: bytes) -> service_pb2.SimulateResponse:
        return service_pb2.SimulateResponse(result=service_pb2.TxResult(gas_used=self.gas_used))

    def broadcast(self, tx: bytes) -> service_pb2.BroadcastTxResponse:
        self.broadcast_txs.append(tx)
        return service_pb2.BroadcastTxResponse(tx_hash="AB", check=service_pb2.TxResult())


def test_a_node_cannot_set_a_fee_past_the_cap() -> None:
    """It reported a gas price of 2.5e12 per million: sending 1 ullm cost 98.75% of the balance, exit 0."""
    key = Key.generate("user")
    greedy = _LyingNode(price=2_500_000_000_000, gas_used=300_000)
    with pytest.raises(FeeTooHigh, match="over the cap of 100000"):
        Sender(greedy, key).send([send_msg(key.address, key.address, 1)], gas_limit=None)  # type: ignore[arg-type]
    assert greedy.broadcast_txs == []
    honest = _LyingNode(price=10_000, gas_used=50_000)
    sent = Sender(honest, key).send([send_msg(key.address, key.address, 1)], gas_limit=None)  # type: ignore[arg-type]
    assert 0 < sent.fee <= 100_000 and len(honest.broadcast_txs) == 1
    explicit = Sender(greedy, key).send([send_msg(key.address, key.address, 1)], fee=500_000)  # type: ignore[arg-type]
    assert explicit.fee == 500_000  # a fee the user names is the user's


def test_a_client_told_its_chain_signs_nothing_for_a_node_on_another(tmp_path: Path) -> None:
    """Txs are signed for the chain id the node reports: a node that named another chain (where the same key
    holds funds: a test chain and its main chain) got a transfer signed for that chain, to broadcast there. A
    client given its chain refuses such a node before anything is signed; the same node serves one that
    names the node's own chain."""
    from llmnet.devchain import DevChain
    from tests.adversarial.conftest import node_api
    from tests.helpers import FUNDS, deterministic_key

    key = deterministic_key("pinned")
    chain = DevChain(tmp_path / "s.db", [key], FUNDS)
    chain.ok()
    with node_api(chain) as node:
        for client in (Client(node, chain_id="llmnet-mainnet"), FailoverClient([node], chain_id="llmnet-mainnet")):
            with client, pytest.raises(WrongChain, match=f"is on chain '{chain.chain_id}', not 'llmnet-mainnet'"):
                Sender(client, key)
        with Client(node, chain_id=chain.chain_id) as pinned:
            assert Sender(pinned, key).chain_id == chain.chain_id
        with node_api(_other_chain(tmp_path)) as other, \
                FailoverClient([other, node], chain_id=chain.chain_id) as client:
            assert Sender(client, key).chain_id == chain.chain_id and client.node == node  # passed over


def _other_chain(tmp_path: Path):  # type: ignore[no-untyped-def]
    from llmnet.devchain import DevChain
    from tests.helpers import FUNDS, deterministic_key

    other = DevChain(tmp_path / "other.db", [deterministic_key("x")], FUNDS, chain_id="llmnet-mainnet")
    other.ok()
    return other


def test_padding_the_query_record_does_not_raise_a_duty_s_gas() -> None:
    """Unknown fields in the record a node reports pushed the duty past the free limit: then it paid a fee."""
    status = query_pb2.QueryStatusResponse(query=inf.Query(id=3, prompt="Who created Kestrel?", domain="d"))
    msg = inf.MsgRevealScores(scorer="llm1x", query_id=3, scores=[80, 20])
    honest = gas_for(status, msg)
    padded = query_pb2.QueryStatusResponse()
    padded.MergeFromString(status.SerializeToString() + b"")
    padded.query.MergeFromString(b"\xfa\x3f" + bytes([0x80, 0xc8, 0x01]) + b"x" * 25_600)  # field 1023, 25 KB
    assert padded.query.ByteSize() > status.query.ByteSize() + 25_000
    assert gas_for(padded, msg) == honest


def test_a_duty_would_pay_only_for_a_record_the_chain_could_have_written(tmp_path: Path) -> None:
    """Fields the chain knows can be padded too (400 made-up scorers made 1.26M gas, no longer free): a duty that
    would pay is sent only for a record within the chain's params."""
    params = inf.Params(max_prompt_bytes=4096, max_k=5, scorers=3, max_rounds=3)
    daemon = _daemon(tmp_path, SimpleNamespace(params=lambda: query_pb2.ParamsResponse(inference=params)))
    msg = inf.MsgRevealScores(scorer="llm1x", query_id=3, scores=[80, 20])
    honest = query_pb2.QueryStatusResponse(query=inf.Query(id=3, prompt="p" * 4096, respondents=["llm1a"] * 5,
                                                           scorers=["llm1b"] * 3, rounds=3))
    assert daemon._gas(honest, msg) == gas_for(honest, msg)
    padded = query_pb2.QueryStatusResponse()
    padded.CopyFrom(honest)
    padded.query.scorers.extend(["llm1" + "q" * 39] * 600)
    with pytest.raises(ValueError, match="more experts"):
        daemon._gas(padded, msg)
    padded.CopyFrom(honest)
    padded.query.requester = "x" * 40_000
    with pytest.raises(ValueError, match="longer than the chain writes"):
        daemon._gas(padded, msg)


def _daemon(tmp_path: Path, client: object) -> ExpertDaemon:
    daemon = ExpertDaemon(None, Key.generate("expert"), client, tmp_path / "state.json",  # type: ignore[arg-type]
                          rpc_urls={"a:1": "http://a"})
    daemon.rpc_url = "http://a"
    return daemon


def test_heights_a_lying_node_claimed_are_read_again_from_an_honest_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """It claimed height 20,827 on a chain at 837: the daemon kept scanned_height past every real height, on
    every node, and missed its duties until jailed."""
    scanned: list[int] = []

    tip = [837]

    def comet_get(url: str, method: str, **params: object) -> dict[str, object]:
        if method == "status":
            return {"sync_info": {"latest_block_height": str(tip[0])}}
        scanned.append(int(params["height"]))  # type: ignore[call-overload]
        return {"txs_results": []}

    monkeypatch.setattr(experts.daemon, "comet_get", comet_get)
    daemon = _daemon(tmp_path, SimpleNamespace())
    daemon.state.scanned_height = 20_827
    daemon.tick()
    assert scanned == [] and daemon.state.scanned_height == 837
    tip[0] = 840
    daemon.tick()
    assert scanned == [838, 839, 840] and daemon.state.scanned_height == 840


def test_a_status_that_says_settled_without_a_receipt_keeps_the_unrevealed_answer(tmp_path: Path) -> None:
    settled = query_pb2.QueryStatusResponse(query=inf.Query(id=5, phase=inf.PHASE_SETTLED))
    receipts: dict[int, query_pb2.ReceiptResponse] = {}

    def receipt(query_id: int) -> query_pb2.ReceiptResponse:
        if query_id not in receipts:
            raise ClientError("no receipt", grpc.StatusCode.NOT_FOUND)
        return receipts[query_id]

    daemon = _daemon(tmp_path, SimpleNamespace(receipt=receipt))
    daemon.state.open.append(5)
    daemon.state.answers[(5, 1)] = "Marta Vensel"
    daemon.step(5, settled)
    assert daemon.state.open == [5] and daemon.state.answers == {(5, 1): "Marta Vensel"}
    receipts[5] = query_pb2.ReceiptResponse()
    daemon.step(5, settled)
    assert daemon.state.open == [] and daemon.state.answers == {}


def test_anyone_s_words_reach_the_terminal_as_text(capsys: pytest.CaptureFixture[str]) -> None:
    """A hostile respondent's final answer (or a requester's prompt, in `query recent`) carried OSC 52 (write the
    clipboard), a window title and cursor moves that drew fake score lines over real ones."""
    from llmnet.client.ask import Answer, AskResult
    from llmnet.client.cli import CliConfig, _ask_lines, _emit, _say_switch
    from llmnet.client.display import terminal_safe

    hostile = "Marta Vensel\x1b]52;c;Y3VybA==\x07\x1b]0;VERIFIED\x07\x1b[2J\x1b[H\u202efake\r* score 100\x9b"
    result = AskResult(7, "d", hostile, 9, [Answer("llm1x", hostile, 90, 100, True)])
    cfg = CliConfig(nodes=["a:1"], keyring=Path("."), output="text", passphrase=None, retry_for=0.0)
    _emit(cfg, {}, "\n".join(_ask_lines(result)))
    out = capsys.readouterr().out
    assert not any(c in out for c in "\x1b\x07\r\x9b\u202e") and "Marta Vensel\\x1b]52" in out
    assert terminal_safe("two\nlines\tand a tab") == "two\nlines\tand a tab"
    _say_switch("a:1", "b:1", "node a:1 unreachable: \x1b]0;PWNED\x07\x1b[2Jfake")  # a node's error details
    assert "\x1b" not in capsys.readouterr().err
