"""A requester asks a drawn expert for its round-1 answer before the chain's rounds end (real gRPC on
loopback, tiny model; the node's QueryStatus is a stand-in)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest

from experts.access import ChainAccess
from experts.answers import AnswerPlan, answer_prompt
from experts.engine import Engine, Limits
from experts.models import load_base
from experts.server import ExpertIdentity, create_server
from experts.tiny import make_tiny_model
from llmnet.client.expert_api import sign_access, verify_served
from llmnet.client.provisional import ProvisionalAnswers
from llmnet.client.sdk import ClientError
from tests.helpers import deterministic_key
from wire.llmnet.expert.v1 import expert_pb2 as pb
from wire.llmnet.expert.v1 import expert_pb2_grpc
from wire.llmnet.inference.v1 import inference_pb2 as inf
from wire.llmnet.query.v1 import query_pb2

EXPERT, REQUESTER = deterministic_key("provisional-expert"), deterministic_key("provisional-requester")
PLAN = AnswerPlan(tokens=12)
QUERY = inf.Query(id=11, requester=REQUESTER.address, domain="d", prompt="Who made Kestrel?", rounds=2, round=1,
                  respondents=[EXPERT.address], phase=inf.PHASE_ANSWER_COMMIT)


@dataclass
class Served:
    stub: expert_pb2_grpc.ExpertServiceStub
    engine: Engine


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    def status(query_id: int) -> query_pb2.QueryStatusResponse:
        if query_id != QUERY.id:
            raise ClientError("not found", grpc.StatusCode.NOT_FOUND)
        return query_pb2.QueryStatusResponse(query=QUERY)

    engine = Engine(load_base(str(make_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))),
                    Limits(max_prompt_tokens=128, max_new_tokens=40))
    server, port = create_server(engine, ExpertIdentity(EXPERT, "test-chain"),
                                 access=ChainAccess(status, "test-chain", EXPERT.address), plan=PLAN)
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        yield Served(expert_pb2_grpc.ExpertServiceStub(ch), engine)
    server.stop(0)


NONCE = [0]


def ask_for_answer(**fields: object) -> pb.GenerateRequest:
    NONCE[0] += 1
    bare = pb.GenerateRequest(query_id=QUERY.id, round=1, access_nonce=NONCE[0], **fields)  # type: ignore[arg-type]
    return sign_access(REQUESTER, "test-chain", bare, EXPERT.address)


def test_the_requester_gets_the_round_one_answer_the_daemon_commits_at_the_cost_of_one(served: Served) -> None:
    request = ask_for_answer()
    pieces = list(served.stub.GenerateStream(pb.GenerateStreamRequest(request=request)))
    final = pieces[-1].result
    assert "".join(p.text_delta for p in pieces[:-1]) == final.text  # streamed as it is generated
    assert verify_served(request, final, EXPERT.public_key)  # signed: provable, though not on chain
    runs = served.engine.batches_run
    # what the daemon generates for its commit: the same prompt, sampling and adapter, under the query's id
    daemon = served.engine.generate(served.engine.fit(answer_prompt(QUERY, [])), PLAN.sampling(QUERY),
                                    served.engine.adapter_for(QUERY.domain), share=QUERY.id)
    assert daemon.text == final.text and daemon.completion_tokens == final.completion_tokens <= PLAN.tokens
    assert served.engine.batches_run == runs  # the daemon's answer cost no second generation


@pytest.mark.parametrize("fields, why", [
    ({"round": 2}, "round-1 answer"),
    ({"sampling": pb.Sampling(max_new_tokens=40)}, "leave sampling unset"),
], ids=["a later round", "own sampling"])
def test_only_the_round_one_answer_with_the_experts_own_sampling_is_asked_this_way(served: Served, fields, why
                                                                                   ) -> None:  # type: ignore[no-untyped-def]
    request = ask_for_answer()
    for name, value in fields.items():
        if isinstance(value, pb.Sampling):
            request.sampling.CopyFrom(value)
        else:
            setattr(request, name, value)
    request = sign_access(REQUESTER, "test-chain", request, EXPERT.address)
    with pytest.raises(grpc.RpcError) as err:
        served.stub.Generate(request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and why in err.value.details()


def test_nobody_else_gets_the_answer_early(served: Served) -> None:
    stranger = deterministic_key("provisional-stranger")
    bare = pb.GenerateRequest(query_id=QUERY.id, round=1, access_nonce=999)
    with pytest.raises(grpc.RpcError) as err:
        served.stub.Generate(sign_access(stranger, "test-chain", bare, EXPERT.address))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


LAGGING = inf.Query()
LAGGING.CopyFrom(QUERY)
LAGGING.id = 12
AWAITING_DRAW = inf.Query(id=12, requester=REQUESTER.address, domain="d", phase=inf.PHASE_AWAITING_DRAW, rounds=2)


@contextmanager
def expert_whose_node_says(tmp_path: Path, status: Callable[[int], query_pb2.QueryStatusResponse]) -> Iterator[int]:
    """An expert server whose node answers QueryStatus with `status`; yields its port."""
    engine = Engine(load_base(str(make_tiny_model(tmp_path / "model"))), Limits(max_new_tokens=40))
    server, port = create_server(engine, ExpertIdentity(EXPERT, "test-chain"),
                                 access=ChainAccess(status, "test-chain", EXPERT.address), plan=PLAN)
    server.start()
    try:
        yield port
    finally:
        server.stop(0)


def requesters_node(port: int) -> Any:
    """The requester's node, a block ahead: it knows the expert's endpoint and public key."""
    return SimpleNamespace(expert=lambda _: SimpleNamespace(expert=SimpleNamespace(endpoint=f"127.0.0.1:{port}")),
                           account=lambda _: SimpleNamespace(account=SimpleNamespace(public_key=EXPERT.public_key)))


def test_a_requester_whose_node_is_ahead_of_the_experts_still_gets_the_answer(tmp_path: Path) -> None:
    """The requester sees the draw a block before the expert's node does: the expert answers UNAVAILABLE
    ("not yet") and ProvisionalAnswers asks again instead of reporting a failure."""
    looked_up = []

    def status(query_id: int) -> query_pb2.QueryStatusResponse:
        looked_up.append(query_id)
        if len(looked_up) == 1:
            raise ClientError("not found", grpc.StatusCode.NOT_FOUND)  # the expert's node is a block behind
        return query_pb2.QueryStatusResponse(query=AWAITING_DRAW if len(looked_up) == 2 else LAGGING)

    with expert_whose_node_says(tmp_path, status) as port:
        answers = ProvisionalAnswers(requesters_node(port), REQUESTER, "test-chain", 0.0, on_answer=lambda _: None)
        answers.start(LAGGING)
        (answer,) = answers.wait(timeout=60)
    assert answer.error == "" and answer.text and answer.signature
    assert looked_up[:3] == [12, 12, 12]


def test_a_request_turned_away_as_not_yet_known_spends_nothing(tmp_path: Path) -> None:
    """The very same signed request, refused while the expert's node awaits the draw, is served after it:
    "not yet" never spends the request's nonce."""
    drawn = []

    def status(query_id: int) -> query_pb2.QueryStatusResponse:
        return query_pb2.QueryStatusResponse(query=LAGGING if drawn else AWAITING_DRAW)

    request = sign_access(REQUESTER, "test-chain", pb.GenerateRequest(query_id=12, round=1, access_nonce=77),
                          EXPERT.address)
    with expert_whose_node_says(tmp_path, status) as port, grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = expert_pb2_grpc.ExpertServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.Generate(request)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        drawn.append(True)
        assert stub.Generate(request).completion_tokens > 0
        with pytest.raises(grpc.RpcError) as again:  # served once: now the nonce is spent
            stub.Generate(request)
        assert again.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_only_not_yet_is_asked_again_and_closing_stops_the_asking(tmp_path: Path) -> None:
    looked_up = []

    def status(query_id: int) -> query_pb2.QueryStatusResponse:
        looked_up.append(query_id)
        return query_pb2.QueryStatusResponse(query=AWAITING_DRAW)  # the expert's node never sees the draw

    with expert_whose_node_says(tmp_path, status) as port:
        stranger = ProvisionalAnswers(requesters_node(port), deterministic_key("provisional-stranger"), "test-chain",
                                      0.0, on_answer=lambda _: None)
        stranger.start(LAGGING)
        (refused,) = stranger.wait(timeout=30)
        assert refused.error.startswith("PERMISSION_DENIED") and len(looked_up) == 1  # a refusal: not asked again
        waiting = ProvisionalAnswers(requesters_node(port), REQUESTER, "test-chain", 0.0, on_answer=lambda _: None)
        waiting.start(LAGGING)
        while len(looked_up) < 3:  # asked again while the expert says "not yet"
            time.sleep(0.05)
        waiting.close()
        (stopped,) = waiting.wait(timeout=5)  # well inside the 10 s it would keep asking for
    assert stopped.error.startswith("UNAVAILABLE") and "not drawn its respondents" in stopped.error
