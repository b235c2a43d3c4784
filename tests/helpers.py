"""The bank tests' chain: a DevChain with n funded keys, addressed by index."""

from __future__ import annotations

from pathlib import Path

from abci_app.context import BlockEnv, Ctx
from abci_app.crypto import parse_address
from abci_app.store.state import State
from llmnet.client.keys import Key
from llmnet.client.txbuilder import build_tx, send_msg
from llmnet.devchain import DevChain, seeded_key

CHAIN_ID = "test-chain"
FUNDS = 1_000_000_000
deterministic_key = seeded_key  # the name the unit tests know it by


class Harness(DevChain):
    def __init__(self, db: Path, keys: list[Key], funds: int) -> None:
        super().__init__(db, keys, funds, chain_id=CHAIN_ID)

    @classmethod
    def create(cls, db: Path, n_keys: int = 4, funds: int = FUNDS) -> Harness:
        return cls(db, [seeded_key(f"key{i}") for i in range(n_keys)], funds)

    def send_tx(self, sender: int, recipient: int, amount: int, fee: int = 2_000, sequence: int | None = None,
                chain_id: str = CHAIN_ID) -> bytes:
        key = self.keys[sender]
        seq = self.sequences.get(key.address, 0) if sequence is None else sequence
        if sequence is None:
            self.sequences[key.address] = seq + 1
        return build_tx(key, chain_id, seq, [send_msg(key.address, self.keys[recipient].address, amount)], fee=fee)

    def balance(self, i: int) -> int:
        ctx = Ctx(State(self.app.committed), BlockEnv(CHAIN_ID, self.height, 0, b""))
        return self.app.bank.balance(ctx, parse_address(self.keys[i].address))
