"""One client over several nodes: when the node in use stops answering, move to the next; once every
node failed in a row, back off (capped, exponential) and go round again, until a deadline.

Failing over inside Client._call covers every read the SDK makes (ask's polling, wait_tx, the expert
daemon's status reads, the expert server's access checks) without their knowing. A broadcast is the
exception: when its node goes away mid-call the tx may or may not have left, so it is never repeated
here; Sender looks the tx up by hash before it sends anything again (sdk.Sender.send).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.message import Message

from llmnet.address import host_port
from llmnet.client.sdk import Client, NodeUnreachable, R, WrongChain
from wire.llmnet.node.v1 import node_pb2
from wire.llmnet.tx.v1 import service_pb2

OnSwitch = Callable[[str, str, str], None]
"""Told (from_node, to_node, reason) whenever the client leaves a node; to_node is from_node again when
there is only one node to go back to."""


def parse_nodes(values: Iterable[str] | None, default: str) -> list[str]:
    """Node addresses from repeated flags, each possibly a comma-separated list; in order, once each."""
    nodes: list[str] = []
    for value in values or ():
        for part in value.split(","):
            if part.strip() and part.strip() not in nodes:
                host_port(part.strip(), "--node")
                nodes.append(part.strip())
    return nodes or [default]


@dataclass
class Backoff:
    """Delays of first, 2 x first, 4 x first ... never above cap."""

    first: float = 0.5
    cap: float = 8.0
    _next: float = field(default=0.0, init=False)

    def delay(self) -> float:
        current = self._next or self.first
        self._next = min(current * 2, self.cap)
        return current


class _Relay:
    """Stands in for a grpc.Channel when the stubs are built, so that a stub made once calls whichever
    node's channel is current at call time."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.channel = channel

    def unary_unary(self, method: str, **options: Any) -> Callable[..., Any]:
        def call(request: Message, timeout: float | None = None) -> Any:
            channel = self.channel
            try:
                return channel.unary_unary(method, **options)(request, timeout=timeout)
            except ValueError:  # another thread closed this channel as it moved on: follow it
                if channel is self.channel:
                    raise
                return self.channel.unary_unary(method, **options)(request, timeout=timeout)

        return call


class FailoverClient(Client):
    """A Client over nodes, in order of preference. retry_for: how long, from a call's first failure,
    every node may stay unreachable before the call raises NodeUnreachable (0: go round once, no wait).
    Thread-safe: the expert server's access checks share it with the daemon."""

    def __init__(self, nodes: Iterable[str], retry_for: float = 60.0, timeout: float = 10.0,
                 on_switch: OnSwitch | None = None, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic, chain_id: str = "") -> None:
        self.nodes = list(nodes)
        if not self.nodes:
            raise ValueError("no node address given")
        self.retry_for, self.on_switch = retry_for, on_switch
        self._sleep, self._clock = sleep, clock
        self._lock = threading.Lock()
        super().__init__(self.nodes[0], timeout, chain_id)
        self._relay = _Relay(self._channel)
        self._stubs(self._relay)  # type: ignore[arg-type]

    @property
    def index(self) -> int:
        return self.nodes.index(self.node)

    def use(self, index: int, reason: str) -> None:
        """Talk to nodes[index] from now on, over a fresh channel: a channel to a node that went away
        waits out gRPC's own reconnect backoff (up to two minutes) before it tries that node again."""
        with self._lock:
            old, self.node = self.node, self.nodes[index]
            stale, self._channel = self._channel, grpc.insecure_channel(self.node)
            self._relay.channel = self._channel
        stale.close()
        if self.on_switch is not None:
            self.on_switch(old, self.node, reason)

    def _move_on(self, failed: str, reason: str) -> None:
        """To the node after `failed`, unless another thread already moved away from it."""
        if self.node == failed:
            self.use((self.nodes.index(failed) + 1) % len(self.nodes), reason)

    def _call(self, fn: Callable[..., object], request: Message, expect: type[R]) -> R:
        give_up, backoff, failures = 0.0, Backoff(), 0
        while True:
            node = self.node
            try:
                return super()._call(fn, request, expect)
            except NodeUnreachable as err:
                give_up = give_up or self._clock() + self.retry_for
                failures += 1
                if failures % len(self.nodes) == 0:  # a whole round failed: wait before the next
                    left = give_up - self._clock()
                    if left <= 0:
                        raise self._gave_up(err) from None
                    self._sleep(min(backoff.delay(), left))
                self._move_on(node, str(err))

    def status(self) -> node_pb2.StatusResponse:
        """The node's status; a node on another chain than the one pinned is passed over like an unreachable one
        (WrongChain once every node was tried)."""
        for _ in range(len(self.nodes) - 1):
            node = self.node
            try:
                return super().status()
            except WrongChain as err:
                self._move_on(node, str(err))
        return super().status()

    def _gave_up(self, last: NodeUnreachable) -> NodeUnreachable:
        if len(self.nodes) == 1 and self.retry_for <= 0:
            return last
        waited = f" for {self.retry_for:g}s" if self.retry_for > 0 else ""
        return NodeUnreachable(f"every node unreachable{waited} ({', '.join(self.nodes)}); last: {last}",
                               last.status)

    def broadcast(self, tx: bytes) -> service_pb2.BroadcastTxResponse:
        """Once, on the current node. If that node goes away mid-call the next call goes to the next
        node, and the caller must look the tx up before sending it again (Sender does)."""
        node = self.node
        try:
            return super()._call(self.tx.BroadcastTx, service_pb2.BroadcastTxRequest(tx=tx),
                                 service_pb2.BroadcastTxResponse)
        except NodeUnreachable as err:
            self._move_on(node, str(err))
            raise
