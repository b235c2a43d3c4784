"""An in-process chain with registered experts, driven block by block (no network)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from abci_app.app import Application
from abci_app.pb.llmnet.query.v1 import query_pb2 as q
from abci_app.pb.tendermint.abci import types_pb2 as abci
from abci_app.queries import QUERY_SERVICE
from llmnet.client import protocol
from llmnet.client.keys import Key
from llmnet.client.txbuilder import build_tx
from tests.helpers import CHAIN_ID, deterministic_key

FUNDS = 10**12
BOND = 5_000_000
ADAPTER = "ab" * 32


class ProtocolChain:
    def __init__(self, db: Path, n_experts: int, domains: list[str], experts_params: dict[str, Any] | None = None,
                 inference_params: dict[str, Any] | None = None) -> None:
        self.experts = [deterministic_key(f"expert{i}") for i in range(n_experts)]
        self.requester = deterministic_key("requester")
        self.reporter = deterministic_key("reporter")
        everyone = [*self.experts, self.requester, self.reporter]
        genesis = {
            "bank": {"balances": [{"address": k.address, "amount": str(FUNDS)} for k in everyone]},
            "experts": {"params": {"domains": domains, "max_missed": 2, **(experts_params or {})}},
            "inference": {"params": {"commit_blocks": 3, "reveal_blocks": 3, **(inference_params or {})}},
        }
        self.app = Application(db)
        self.app.init_chain(abci.RequestInitChain(chain_id=CHAIN_ID, app_state_bytes=json.dumps(genesis).encode(),
                                                  initial_height=1, time=Timestamp(seconds=1_700_000_000)))
        self.height = 0
        self.sequences: dict[str, int] = {}
        self.last_results: list[abci.ExecTxResult] = []

    def tx(self, key: Key, *msgs: Message) -> bytes:
        seq = self.sequences.get(key.address, 0)
        self.sequences[key.address] = seq + 1
        return build_tx(key, CHAIN_ID, seq, list(msgs), fee=5_000, gas_limit=500_000)

    def block(self, *txs: bytes) -> list[abci.ExecTxResult]:
        self.height += 1
        resp = self.app.finalize_block(abci.RequestFinalizeBlock(
            txs=list(txs), height=self.height, hash=hashlib.sha256(b"block%d" % self.height).digest(),
            time=Timestamp(seconds=1_700_000_000 + self.height)))
        self.app.commit(abci.RequestCommit())
        self.last_results = list(resp.tx_results)
        return self.last_results

    def ok(self, *txs: bytes) -> None:
        results = self.block(*txs)
        bad = [r.log for r in results if r.code]
        assert not bad, bad

    def register_all(self, domains: list[str]) -> None:
        self.ok(*[self.tx(k, protocol.register_expert(k, domains, f"127.0.0.1:{7000 + i}", "smollm2-135m", ADAPTER,
                                                     BOND)) for i, k in enumerate(self.experts)])

    def query(self, method: str, request: Message, response: type[Message]) -> Any:
        resp = self.app.query(abci.RequestQuery(path=f"/{QUERY_SERVICE}/{method}", data=request.SerializeToString()))
        assert resp.code == 0, resp.log
        return response.FromString(resp.value)

    def status(self, query_id: int) -> q.QueryStatusResponse:
        return self.query("QueryStatus", q.QueryStatusRequest(query_id=query_id), q.QueryStatusResponse)

    def advance_until(self, query_id: int, phase: int, round_: int | None = None, limit: int = 20) -> None:
        """Empty blocks until the query reaches phase (and round)."""
        for _ in range(limit):
            st = self.status(query_id).query
            if st.phase == phase and (round_ is None or st.round == round_):
                return
            self.block()
        raise AssertionError(f"query {query_id} never reached phase {phase}")

    def key_of(self, address: str) -> Key:
        return next(k for k in [*self.experts, self.requester, self.reporter] if k.address == address)
