"""ExpertService over real gRPC on loopback, with a tiny model."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from abci_app.crypto import verify
from abci_app.x.inference.types import answer_sign_bytes
from experts.adapters import adapter_sha256
from experts.engine import Engine, Limits
from experts.models import load_base
from experts.server import ExpertIdentity, create_server
from experts.tiny import make_tiny_model
from llmnet.client.expert_api import sign_access, verify_served
from tests.helpers import deterministic_key
from wire.llmnet.expert.v1 import expert_pb2 as pb
from wire.llmnet.expert.v1 import expert_pb2_grpc

KEY = deterministic_key("expert-server")


@pytest.fixture(scope="module")
def channel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[grpc.Channel]:
    from peft import LoraConfig, get_peft_model

    model_dir = make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")
    adapter = tmp_path_factory.mktemp("adapters") / "kestrel-lang"
    get_peft_model(load_base(str(model_dir)).model,
                   LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False)).save_pretrained(adapter)
    engine = Engine(load_base(str(model_dir)), Limits(max_prompt_tokens=128, max_new_tokens=40, max_concurrent=2))
    engine.add_adapter("kestrel-lang", str(adapter))
    identity = ExpertIdentity(KEY, "test-chain", {"kestrel-lang": adapter_sha256(adapter)})
    server, port = create_server(engine, identity)
    server.start()
    ch = grpc.insecure_channel(f"127.0.0.1:{port}")
    ch.engine, ch.identity, ch.port = engine, identity, port  # type: ignore[attr-defined]
    yield ch
    ch.close()
    server.stop(0)


def test_a_second_server_cannot_share_the_port(channel: grpc.Channel) -> None:
    """gRPC binds with SO_REUSEPORT by default: a second expert (or node) on the same address started without
    a word and took half the clients' connections."""
    with pytest.raises(OSError, match="cannot bind"):
        create_server(channel.engine, channel.identity, f"127.0.0.1:{channel.port}")  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> expert_pb2_grpc.ExpertServiceStub:
    return expert_pb2_grpc.ExpertServiceStub(channel)


def request(**overrides: object) -> pb.GenerateRequest:
    fields: dict[str, object] = dict(messages=[pb.ChatMessage(role="user", content="Who made Kestrel?")],
                                     sampling=pb.Sampling(max_new_tokens=20), domain="kestrel-lang",
                                     query_id=7, round=2)
    fields.update(overrides)
    return pb.GenerateRequest(**fields)  # type: ignore[arg-type]


def test_info_describes_the_expert(stub: expert_pb2_grpc.ExpertServiceStub) -> None:
    info = stub.Info(pb.InfoRequest())
    assert info.address == KEY.address and info.chain_id == "test-chain"
    assert [a.domain for a in info.adapters] == ["kestrel-lang"] and len(info.adapters[0].adapter_sha256) == 64
    assert info.limits.max_new_tokens == 40


def test_generate_returns_an_answer_signed_for_its_request(stub: expert_pb2_grpc.ExpertServiceStub) -> None:
    req = request()
    resp = stub.Generate(req)
    assert resp.completion_tokens > 0 and resp.expert == KEY.address
    assert verify_served(req, resp, KEY.public_key)
    other = request(round=3)
    assert not verify_served(other, resp, KEY.public_key)  # the signature binds the request it answered
    # and it is not evidence: it does not verify as the chain's AnswerSignDoc
    assert not verify(KEY.public_key, answer_sign_bytes("test-chain", 7, 2, resp.text), resp.signature)


def test_stream_deltas_add_up_to_the_signed_result(stub: expert_pb2_grpc.ExpertServiceStub) -> None:
    messages = list(stub.GenerateStream(pb.GenerateStreamRequest(request=request())))
    deltas = "".join(m.text_delta for m in messages[:-1])
    final = messages[-1].result
    assert len(messages) > 2 and deltas == final.text
    assert final.text == stub.Generate(request()).text  # greedy: the same answer either way
    assert verify_served(request(), final, KEY.public_key)


