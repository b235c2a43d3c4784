"""Clients riding out node restarts, without a chain: FailoverClient against in-process gRPC neighbours
(one real server, dead ports), and Sender's resend rules against a fake node that answers as CometBFT does
("tx already exists in cache", a wrong sequence after a restart, a broadcast cut off mid-call)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from llmnet.client.failover import Backoff, FailoverClient, parse_nodes
from llmnet.client.keys import Key
from llmnet.client.sdk import ClientError, NodeUnreachable, Sender
from llmnet.client.txbuilder import send_msg
from tests.conftest import free_port
from wire.llmnet.node.v1 import node_pb2, node_pb2_grpc
from wire.llmnet.tx.v1 import service_pb2, service_pb2_grpc


class Node(node_pb2_grpc.NodeServiceServicer, service_pb2_grpc.TxServiceServicer):
    """A neighbour that answers Status and counts the broadcasts it receives."""

    def __init__(self) -> None:
        self.broadcasts = 0

    def Status(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802
        return node_pb2.StatusResponse(chain_id="fake", height=7)

    def BroadcastTx(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802
        self.broadcasts += 1
        return service_pb2.BroadcastTxResponse(tx_hash="AB")


def serve(port: int = 0) -> tuple[grpc.Server, Node, str]:
    node = Node()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    node_pb2_grpc.add_NodeServiceServicer_to_server(node, server)
    service_pb2_grpc.add_TxServiceServicer_to_server(node, server)
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server, node, f"127.0.0.1:{port}"


@pytest.fixture
def live() -> Iterator[tuple[Node, str]]:
    server, node, address = serve()
    yield node, address
    server.stop(grace=None)


def dead() -> str:
    return f"127.0.0.1:{free_port()}"


def test_node_flags_repeat_or_list_and_each_node_counts_once() -> None:
    assert parse_nodes(["a:1,b:2", "a:1", " c:3 ,"], "d:4") == ["a:1", "b:2", "c:3"]
    assert parse_nodes(None, "d:4") == parse_nodes([""], "d:4") == ["d:4"]


def test_backoff_doubles_up_to_its_cap() -> None:
    backoff = Backoff(first=0.5, cap=4.0)
    assert [backoff.delay() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_an_unreachable_node_is_left_for_the_next(live: tuple[Node, str]) -> None:
    moves: list[tuple[str, str, str]] = []
    down = dead()
    with FailoverClient([down, live[1]], retry_for=0, on_switch=lambda *m: moves.append(m)) as client:
        assert client.status().chain_id == "fake"
        assert client.status().height == 7  # stays on the node that answers
        assert client.node == live[1] and client.index == 1
    assert [(a, b) for a, b, _ in moves] == [(down, live[1])] and "unreachable" in moves[0][2]


def test_when_every_node_stays_down_it_backs_off_then_gives_up_at_the_deadline() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    nodes = [dead(), dead()]
    client = FailoverClient(nodes, retry_for=3, sleep=sleep, clock=lambda: now[0])
    with pytest.raises(NodeUnreachable) as gave_up:
        client.status()
    assert slept == [0.5, 1.0, 1.5]  # after each full round; the last wait ends at the deadline
    assert now[0] == 3.0 and "every node unreachable for 3s" in str(gave_up.value)
    assert all(n in str(gave_up.value) for n in nodes)


def test_a_node_that_comes_back_within_the_deadline_is_followed() -> None:
    port = free_port()
    started: list[grpc.Server] = []

    def sleep(seconds: float) -> None:  # the node restarts while the client waits
        if not started:
            started.append(serve(port)[0])

    try:
        with FailoverClient([f"127.0.0.1:{port}"], retry_for=30, sleep=sleep) as client:
            assert client.status().height == 7
        assert len(started) == 1
    finally:
        for server in started:
            server.stop(grace=None)


def test_a_broadcast_is_never_repeated_blindly(live: tuple[Node, str]) -> None:
    """Its node may have taken the tx before it went away: the caller must look it up first."""
    node, address = live
    client = FailoverClient([dead(), address], retry_for=30)
    with pytest.raises(NodeUnreachable):
        client.broadcast(b"signed tx")
    assert node.broadcasts == 0 and client.node == address  # moved on, did not resend
    assert client.broadcast(b"signed tx").tx_hash == "AB" and node.broadcasts == 1
    client.close()


# -- Sender: resends that must not pay twice ---------------------------------------------------------

NOT_FOUND = ClientError("tx not found", grpc.StatusCode.NOT_FOUND)
IN_CACHE = ClientError("CometBFT refused the tx: tx already exists in cache", grpc.StatusCode.ALREADY_EXISTS)


def wrong_sequence(expected: int, got: int) -> service_pb2.BroadcastTxResponse:
    return service_pb2.BroadcastTxResponse(tx_hash="X", check=service_pb2.TxResult(
        code=3, codespace="tx", log=f"account sequence mismatch, expected {expected}, got {got}"))


class FakeNode:
    """Answers broadcasts from a script; `committed` and `mempool` hold the hashes the chain shows."""

    def __init__(self, *answers: object) -> None:
        self.answers = list(answers)
        self.sent: list[bytes] = []
        self.committed: set[str] = set()
        self.mempool: set[str] = set()

    def sequence(self, address: str) -> int:
        return 0

    def broadcast(self, tx: bytes) -> service_pb2.BroadcastTxResponse:
        self.sent.append(tx)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        assert isinstance(answer, service_pb2.BroadcastTxResponse)
        return answer

    def get_tx(self, tx_hash: str) -> service_pb2.GetTxResponse:
        if tx_hash not in self.committed:
            raise NOT_FOUND
        return service_pb2.GetTxResponse(tx_hash=tx_hash, height=3)

    def in_mempool(self, tx_hash: str) -> bool:
        return tx_hash in self.mempool


KEY = Key.generate("payer")


def send(node: FakeNode) -> tuple[object, FakeNode]:
    sender = Sender(node, KEY, chain_id="c")  # type: ignore[arg-type]
    return sender.send([send_msg(KEY.address, KEY.address, 1)], fee=1, gas_limit=100_000), node


def sha(tx: bytes) -> str:
    return hashlib.sha256(tx).hexdigest().upper()


def test_already_in_cache_is_looked_up_by_hash_and_counts_as_sent() -> None:
    node = FakeNode(IN_CACHE)
    node.committed = {"not ours"}
    sent, _ = send(node)
    assert sent.seen == "cache" and sent.tx_hash == sha(node.sent[0]) and sent.sequence == 0  # type: ignore[attr-defined]
    for place in ("committed", "mempool"):
        tx = send(FakeNode(service_pb2.BroadcastTxResponse(tx_hash="H")))[1].sent[0]  # our tx's bytes
        node = FakeNode(IN_CACHE)
        getattr(node, place).add(sha(tx))
        sent, _ = send(node)
        assert sent.seen == place and sent.tx_hash == sha(tx) and len(node.sent) == 1  # type: ignore[attr-defined]


def test_a_broadcast_cut_off_is_looked_up_before_the_same_bytes_go_again() -> None:
    node = FakeNode(NodeUnreachable("node a unreachable"), service_pb2.BroadcastTxResponse(tx_hash="H"))
    sent, _ = send(node)
    assert len(node.sent) == 2 and node.sent[0] == node.sent[1] and not sent.seen  # type: ignore[attr-defined]
    landed = FakeNode(NodeUnreachable("node a unreachable"))
    landed.mempool = {sha(node.sent[0])}  # the node gossiped it before it went away
    sent, _ = send(landed)
    assert sent.seen == "mempool" and len(landed.sent) == 1  # type: ignore[attr-defined]


def test_a_restarted_node_that_forgot_the_tx_does_not_make_us_pay_twice() -> None:
    """After a restart the node's cache is empty: our committed tx comes back as a wrong sequence. Re-signing
    it for the next sequence would submit the query again; the hash shows it landed."""
    probe = FakeNode(service_pb2.BroadcastTxResponse(tx_hash="H"))
    send(probe)  # what our tx's bytes are
    node = FakeNode(wrong_sequence(1, 0))
    node.committed = {sha(probe.sent[0])}
    sent, _ = send(node)
    assert sent.seen == "committed" and len(node.sent) == 1  # type: ignore[attr-defined]
    other = FakeNode(wrong_sequence(1, 0), service_pb2.BroadcastTxResponse(tx_hash="H2"))  # another client's tx
    sent, _ = send(other)
    assert sent.sequence == 1 and len(other.sent) == 2 and other.sent[0] != other.sent[1]  # type: ignore[attr-defined]


def test_ask_exits_3_only_once_every_node_stayed_unreachable_past_the_deadline(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import subprocess
    import sys
    import time

    from llmnet.client.keys import Keyring

    Keyring(tmp_path).add(Key.generate("payer"), None, unsafe_plaintext=True)
    nodes = [dead(), dead()]
    began = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "llmnet.client.cli", "ask", "Q?", "--domain", "d", "--from", "payer",
                          "--keyring", str(tmp_path), "--node", ",".join(nodes), "--retry-for", "1.5"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 3 and time.monotonic() - began >= 1.5
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("llmnet: error: every node unreachable for 1.5s") and all(n in last for n in nodes)
    assert f"{nodes[0]} unreachable" in out.stderr and f"following through {nodes[1]}" in out.stderr


def test_a_node_behind_on_a_known_query_is_asked_again_not_believed(monkeypatch: pytest.MonkeyPatch) -> None:
    """After a failover, the new node may not have the block holding the query yet: "no such query" from
    it must not end `ask`; a query that stays unknown past the grace still fails."""
    from llmnet.client import ask
    from wire.llmnet.query.v1 import query_pb2

    class Behind:
        def __init__(self, misses: int) -> None:
            self.misses = misses

        def query_status(self, query_id: int) -> query_pb2.QueryStatusResponse:
            if self.misses:
                self.misses -= 1
                raise ClientError(f"inference/4: no query {query_id}", grpc.StatusCode.NOT_FOUND)
            return query_pb2.QueryStatusResponse()

    assert ask._status_of_a_known_query(Behind(3), 5, poll=0.01) == query_pb2.QueryStatusResponse()  # type: ignore[arg-type]
    monkeypatch.setattr(ask, "LAG_GRACE", 0.05)
    with pytest.raises(ClientError, match="no query 5"):
        ask._status_of_a_known_query(Behind(10**6), 5, poll=0.01)  # type: ignore[arg-type]


def test_a_long_lived_sender_recovers_when_another_client_used_its_key(tmp_path: Path) -> None:
    """The gateway keeps one Sender for hours; a send from elsewhere with the same key must not leave
    every later auto-gas send refused for a wrong sequence."""
    from abci_app.context import BlockEnv, Ctx
    from abci_app.crypto import parse_address
    from tests.helpers import CHAIN_ID, Harness
    from wire.llmnet.query.v1 import query_pb2
    from wire.tendermint.abci import types_pb2 as abci

    chain = Harness.create(tmp_path / "s.db", n_keys=2)

    class InProcess:  # the node's API over the real state machine's mempool state
        def status(self) -> node_pb2.StatusResponse:
            return node_pb2.StatusResponse(chain_id=CHAIN_ID)

        def params(self) -> query_pb2.ParamsResponse:
            resp = query_pb2.ParamsResponse()
            resp.auth.min_gas_price_micro = 10_000
            return resp

        def sequence(self, address: str) -> int:
            ctx = Ctx(chain.app.check_state, BlockEnv(CHAIN_ID, chain.height, 0, b""))
            return int(chain.app.auth.account(ctx, parse_address(address)).sequence)

        def simulate(self, tx: bytes) -> service_pb2.SimulateResponse:
            # a hostile node broadcasts what it is asked to simulate: a signed simulation ran the send twice
            broadcast_codes.append(chain.app.check_tx(abci.RequestCheckTx(tx=tx)).code)
            r = chain.app.simulate(tx)
            return service_pb2.SimulateResponse(result=service_pb2.TxResult(
                code=r.code, codespace=r.codespace, log=r.log, gas_used=r.gas_used))

        def broadcast(self, tx: bytes) -> service_pb2.BroadcastTxResponse:
            r = chain.app.check_tx(abci.RequestCheckTx(tx=tx))
            return service_pb2.BroadcastTxResponse(tx_hash=hashlib.sha256(tx).hexdigest().upper(), check=(
                service_pb2.TxResult(code=r.code, codespace=r.codespace, log=r.log)))

    broadcast_codes: list[int] = []
    key, to = chain.keys[0], chain.keys[1].address
    long_lived = Sender(InProcess(), key)  # type: ignore[arg-type]
    assert long_lived.send([send_msg(key.address, to, 5)], gas_limit=None).sequence == 0
    assert Sender(InProcess(), key).send([send_msg(key.address, to, 5)], gas_limit=None).sequence == 1  # type: ignore[arg-type]
    assert [long_lived.send([send_msg(key.address, to, 5)], gas_limit=None).sequence for _ in range(3)] == [2, 3, 4]
    assert broadcast_codes and all(broadcast_codes)  # no simulation could be broadcast
