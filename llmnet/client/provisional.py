"""Provisional answers: the drawn experts' round-1 answers, fetched off chain as soon as they exist.

Once the chain has drawn a query's respondents (the block after its submit), the requester may ask each
of them for the answer it is giving the query: ExpertService.GenerateStream with the query's id and no
messages, access-signed by the requester (experts/server.py). The answers arrive after about one model
call, long before the chain's rounds, scoring and settlement end. Each is signed by its expert over the
request and the text, so it is provable, but it is provisional: nobody has scored it, later rounds may
change it, and the settled answer may be another respondent's.

An endpoint registered as `tls://host:port` is reached over TLS (system roots); `host:port` in plaintext.
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from llmnet.client.expert_api import sign_access, verify_served
from llmnet.client.keys import Key
from llmnet.client.sdk import Client, ClientError
from wire.llmnet.expert.v1 import expert_pb2 as pb
from wire.llmnet.expert.v1 import expert_pb2_grpc
from wire.llmnet.inference.v1 import inference_pb2 as inf

TLS_PREFIX = "tls://"
STREAM_TIMEOUT = 60.0
MAX_STREAMED_CHARS = 16_384
"""Far beyond any answer an expert's token limit allows; a stream longer than that is refused."""
RETRY_UNAVAILABLE_FOR = 10.0
"""How long an ask refused with UNAVAILABLE before any text is asked again: the expert's node may be a
block or two behind the requester's and not know the draw yet, or the expert is restarting. (A fetch
that is streaming when it runs out still has its STREAM_TIMEOUT.)"""


class _NotYet(Exception):
    def __init__(self, err: grpc.RpcError) -> None:
        super().__init__(str(err))
        self.err = err


@dataclass(frozen=True)
class Provisional:
    """One drawn expert's round-1 answer, or why there is none."""

    expert: str
    text: str = ""
    signature: str = ""
    """The expert's signature (hex) over ServedAnswerSignDoc; checked against its on-chain public key."""
    seconds: float = 0.0
    """From the start of the ask to the whole answer."""
    error: str = ""


_HOST_PORT = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}"
                        r"[A-Za-z0-9])?)*|\[[0-9A-Fa-f:.]+\]):([0-9]{1,5})")


_SCHEMES = frozenset({"unix", "unix-abstract", "vsock", "dns", "ipv4", "ipv6", "xds", "google-c2p"})
"""Target schemes gRPC knows: refused as host names too, so `unix:1234` reads as nothing but an error."""


def endpoint_target(endpoint: str) -> tuple[str, bool]:
    """An expert's endpoint as a gRPC target and whether it is reached over TLS: `host:port` or
    `tls://host:port`, nothing else (ValueError). The chain takes any text as an endpoint, and gRPC reads a
    target's scheme (`unix:/path`, `dns:`, `ipv4:`...): an expert could otherwise make every requester that
    draws it open a local socket of its choosing."""
    tls = endpoint.startswith(TLS_PREFIX)
    target = endpoint[len(TLS_PREFIX):] if tls else endpoint
    shape = _HOST_PORT.fullmatch(target)
    if shape is None or not 0 < int(shape.group(1)) < 65536 or shape.group(0).split(":")[0].lower() in _SCHEMES:
        raise ValueError(f"the expert's endpoint {endpoint[:80]!r} is not host:port or tls://host:port")
    return "dns:///" + target, tls  # named resolver: gRPC never reads the host as a scheme ("unix:1234")


MAX_MESSAGE_BYTES = 4 * MAX_STREAMED_CHARS + 4096
"""The largest message taken from an expert: a whole answer within MAX_STREAMED_CHARS (up to 4 bytes a
character), its signature and counts. gRPC's default (4 MiB) let a drawn expert push megabytes at a requester."""


def channel_for(endpoint: str) -> grpc.Channel:
    target, tls = endpoint_target(endpoint)
    options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
    return grpc.secure_channel(target, grpc.ssl_channel_credentials(), options) if tls else \
        grpc.insecure_channel(target, options)