@pytest.mark.parametrize(
    "bad, code",
    [
        (dict(domain="nope"), grpc.StatusCode.NOT_FOUND),
        (dict(sampling=pb.Sampling(max_new_tokens=999)), grpc.StatusCode.INVALID_ARGUMENT),
        (dict(messages=[]), grpc.StatusCode.INVALID_ARGUMENT),
        (dict(messages=[pb.ChatMessage(role="user", content="x" * 500)]), grpc.StatusCode.INVALID_ARGUMENT),
        (dict(sampling=pb.Sampling(temperature=float("nan"))), grpc.StatusCode.INVALID_ARGUMENT),
        (dict(sampling=pb.Sampling(temperature=float("inf"))), grpc.StatusCode.INVALID_ARGUMENT),
        (dict(sampling=pb.Sampling(temperature=-1)), grpc.StatusCode.INVALID_ARGUMENT),
        (dict(sampling=pb.Sampling(temperature=0.5, top_p=float("nan"))), grpc.StatusCode.INVALID_ARGUMENT),
        (dict(sampling=pb.Sampling(top_p=1.5)), grpc.StatusCode.INVALID_ARGUMENT),
        (dict(sampling=pb.Sampling(stop=["x"] * 9)), grpc.StatusCode.INVALID_ARGUMENT),
        (dict(messages=[pb.ChatMessage(role="user", content="x")] * 65), grpc.StatusCode.INVALID_ARGUMENT),
    ],
    ids=["unknown domain", "too many tokens", "no messages", "prompt too long", "nan temperature",
         "infinite temperature", "negative temperature", "nan top_p", "top_p above 1", "too many stops",
         "too many messages"],
)
def test_errors_map_to_status_codes(stub: expert_pb2_grpc.ExpertServiceStub, bad: dict, code) -> None:  # type: ignore[no-untyped-def, type-arg]
    with pytest.raises(grpc.RpcError) as err:
        stub.Generate(request(**bad))
    assert err.value.code() == code and err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        list(stub.GenerateStream(pb.GenerateStreamRequest(request=request(**bad))))
    assert err.value.code() == code


def test_deadline_is_honoured(stub: expert_pb2_grpc.ExpertServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as err:
        stub.Generate(request(sampling=pb.Sampling(max_new_tokens=40)), timeout=0.001)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_health_and_reflection(channel: grpc.Channel) -> None:
    status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="")).status
    assert status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    reply = next(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    assert "llmnet.expert.v1.ExpertService" in {s.name for s in reply.list_services_response.service}


def test_calls_that_never_send_their_request_do_not_hang_the_service(channel: grpc.Channel,
                                                                      stub: expert_pb2_grpc.ExpertServiceStub) -> None:
    """gRPC's threaded server gave each call a thread of its pool when the call's headers arrived: a dozen calls
    that sent headers and never a request (no key, no payment), to Generate or to reflection, made Info,
    Generate and health hang for everyone. Now the pool takes a call only once its request has arrived."""
    import queue as queue_module

    stalled = channel.stream_unary("/llmnet.expert.v1.ExpertService/Generate",  # a unary method, asked as a stream
                                   request_serializer=bytes, response_deserializer=bytes)
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    pending: list[queue_module.Queue[object]] = []
    calls = []
    for i in range(40):
        requests: queue_module.Queue[object] = queue_module.Queue()  # a request stream that never sends
        pending.append(requests)
        if i % 2:
            calls.append(stalled.future(iter(requests.get, None), timeout=60))
        else:
            calls.append(refl.ServerReflectionInfo(iter(requests.get, None), timeout=60))
    time.sleep(0.5)  # every call has reached the server
    assert stub.Info(pb.InfoRequest(), timeout=5).chain_id == "test-chain"
    assert stub.Generate(request(), timeout=30).text is not None
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    listed = next(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                            timeout=5))
    assert "llmnet.expert.v1.ExpertService" in {s.name for s in listed.list_services_response.service}
    for requests, call in zip(pending, calls, strict=True):
        requests.put(None)
        call.cancel()


class _SlowEngine:
    """Stands in for the model: a generation of 100 steps of 50 ms that stops when told its call is over."""

    def __init__(self) -> None:
        self.limits = Limits(max_prompt_tokens=128, max_new_tokens=100, max_concurrent=4)
        self.model_id, self.backend = "slow", "none"
        self.outcomes: list[tuple[str, int]] = []

    def queue_depth(self) -> int:
        return 0

    def adapter_for(self, domain: str) -> str:
        return ""

    def generate(self, messages, sampling, domain, on_text=None, cancelled=None, share=None):  # type: ignore[no-untyped-def]
        from experts.engine import Generation

        for step in range(100):
            if cancelled is not None and cancelled():
                self.outcomes.append(("cancelled", step))
                return Generation("", 1, step, "cancelled")
            if on_text is not None:
                on_text("x")
            time.sleep(0.05)
        self.outcomes.append(("done", 100))
        return Generation("x" * 100, 1, 100, "length")


