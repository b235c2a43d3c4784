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
