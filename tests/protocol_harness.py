"""The protocol tests' chain: a DevChain with six experts, a requester and a reporter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmnet.client import protocol
from llmnet.devchain import CHAIN_ID, DevChain, seeded_key  # noqa: F401 - CHAIN_ID re-exported for tests

FUNDS = 10**12
BOND = 5_000_000
ADAPTER = "ab" * 32


class ProtocolChain(DevChain):
    def __init__(self, db: Path, n_experts: int, domains: list[str], experts_params: dict[str, Any] | None = None,
                 inference_params: dict[str, Any] | None = None) -> None:
        self.experts = [seeded_key(f"expert{i}") for i in range(n_experts)]
        self.requester = seeded_key("requester")
        self.reporter = seeded_key("reporter")
        super().__init__(db, [*self.experts, self.requester, self.reporter], FUNDS, {
            "experts": {"params": {"domains": domains, "max_missed": 2, **(experts_params or {})}},
            "inference": {"params": {"commit_blocks": 3, "reveal_blocks": 3, **(inference_params or {})}},
        })

    @property
    def last_results(self) -> list:  # type: ignore[type-arg]
        return list(self.last.tx_results)

    def register_all(self, domains: list[str]) -> None:
        self.ok(*[self.tx(k, protocol.register_expert(k, domains, f"127.0.0.1:{7000 + i}", "smollm2-135m", ADAPTER,
                                                     BOND)) for i, k in enumerate(self.experts)])
