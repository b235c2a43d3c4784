"""Building blocks for tests: an in-process app with funded keys, and blocks fed to it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf.timestamp_pb2 import Timestamp

from abci_app.app import Application
from llmnet.client.keys import Key
from llmnet.client.txbuilder import build_tx, send_msg
from wire.tendermint.abci import types_pb2 as abci

CHAIN_ID = "test-chain"
FUNDS = 1_000_000_000


def deterministic_key(name: str) -> Key:
    return Key(name, hashlib.sha256(name.encode()).digest())


@dataclass
class Harness:
    app: Application
    keys: list[Key]
    height: int = 0
    sequences: dict[str, int] = field(default_factory=dict)

    @classmethod
    def create(cls, db: Path, n_keys: int = 4, funds: int = FUNDS) -> Harness:
        keys = [deterministic_key(f"key{i}") for i in range(n_keys)]
        app = Application(db)
        genesis = {"bank": {"balances": [{"address": k.address, "amount": str(funds)} for k in keys]}}
        app.init_chain(abci.RequestInitChain(chain_id=CHAIN_ID, app_state_bytes=json.dumps(genesis).encode(),
                                             initial_height=1, time=Timestamp(seconds=1_700_000_000)))
        return cls(app, keys)

    def send_tx(self, sender: int, recipient: int, amount: int, fee: int = 2_000, sequence: int | None = None,
                chain_id: str = CHAIN_ID) -> bytes:
        key = self.keys[sender]
        seq = self.sequences.get(key.address, 0) if sequence is None else sequence
        if sequence is None:
            self.sequences[key.address] = seq + 1
        return build_tx(key, chain_id, seq, [send_msg(key.address, self.keys[recipient].address, amount)], fee=fee)

    def block(self, txs: list[bytes]) -> abci.ResponseFinalizeBlock:
        self.height += 1
        req = abci.RequestFinalizeBlock(txs=txs, height=self.height, hash=hashlib.sha256(b"%d" % self.height).digest(),
                                        time=Timestamp(seconds=1_700_000_000 + self.height))
        resp = self.app.finalize_block(req)
        self.app.commit(abci.RequestCommit())
        return resp

    def balance(self, i: int) -> int:
        from abci_app.context import BlockEnv, Ctx
        from abci_app.crypto import parse_address
        from abci_app.store.state import State

        ctx = Ctx(State(self.app.committed), BlockEnv(CHAIN_ID, self.height, 0, b""))
        return self.app.bank.balance(ctx, parse_address(self.keys[i].address))