class ProvisionalAnswers:
    """Fetches every respondent's answer of a drawn query side by side. `on_delta(expert, text)` sees the
    text as it is generated (unverified until the whole answer's signature is checked), `on_answer` each
    finished (or failed) answer; both run on worker threads. `close` cancels what is still running."""

    def __init__(self, client: Client, key: Key, chain_id: str, started: float,
                 on_answer: Callable[[Provisional], None],
                 on_delta: Callable[[str, str], None] | None = None) -> None:
        self.client, self.key, self.chain_id, self.started = client, key, chain_id, started
        self.on_answer, self.on_delta = on_answer, on_delta
        self.answers: list[Provisional] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._calls: list[Any] = []
        self._closed = threading.Event()
        """Set by close() (under _lock, so no call is registered after it): a fetch waiting to ask again stops."""

    def start(self, query: inf.Query) -> None:
        """Begin fetching (returns at once). Only a query that drew respondents has answers to fetch."""
        # daemon threads: a stalled expert must never keep the program from exiting
        self._threads = [threading.Thread(target=self._fetch, args=(query.id, expert), daemon=True,
                                          name=f"provisional-{expert}") for expert in query.respondents]
        for thread in self._threads:
            thread.start()

    def wait(self, timeout: float | None = None) -> list[Provisional]:
        """The answers (and failures) so far, first the earliest answer, once every fetch ended or timeout
        passed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        with self._lock:
            return sorted(self.answers, key=lambda a: (a.error != "", a.seconds))

    def close(self) -> None:
        """Cancel every fetch still running (the settled answer is there: nobody waits for these any more)."""
        with self._lock:
            self._closed.set()
            calls = list(self._calls)
        for call in calls:
            call.cancel()

    def _fetch(self, query_id: int, expert: str) -> None:
        try:
            answer = self._ask_until_known(query_id, expert)
        except grpc.RpcError as err:
            answer = Provisional(expert, error=f"{err.code().name}: {err.details()}")  # type: ignore[attr-defined]
        except (ClientError, ValueError) as err:
            answer = Provisional(expert, error=str(err))
        with self._lock:
            self.answers.append(answer)
        self.on_answer(answer)

    def _ask_until_known(self, query_id: int, expert: str) -> Provisional:
        endpoint = self.client.expert(expert).expert.endpoint
        public_key = self.client.account(expert).account.public_key
        deadline, pause = time.monotonic() + RETRY_UNAVAILABLE_FOR, 0.2
        while True:
            try:
                return self._ask(query_id, expert, endpoint, public_key)
            except _NotYet as not_yet:
                if time.monotonic() + pause > deadline or self._closed.wait(pause):  # close() wakes it at once
                    raise not_yet.err from None
            pause = min(pause * 2, 1.0)

    def _ask(self, query_id: int, expert: str, endpoint: str, public_key: bytes) -> Provisional:
        request = sign_access(self.key, self.chain_id, pb.GenerateRequest(
            query_id=query_id, round=1, access_nonce=secrets.randbits(63)), expert)
        with channel_for(endpoint) as channel:
            stream = expert_pb2_grpc.ExpertServiceStub(channel).GenerateStream(
                pb.GenerateStreamRequest(request=request), timeout=STREAM_TIMEOUT)
            with self._lock:
                if self._closed.is_set():
                    raise ValueError("stopped: the query settled first")
                self._calls.append(stream)
            streamed, received = 0, False
            try:
                for message in stream:
                    received = True
                    if message.HasField("result"):
                        return self._checked(request, message.result, expert, public_key)
                    streamed += len(message.text_delta)
                    if streamed > MAX_STREAMED_CHARS:
                        stream.cancel()
                        raise ValueError(f"{endpoint} streamed over {MAX_STREAMED_CHARS} characters")
                    if self.on_delta is not None and message.text_delta:
                        self.on_delta(expert, message.text_delta)
            except grpc.RpcError as err:
                # only before any text: asking again after some would hand on_delta the same text twice
                if not received and err.code() == grpc.StatusCode.UNAVAILABLE:  # type: ignore[attr-defined]
                    raise _NotYet(err) from None
                raise
        raise ValueError(f"{endpoint} ended the stream without an answer")

    def _checked(self, request: pb.GenerateRequest, result: pb.GenerateResponse, expert: str, public_key: bytes
                 ) -> Provisional:
        """The answer, once it is signed by the expert for this request on this chain. (The pieces streamed
        before it are not signed: a decoder may still rewrite a half-decoded character, so only the whole
        answer is checked.)"""
        if len(result.text) > MAX_STREAMED_CHARS:
            raise ValueError(f"{expert}'s answer is over {MAX_STREAMED_CHARS} characters")
        if result.chain_id != self.chain_id or not verify_served(request, result, public_key):
            raise ValueError(f"the answer is not signed by {expert} for this request on {self.chain_id}")
        return Provisional(expert, result.text.strip() or "(no answer)", result.signature.hex(),
                           round(time.monotonic() - self.started, 3))