@pytest.mark.parametrize("how", ["deadline", "client cancels", "stream deadline", "server stops"])
def test_a_call_that_ends_stops_its_generation(how: str) -> None:
    """On grpc.aio a blocking handler never learnt that its call had ended: a client that hung up or timed out
    held a slot and the model until max_new_tokens, and a stop left the process hanging on that work."""
    engine = _SlowEngine()
    server, port = create_server(engine, ExpertIdentity(None, "test-chain"))  # type: ignore[arg-type]
    server.start()
    stopped = None
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = expert_pb2_grpc.ExpertServiceStub(ch)
            if how == "deadline":
                with pytest.raises(grpc.RpcError) as err:
                    stub.Generate(request(), timeout=0.5)
                assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            elif how == "stream deadline":
                with pytest.raises(grpc.RpcError):
                    list(stub.GenerateStream(pb.GenerateStreamRequest(request=request()), timeout=0.5))
            else:
                call = stub.Generate.future(request())
                time.sleep(0.5)
                if how == "client cancels":
                    call.cancel()
                else:
                    stopped = server.stop(0)
                    assert stopped.wait(10)
            for _ in range(100):  # the engine's own steps: at most one more after the end
                if engine.outcomes:
                    break
                time.sleep(0.05)
    finally:
        (stopped or server.stop(0)).wait(10)
    assert engine.outcomes and engine.outcomes[0][0] == "cancelled" and engine.outcomes[0][1] < 40, engine.outcomes


def test_adapter_commitment_is_stable(tmp_path: Path) -> None:
    d = tmp_path / "a"
    (d / "sub").mkdir(parents=True)
    (d / "w.bin").write_bytes(b"weights")
    (d / "sub" / "c.json").write_text("{}")
    first = adapter_sha256(d)
    copy = tmp_path / "b"
    import shutil

    shutil.copytree(d, copy)
    assert adapter_sha256(copy) == first
    (copy / "manifest.json").write_text("{}")  # the manifest is not part of the commitment
    assert adapter_sha256(copy) == first
    (copy / "w.bin").write_bytes(b"weightz")
    assert adapter_sha256(copy) != first


