"""(a) One validator, real CometBFT: 200 signed txs through the gRPC API, all committed, queryable
and proven."""

from __future__ import annotations

import pytest

from llmnet.client.sdk import Client, Sender
from llmnet.client.txbuilder import send_msg
from tests.e2e import keys, prove_balance, wait_app_height

pytestmark = pytest.mark.e2e


def test_200_txs_committed_queryable_and_proven(make_localnet, proofcheck: str) -> None:  # type: ignore[no-untyped-def]
    net = make_localnet(1)
    ks = keys(net)
    senders, recipient = ks[:5], ks[9]
    with Client(net.manifest()["nodes"][0]["grpc"]) as client:
        start = client.balance(recipient.address).amount
        chain_id = client.status().chain_id
        assert chain_id == "llmnet-local"
        pipes = [Sender(client, k, chain_id) for k in senders]
        sent = [pipes[i % 5].send([send_msg(senders[i % 5].address, recipient.address, i + 1)])
                for i in range(200)]
        assert len({s.tx_hash for s in sent}) == 200
        results = [client.wait_tx(s.tx_hash, timeout=60) for s in sent]
        assert all(r.result.code == 0 for r in results), [r.result.log for r in results if r.result.code]
        assert len({r.height for r in results}) < 200  # pipelining put several txs in one block
        expected = start + sum(range(1, 201))
        assert client.balance(recipient.address).amount == expected
        for k in senders:
            assert client.account(k.address).account.sequence == 40
        # every balance touched, proven against the next header's app hash: a proof is answered one height
        # below the latest, so the block after the last transfer must be committed first
        wait_app_height(net, 0, max(r.height for r in results) + 1)
        assert prove_balance(net, 0, recipient.address, proofcheck) == expected
        for k in senders:
            assert prove_balance(net, 0, k.address, proofcheck) == client.balance(k.address).amount


def test_a_network_without_empty_blocks_rests_when_idle_and_serves_at_once(make_localnet) -> None:  # type: ignore[no-untyped-def]
    """`--empty-blocks-interval`: blocks only for txs (and the one after a block that changed state). That
    needs an app whose state stands still when nothing happens: liveness was rewritten every block, so the
    app hash moved every block and CometBFT never rested. A validator's record is written at its first
    observation, so a few blocks follow the start; then the chain rests until a tx comes."""
    import time

    net = make_localnet(4, timeout_commit="50ms", empty_blocks_interval="30s")
    ks = keys(net)
    with Client(net.manifest()["nodes"][0]["grpc"]) as client:
        for _ in range(100):  # every validator observed, and the blocks that followed
            before = client.status().height
            time.sleep(0.5)
            if client.status().height == before:
                break
        rest = client.status().height
        time.sleep(3)
        assert client.status().height == rest  # 60 blocks at 50 ms with empty blocks on
        sent = Sender(client, ks[0]).send([send_msg(ks[0].address, ks[1].address, 1)])
        assert client.wait_tx(sent.tx_hash, timeout=20).height == rest + 1
