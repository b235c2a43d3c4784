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

import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass

import grpc

from llmnet.client.expert_api import sign_access, verify_served
from llmnet.client.keys import Key
from llmnet.client.sdk import Client, ClientError
from wire.llmnet.expert.v1 import expert_pb2 as pb
from wire.llmnet.expert.v1 import expert_pb2_grpc
from wire.llmnet.inference.v1 import inference_pb2 as inf

TLS_PREFIX = "tls://"
STREAM_TIMEOUT = 120.0


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


def channel_for(endpoint: str) -> grpc.Channel:
    if endpoint.startswith(TLS_PREFIX):
        return grpc.secure_channel(endpoint[len(TLS_PREFIX):], grpc.ssl_channel_credentials())
    return grpc.insecure_channel(endpoint)


class ProvisionalAnswers:
    """Fetches every respondent's answer of a drawn query side by side. `on_delta(expert, text)` sees the
    text as it is generated, `on_answer` each finished (or failed) answer; both run on worker threads."""

    def __init__(self, client: Client, key: Key, chain_id: str, started: float,
                 on_answer: Callable[[Provisional], None],
                 on_delta: Callable[[str, str], None] | None = None) -> None:
        self.client, self.key, self.chain_id, self.started = client, key, chain_id, started
        self.on_answer, self.on_delta = on_answer, on_delta
        self.answers: list[Provisional] = []
        self._lock = threading.Lock()
        self._fetches: list[Future[None]] = []

    def start(self, query: inf.Query) -> None:
        """Begin fetching (returns at once). Only a query that drew respondents has answers to fetch."""
        respondents = list(query.respondents)
        if not respondents:
            return
        pool = ThreadPoolExecutor(max_workers=len(respondents), thread_name_prefix="provisional")
        self._fetches = [pool.submit(self._fetch, query.id, expert) for expert in respondents]
        pool.shutdown(wait=False)  # its threads end with their fetches

    def wait(self, timeout: float | None = None) -> list[Provisional]:
        """The answers (and failures) so far, first the earliest answer, once every fetch ended or timeout
        passed."""
        futures_wait(self._fetches, timeout=timeout)
        with self._lock:
            return sorted(self.answers, key=lambda a: (a.error != "", a.seconds))

    def _fetch(self, query_id: int, expert: str) -> None:
        try:
            answer = self._ask(query_id, expert)
        except grpc.RpcError as err:
            answer = Provisional(expert, error=f"{err.code().name}: {err.details()}")  # type: ignore[attr-defined]
        except (ClientError, ValueError) as err:
            answer = Provisional(expert, error=str(err))
        with self._lock:
            self.answers.append(answer)
        self.on_answer(answer)

    def _ask(self, query_id: int, expert: str) -> Provisional:
        endpoint = self.client.expert(expert).expert.endpoint
        public_key = self.client.account(expert).account.public_key
        request = sign_access(self.key, self.chain_id, pb.GenerateRequest(
            query_id=query_id, round=1, access_nonce=secrets.randbits(63)), expert)
        with channel_for(endpoint) as channel:
            stream = expert_pb2_grpc.ExpertServiceStub(channel).GenerateStream(
                pb.GenerateStreamRequest(request=request), timeout=STREAM_TIMEOUT)
            for message in stream:
                if message.HasField("result"):
                    result = message.result
                    if not verify_served(request, result, public_key):
                        raise ValueError(f"the answer from {endpoint} is not signed by {expert}")
                    return Provisional(expert, result.text.strip() or "(no answer)", result.signature.hex(),
                                       round(time.monotonic() - self.started, 3))
                if self.on_delta is not None and message.text_delta:
                    self.on_delta(expert, message.text_delta)
        raise ValueError(f"{endpoint} ended the stream without an answer")