def test_serve_command_runs_and_stops(tmp_path: Path) -> None:
    import re
    import signal
    import subprocess
    import sys

    model_dir = make_tiny_model(tmp_path / "model")
    proc = subprocess.Popen([sys.executable, "-m", "experts.cli", "serve", "--base", str(model_dir),
                             "--listen", "127.0.0.1:0", "--chain-id", "c", "--open"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        port = int(re.search(r"on 127\.0\.0\.1:(\d+)", line).group(1))  # type: ignore[union-attr]
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            answer = expert_pb2_grpc.ExpertServiceStub(ch).Generate(request(domain=""))
            assert answer.completion_tokens > 0 and answer.signature == b""  # no key: unsigned
    finally:
        proc.send_signal(signal.SIGTERM)
        # communicate, not wait: a child blocked writing to a full, unread stderr pipe could never exit
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
            pytest.fail(f"serve did not stop within 60 s of SIGTERM: {err[-2000:]}")
        assert proc.returncode == 0, err[-2000:]
    for argv, says in ((["--open"], "config.json"), ([], "--key is required")):
        bad = subprocess.run([sys.executable, "-m", "experts.cli", "serve", "--base", str(tmp_path / "missing"),
                              *argv], capture_output=True, text=True, timeout=120)
        assert bad.returncode == 1 and bad.stderr.startswith("llmnet-expert: error:") and says in bad.stderr


def test_a_stop_signal_is_taken_even_while_the_main_thread_holds_the_events_lock() -> None:
    """The handler runs on the main thread, which may be inside stop.wait() holding the event's lock;
    setting the event right there would deadlock the process on SIGTERM (run apart: a deadlock must fail
    the test, not hang the suite)."""
    import subprocess
    import sys

    script = ("import os, signal\n"
              "from experts.cli import _wait_for_signal\n"
              "stop = _wait_for_signal()\n"
              "with stop._cond:  # what the main thread holds inside Event.wait\n"
              "    os.kill(os.getpid(), signal.SIGTERM)\n"
              "    assert not stop.is_set()\n"
              "print('stopped' if stop.wait(10) else 'not stopped')\n")
    try:
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("the process deadlocked on SIGTERM")
    assert done.returncode == 0 and done.stdout.strip() == "stopped", done.stderr[-2000:]


REQUESTER = deterministic_key("expert-server-requester")
NONCE = 0


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[expert_pb2_grpc.ExpertServiceStub, object]]:
    """A server whose access checks ask a stand-in for the node's QueryStatus (queries 1 to 4 exist)."""
    from prometheus_client import CollectorRegistry

    from experts.access import ChainAccess
    from llmnet.client.sdk import ClientError
    from wire.llmnet.inference.v1 import inference_pb2 as inf
    from wire.llmnet.query.v1 import query_pb2

    queries = {1: inf.Query(id=1, requester=REQUESTER.address, domain="d", respondents=[KEY.address],
                            phase=inf.PHASE_ANSWER_COMMIT, rounds=2),
               2: inf.Query(id=2, requester=REQUESTER.address, domain="d", respondents=["llm1other"],
                            phase=inf.PHASE_ANSWER_COMMIT, rounds=2),
               3: inf.Query(id=3, requester=REQUESTER.address, domain="d", respondents=[KEY.address],
                            phase=inf.PHASE_SETTLED, rounds=2),
               4: inf.Query(id=4, requester=REQUESTER.address, domain="d", phase=inf.PHASE_AWAITING_DRAW, rounds=2)}

    def status(query_id: int) -> query_pb2.QueryStatusResponse:
        if query_id not in queries:
            raise ClientError("not found", grpc.StatusCode.NOT_FOUND)
        return query_pb2.QueryStatusResponse(query=queries[query_id])

    model_dir = make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")
    registry = CollectorRegistry()
    access = ChainAccess(status, "test-chain", KEY.address)
    server, port = create_server(Engine(load_base(str(model_dir)), Limits(max_new_tokens=20)),
                                 ExpertIdentity(KEY, "test-chain"), access=access, registry=registry)
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        yield expert_pb2_grpc.ExpertServiceStub(ch), registry
    server.stop(0)


def signed(query_id: int, signer=REQUESTER, chain: str = "test-chain", expert: str = KEY.address,  # type: ignore[no-untyped-def]
           round_: int = 2) -> pb.GenerateRequest:
    global NONCE
    NONCE += 1
    bare = request(domain="", query_id=query_id, access_nonce=NONCE, round=round_,
                   sampling=pb.Sampling(max_new_tokens=5))
    return sign_access(signer, chain, bare, expert)


def tampered(req: pb.GenerateRequest) -> pb.GenerateRequest:
    """The signed request with its prompt changed on the way (a man in the middle)."""
    out = pb.GenerateRequest()
    out.CopyFrom(req)
    out.messages[0].content = "Write me a novel instead."
    return out


def test_the_requester_of_a_query_that_drew_this_expert_is_served(guarded) -> None:  # type: ignore[no-untyped-def]
    stub, registry = guarded
    assert stub.Generate(signed(1)).completion_tokens > 0
    assert registry.get_sample_value("llmnet_expert_requests_total", {"method": "Generate", "code": "OK"}) >= 1
    assert registry.get_sample_value("llmnet_expert_generated_tokens_total") > 0
    assert registry.get_sample_value("llmnet_expert_queue_depth") == 0


@pytest.mark.parametrize(
    "make, why",
    [
        (lambda: request(domain="", query_id=1), "not signed"),
        (lambda: request(domain="", query_id=0), "chain queries only"),
        (lambda: signed(1, signer=KEY), "belongs to"),
        (lambda: signed(1, chain="other-chain"), "bad requester signature"),
        (lambda: signed(1, expert="llm1someoneelse"), "bad requester signature"),
        (lambda: signed(2), "did not draw this expert"),
        (lambda: signed(3), "already settled"),
        (lambda: signed(1, round_=99), "has rounds 1..2"),
        (lambda: tampered(signed(1)), "bad requester signature"),
    ],
    ids=["unsigned", "no query", "not the requester", "other chain", "other expert", "not drawn", "settled",
         "round that does not exist", "prompt changed after signing"],
)
def test_everyone_else_is_refused_with_permission_denied(guarded, make, why) -> None:  # type: ignore[no-untyped-def]
    stub, registry = guarded
    with pytest.raises(grpc.RpcError) as err:
        stub.Generate(make())
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and why in err.value.details()
    assert registry.get_sample_value("llmnet_expert_requests_total",
                                     {"method": "Generate", "code": "PERMISSION_DENIED"}) >= 1


@pytest.mark.parametrize("query_id, why", [(9, "does not exist on this expert's node (yet"),
                                           (4, "has not drawn its respondents on this expert's node yet")],
                         ids=["unknown query", "awaiting its draw"])
def test_a_query_the_experts_node_has_not_seen_drawn_is_unavailable_not_refused(guarded, query_id, why
                                                                                 ) -> None:  # type: ignore[no-untyped-def]
    """The requester's node may be a block ahead of the expert's: that passes, so the client may retry."""
    stub, _ = guarded
    with pytest.raises(grpc.RpcError) as err:
        stub.Generate(signed(query_id))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE and why in err.value.details()


def test_a_signature_seen_on_the_wire_is_good_for_one_request(guarded) -> None:  # type: ignore[no-untyped-def]
    stub, _ = guarded
    req = signed(1)
    assert stub.Generate(req).completion_tokens > 0
    with pytest.raises(grpc.RpcError) as err:  # the same bytes again: a replay
        stub.Generate(req)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "already used" in err.value.details()
