"""What a state transition may see: the block environment, the state, a gas meter, an event sink."""

from __future__ import annotations

from dataclasses import dataclass, field

from abci_app.errors import ErrOutOfGas
from abci_app.events import Event
from abci_app.store.state import State

INFINITE_GAS = 1 << 63


@dataclass(frozen=True)
class BlockEnv:
    """Consensus data a transition may read; passed in, never fetched."""

    chain_id: str
    height: int
    time_ns: int
    """Block header time, nanoseconds since the Unix epoch."""
    seed: bytes
    """Consensus-derived randomness seed (the block hash); empty outside FinalizeBlock."""
    last_commit: tuple[tuple[bytes, bool], ...] = ()
    """(validator address, signed) for each validator of the previous height, as the block's last commit
    records it (FinalizeBlock only)."""
    misbehavior: tuple[Misbehavior, ...] = ()
    """Evidence CometBFT committed in this block (FinalizeBlock only)."""
    last_powers: tuple[tuple[bytes, int], ...] = ()
    """(validator address, voting power) of each validator of the previous height, as the block's last commit
    lists them, whether their votes made it in or not (FinalizeBlock only)."""


@dataclass(frozen=True)
class Misbehavior:
    """A validator caught by CometBFT: two votes at one height (or a light-client attack)."""

    address: bytes
    height: int
    kind: int
    """ABCI MisbehaviorType: 1 duplicate vote, 2 light-client attack."""


@dataclass
class GasMeter:
    limit: int
    used: int = 0

    def consume(self, amount: int, what: str) -> None:
        self.used += amount
        if self.used > self.limit:
            raise ErrOutOfGas(f"out of gas in {what}: used {self.used}, limit {self.limit}")


@dataclass(frozen=True)
class GasCosts:
    read_flat: int
    write_per_byte: int


FREE = GasCosts(0, 0)


class KV:
    """One module's store as seen through a context: every access is metered."""

    def __init__(self, ctx: Ctx, name: str) -> None:
        self._ctx = ctx
        self._name = name

    def get(self, key: bytes) -> bytes | None:
        self._ctx.gas.consume(self._ctx.costs.read_flat, "read")
        return self._ctx.state.get(self._name, key)

    def set(self, key: bytes, value: bytes) -> None:
        self._ctx.gas.consume(self._ctx.costs.write_per_byte * (len(key) + len(value)), "write")
        self._ctx.state.set(self._name, key, value)

    def delete(self, key: bytes) -> None:
        self._ctx.gas.consume(self._ctx.costs.write_per_byte * len(key), "delete")
        self._ctx.state.delete(self._name, key)

    def iterate(self, prefix: bytes) -> list[tuple[bytes, bytes]]:
        items = self._ctx.state.iterate(self._name, prefix)
        self._ctx.gas.consume(self._ctx.costs.read_flat * (1 + len(items)), "iterate")
        return items

    def iterate_range(self, start: bytes, end: bytes | None, limit: int | None = None,
                      reverse: bool = False) -> list[tuple[bytes, bytes]]:
        items = self._ctx.state.iterate_range(self._name, start, end, limit, reverse)
        self._ctx.gas.consume(self._ctx.costs.read_flat * (1 + len(items)), "iterate")
        return items


@dataclass
class Ctx:
    state: State
    env: BlockEnv
    gas: GasMeter = field(default_factory=lambda: GasMeter(INFINITE_GAS))
    costs: GasCosts = FREE
    events: list[Event] = field(default_factory=list)
    record_events: bool = True
    """False where no one reads events (the mempool), to save building them."""
    validator_updates: dict[bytes, tuple[bytes, int]] = field(default_factory=dict)
    """Voting-power changes this block (or genesis) hands CometBFT: address -> (ed25519 key, power)."""

    def kv(self, store: str) -> KV:
        return KV(self, store)

    def emit(self, ev: Event) -> None:
        if self.record_events:
            self.events.append(ev)
