"""A hostile expert against the requester's provisional-answer fetch (real gRPC on loopback; the node's
lookups of endpoint and public key are a stand-in): nothing it serves is shown as signed unless it is, it
cannot flood the requester, and a stall never holds `llmnet ask` or the gateway."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from types import SimpleNamespace

import grpc
import pytest

from llmnet.client.expert_api import served_answer_sign_bytes
from llmnet.client.provisional import MAX_STREAMED_CHARS, ProvisionalAnswers
from tests.helpers import deterministic_key
from wire.llmnet.expert.v1 import expert_pb2 as pb
from wire.llmnet.expert.v1 import expert_pb2_grpc
from wire.llmnet.inference.v1 import inference_pb2 as inf

EXPERT, REQUESTER = deterministic_key("hostile-expert"), deterministic_key("victim-requester")
CHAIN = "test-chain"


class Hostile(expert_pb2_grpc.ExpertServiceServicer):
    def __init__(self) -> None:
        self.mode = ""
        self.gone = threading.Event()

    def GenerateStream(self, request: pb.GenerateStreamRequest, context: grpc.ServicerContext
                       ) -> Iterator[pb.GenerateStreamResponse]:  # noqa: N802
        req = request.request
        if self.mode == "other-chain":  # a real signature, made for another chain
            text = "forty-two"
            signature = EXPERT.sign(served_answer_sign_bytes("other-chain", req, EXPERT.address, text))
            yield pb.GenerateStreamResponse(result=pb.GenerateResponse(
                text=text, expert=EXPERT.address, signature=signature, chain_id="other-chain"))
        elif self.mode == "flood":
            for _ in range(MAX_STREAMED_CHARS // 1000 + 5):
                yield pb.GenerateStreamResponse(text_delta="x" * 1000)
        elif self.mode in ("big-result", "huge-result"):  # signed, whole, and far over any answer's size
            text = "x" * (MAX_STREAMED_CHARS + 1 if self.mode == "big-result" else 3_000_000)
            signature = EXPERT.sign(served_answer_sign_bytes(CHAIN, req, EXPERT.address, text))
            yield pb.GenerateStreamResponse(result=pb.GenerateResponse(
                text=text, expert=EXPERT.address, signature=signature, chain_id=CHAIN))
        elif self.mode == "stall":
            context.add_callback(self.gone.set)
            self.gone.wait(30)
        else:  # honest
            text = "Marta Vensel"
            signature = EXPERT.sign(served_answer_sign_bytes(CHAIN, req, EXPERT.address, text))
            yield pb.GenerateStreamResponse(text_delta=text)
            yield pb.GenerateStreamResponse(result=pb.GenerateResponse(
                text=text, expert=EXPERT.address, signature=signature, chain_id=CHAIN))


@pytest.fixture(scope="module")
def hostile() -> Iterator[tuple[Hostile, SimpleNamespace]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    servicer = Hostile()
    expert_pb2_grpc.add_ExpertServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    node = SimpleNamespace(  # what the chain says of the expert: where it is and its key
        expert=lambda address: SimpleNamespace(expert=SimpleNamespace(endpoint=f"127.0.0.1:{port}")),
        account=lambda address: SimpleNamespace(account=SimpleNamespace(public_key=EXPERT.public_key)))
    yield servicer, node
    server.stop(0)


def fetch(node: SimpleNamespace, wait: float = 10) -> tuple[ProvisionalAnswers, list[object]]:
    answers = ProvisionalAnswers(node, REQUESTER, CHAIN, time.monotonic(), lambda a: None)  # type: ignore[arg-type]
    answers.start(inf.Query(id=3, respondents=[EXPERT.address]))
    return answers, answers.wait(timeout=wait)  # type: ignore[return-value]


def test_an_honest_answer_is_shown_as_signed(hostile) -> None:  # type: ignore[no-untyped-def]
    servicer, node = hostile
    servicer.mode = ""
    _, got = fetch(node)
    assert [(a.text, a.error) for a in got] == [("Marta Vensel", "")]  # type: ignore[attr-defined]


def test_a_signature_made_for_another_chain_is_not_shown_as_signed(hostile) -> None:  # type: ignore[no-untyped-def]
    servicer, node = hostile
    servicer.mode = "other-chain"
    _, got = fetch(node)
    assert got[0].text == "" and "not signed" in got[0].error  # type: ignore[attr-defined]


def test_a_flood_of_streamed_text_is_cut_off(hostile) -> None:  # type: ignore[no-untyped-def]
    servicer, node = hostile
    servicer.mode = "flood"
    seen: list[str] = []
    answers = ProvisionalAnswers(node, REQUESTER, CHAIN, time.monotonic(), lambda a: None,  # type: ignore[arg-type]
                                 on_delta=lambda expert, text: seen.append(text))
    answers.start(inf.Query(id=4, respondents=[EXPERT.address]))
    got = answers.wait(timeout=10)
    assert "streamed over" in got[0].error and sum(map(len, seen)) <= MAX_STREAMED_CHARS


@pytest.mark.parametrize("mode, why", [("big-result", "over 16384 characters"), ("huge-result", "larger than max")])
def test_a_signed_answer_of_megabytes_is_refused(hostile, mode: str, why: str) -> None:  # type: ignore[no-untyped-def]
    """Only the streamed pieces were counted: a whole answer of 3 MB, signed, was shown as it came. A long one is
    refused once read; one of megabytes is not even read (the channel takes no message over 68 KB)."""
    servicer, node = hostile
    servicer.mode = mode
    _, got = fetch(node)
    assert got[0].text == "" and why in got[0].error  # type: ignore[attr-defined]


def test_a_stalling_expert_is_dropped_once_the_query_settled(hostile) -> None:  # type: ignore[no-untyped-def]
    servicer, node = hostile
    servicer.mode = "stall"
    servicer.gone.clear()
    answers, got = fetch(node, wait=0.5)
    assert got == []  # the caller moved on after its short wait
    answers.close()  # what ask and the gateway do once the query settled
    assert servicer.gone.wait(10)  # the call was cancelled: the expert sees its client leave
    answers.wait(timeout=10)
    assert not any(t.is_alive() for t in answers._threads)  # noqa: SLF001 - no fetch thread outlives it


def test_an_endpoint_naming_a_local_socket_is_never_dialled(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The chain takes any text as an endpoint, and gRPC reads a target's scheme: an expert registered at
    `unix:/path` would make every requester that draws it write to a local socket of its choosing."""
    import socket

    path = tmp_path / "victim.sock"
    victim = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    victim.bind(str(path))
    victim.listen(1)
    victim.settimeout(1.0)
    for endpoint in (f"unix:{path}", f"unix://{path}", f"tls://unix:{path}", "dns:///localhost:1", "no port",
                     "unix:1234", "unix-abstract:99", "tls://vsock:5"):
        node = SimpleNamespace(
            expert=lambda address, e=endpoint: SimpleNamespace(expert=SimpleNamespace(endpoint=e)),
            account=lambda address: SimpleNamespace(account=SimpleNamespace(public_key=EXPERT.public_key)))
        _, got = fetch(node)
        assert got[0].text == "" and "is not host:port" in got[0].error, endpoint  # type: ignore[attr-defined]
    with pytest.raises(TimeoutError):
        victim.accept()  # nobody connected
    victim.close()


def test_an_expert_cannot_register_an_endpoint_requesters_refuse(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "experts.cli", "register", "--domain", "d", "--endpoint",
                          "unix:/run/docker.sock", "--bond", "5000000", "--key", "k", "--keyring", str(tmp_path),
                          "--node", "127.0.0.1:1"], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "is not host:port" in out.stderr and "Traceback" not in out.stderr
