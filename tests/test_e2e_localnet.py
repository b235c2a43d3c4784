"""Four validators on loopback, real CometBFT: agreement, crash of one, crash of all, bad input.

The tests share one network and run in file order, each leaving it healthy for the next.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Iterator

import grpc
import pytest

from abci_app.errors import ErrTxTooLarge, ErrUnauthorized, ErrWrongSequence
from llmnet.client.sdk import Client, ClientError, Sender
from llmnet.client.txbuilder import build_tx, send_msg
from llmnet.node.localnet import Localnet
from tests.e2e import header_app_hash, keys
from wire.llmnet.tx.v1 import tx_pb2

pytestmark = pytest.mark.e2e
N = 4


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory, cometbft: str) -> Iterator[Localnet]:
    from tests.conftest import free_base_port

    network = Localnet(tmp_path_factory.mktemp("net4"), cometbft)
    network.create(N, base_port=free_base_port(N), accounts=12, timeout_commit="200ms", timeout_propose="1s")
    try:
        network.start()
        yield network
    finally:
        network.stop()


def grpc_addr(net: Localnet, i: int) -> str:
    return str(net.manifest()["nodes"][i]["grpc"])


def heights(net: Localnet) -> list[int]:
    return [net.height(i) or 0 for i in range(N)]


def assert_same_app_hashes(net: Localnet, upto: int, nodes: list[int] | None = None) -> None:
    nodes = list(range(N)) if nodes is None else nodes
    for h in range(2, upto + 1):
        hashes = {header_app_hash(net, i, h) for i in nodes}
        assert len(hashes) == 1, f"nodes disagree on the app hash in header {h}: {hashes}"


def send_and_wait(net: Localnet, key_index: int, count: int, via: list[int]) -> list[str]:
    ks = keys(net)
    key, to = ks[key_index], ks[0]
    acknowledged = []
    clients = [Client(grpc_addr(net, i)) for i in via]
    try:
        sender = Sender(clients[0], key)
        for n in range(count):
            sender.client = clients[n % len(clients)]
            acknowledged.append(sender.send([send_msg(key.address, to.address, 1)]).tx_hash)
        for h in acknowledged:
            assert clients[0].wait_tx(h, timeout=60).result.code == 0
    finally:
        for c in clients:
            c.close()
    return acknowledged


def test_b_txs_through_different_nodes_same_app_hash_everywhere(net: Localnet) -> None:
    ks = keys(net)
    with Client(grpc_addr(net, 0)) as c0:
        before = c0.balance(ks[0].address).amount
    send_and_wait(net, 1, 12, via=[0, 1, 2, 3])
    send_and_wait(net, 2, 12, via=[3, 2, 1, 0])
    top = min(heights(net))
    net.wait_height(top + 1)
    assert_same_app_hashes(net, top)
    for i in range(N):  # every node's API answers the same committed balance
        with Client(grpc_addr(net, i)) as c:
            assert c.balance(ks[0].address).amount == before + 24


def test_c_one_validator_killed_mid_load_recovers(net: Localnet) -> None:
    stop = threading.Event()
    sent: list[str] = []

    def load() -> None:
        ks = keys(net)
        with Client(grpc_addr(net, 0)) as client:
            sender = Sender(client, ks[3])
            while not stop.is_set():
                try:
                    sent.append(sender.send([send_msg(ks[3].address, ks[4].address, 1)]).tx_hash)
                except ClientError:
                    sender = Sender(client, ks[3])  # resync the sequence and go on
                time.sleep(0.02)

    worker = threading.Thread(target=load)
    worker.start()
    try:
        time.sleep(1.5)
        net.signal_node(3, signal.SIGKILL)
        h = max(heights(net)[:3])
        net.wait_height(h + 5, nodes=[0, 1, 2], timeout=60)  # three of four still have > 2/3 power
        net.start_node(3)
        time.sleep(1.0)
    finally:
        stop.set()
        worker.join()
    top = max(heights(net)[:3])
    net.wait_height(top, nodes=[3], timeout=120)
    assert_same_app_hashes(net, top)
    assert len(sent) > 20
    with Client(grpc_addr(net, 3)) as c3:
        assert c3.wait_tx(sent[-1], timeout=60).result.code == 0


def test_d_all_killed_no_acknowledged_tx_lost(net: Localnet) -> None:
    ks = keys(net)
    with Client(grpc_addr(net, 0)) as c:
        before = c.balance(ks[0].address).amount
    acknowledged = send_and_wait(net, 5, 15, via=[0, 1])
    top = max(heights(net))
    for i in range(N):  # no warning, no flush: SIGKILL both processes of every node
        net.signal_node(i, signal.SIGKILL)
    time.sleep(0.5)
    assert not any(r["app_running"] or r["cometbft_running"] for r in net.status())
    net.start()
    net.wait_height(top + 3, timeout=120)
    with Client(grpc_addr(net, 2)) as c:
        for h in acknowledged:
            assert c.get_tx(h).result.code == 0
        assert c.balance(ks[0].address).amount == before + len(acknowledged)
    assert_same_app_hashes(net, min(heights(net)))


def _mutations(net: Localnet, count: int) -> Iterator[tuple[str, bytes, tuple[str, int] | None]]:
    """(kind, tx bytes, expected (codespace, code) or None for 'any rejection')."""
    ks = keys(net)
    key, other = ks[6], ks[7]
    with Client(grpc_addr(net, 0)) as c:
        seq = c.sequence(key.address)
        chain_id = c.status().chain_id
    rng = random.Random(1234)
    valid = build_tx(key, chain_id, seq, [send_msg(key.address, other.address, 1)], fee=2000)
    kinds = ["bad signature", "wrong chain id", "replayed sequence", "truncated", "oversize", "random bytes",
             "bit flip"]
    for n in range(count):
        kind = kinds[n % len(kinds)]
        if kind == "bad signature":
            tx = tx_pb2.Tx.FromString(build_tx(key, chain_id, seq, [send_msg(key.address, other.address, n + 2)],
                                               fee=2000))
            tx.signature = bytes(64 - 1) + bytes([n % 256 | 1])
            yield kind, tx.SerializeToString(), (ErrUnauthorized.codespace, ErrUnauthorized.code)
        elif kind == "wrong chain id":
            raw = build_tx(key, f"other-{n}", seq, [send_msg(key.address, other.address, 1)], fee=2000)
            yield kind, raw, (ErrUnauthorized.codespace, ErrUnauthorized.code)
        elif kind == "replayed sequence":
            raw = build_tx(key, chain_id, max(0, seq - 1) if seq else seq + 7,
                           [send_msg(key.address, other.address, 1)], fee=2000, memo=str(n))
            yield kind, raw, (ErrWrongSequence.codespace, ErrWrongSequence.code)
        elif kind == "truncated":
            yield kind, valid[: rng.randrange(1, len(valid) - 1)], None
        elif kind == "oversize":
            raw = build_tx(key, chain_id, seq, [send_msg(key.address, other.address, 1)], fee=2000,
                           memo="m" * (70_000 + n))
            yield kind, raw, (ErrTxTooLarge.codespace, ErrTxTooLarge.code)
        elif kind == "random bytes":
            yield kind, rng.randbytes(rng.randrange(1, 400)), None
        else:
            flipped = bytearray(valid)
            flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
            yield kind, bytes(flipped), None


def test_e_2000_malformed_txs_rejected_network_keeps_going(net: Localnet) -> None:
    start = max(heights(net))
    clients = [Client(grpc_addr(net, i)) for i in range(N)]
    counts: dict[str, int] = {}
    try:
        for n, (kind, raw, expected) in enumerate(_mutations(net, 2000)):
            try:
                res = clients[n % N].broadcast(raw)
            except ClientError as err:
                # CometBFT itself refused (e.g. a byte-identical tx already in its cache)
                assert err.status in (grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.INVALID_ARGUMENT), err
                counts[kind] = counts.get(kind, 0) + 1
                continue
            assert res.check.code != 0, f"{kind} tx was accepted"
            assert res.check.log
            if expected is not None:
                assert (res.check.codespace, res.check.code) == expected, (kind, res.check.log)
            elif kind == "truncated":
                assert res.check.codespace == "tx", res.check.log
            counts[kind] = counts.get(kind, 0) + 1
        assert sum(counts.values()) == 2000 and len(counts) == 7
        ks = keys(net)
        good = Sender(clients[1], ks[8]).send([send_msg(ks[8].address, ks[0].address, 5)])
        assert clients[2].wait_tx(good.tx_hash, timeout=60).result.code == 0
    finally:
        for c in clients:
            c.close()
    assert all(h > start for h in heights(net))
    assert_same_app_hashes(net, min(heights(net)))
    assert all(r["app_running"] and r["cometbft_running"] for r in net.status())

