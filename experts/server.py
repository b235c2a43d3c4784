"""gRPC ExpertService. Servicers translate protobuf <-> engine calls; the engine decides.

Every answer is signed with the expert's account key over AnswerSignDoc{chain_id, query_id, round,
sha256(answer)}, so scorers and requesters can check who said what and prove equivocation on chain.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from abci_app.pb.llmnet.expert.v1 import expert_pb2 as pb
from abci_app.pb.llmnet.expert.v1 import expert_pb2_grpc
from abci_app.x.inference.types import answer_sign_bytes
from experts.engine import Engine, EngineError, Generation, Sampling
from llmnet.client.keys import Key

SERVICE = pb.DESCRIPTOR.services_by_name["ExpertService"].full_name
STATUS = {"invalid": grpc.StatusCode.INVALID_ARGUMENT, "not_found": grpc.StatusCode.NOT_FOUND,
          "exhausted": grpc.StatusCode.RESOURCE_EXHAUSTED}


@dataclass
class ExpertIdentity:
    key: Key | None
    chain_id: str
    adapters: dict[str, str] = field(default_factory=dict)  # domain -> adapter sha256


class ExpertServicer(expert_pb2_grpc.ExpertServiceServicer):
    def __init__(self, engine: Engine, identity: ExpertIdentity) -> None:
        self.engine = engine
        self.identity = identity
        self._slots = threading.BoundedSemaphore(engine.limits.max_concurrent)

    def Info(self, request: pb.InfoRequest, context: grpc.ServicerContext) -> pb.InfoResponse:  # noqa: N802
        lim = self.engine.limits
        return pb.InfoResponse(
            address=self.identity.key.address if self.identity.key else "", base_model=self.engine.model_id,
            adapters=[pb.AdapterInfo(domain=d, adapter_sha256=h) for d, h in sorted(self.identity.adapters.items())],
            limits=pb.Limits(max_prompt_tokens=lim.max_prompt_tokens, max_new_tokens=lim.max_new_tokens,
                             max_concurrent=lim.max_concurrent),
            chain_id=self.identity.chain_id)

    def _run(self, request: pb.GenerateRequest, context: grpc.ServicerContext,
             on_text: Callable[[str], None] | None = None) -> pb.GenerateResponse:
        if not self._slots.acquire(blocking=False):
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "expert is busy: too many concurrent requests")
        try:
            s = request.sampling
            sampling = Sampling(max_new_tokens=s.max_new_tokens or 64, temperature=s.temperature,
                                top_p=s.top_p or 1.0, seed=s.seed, stop=list(s.stop))
            messages = [{"role": m.role, "content": m.content} for m in request.messages]
            result = self.engine.generate(messages, sampling, request.domain, on_text,
                                          cancelled=lambda: not context.is_active())
        except EngineError as err:
            context.abort(STATUS[err.kind], str(err))
        finally:
            self._slots.release()
        if result.finish_reason == "cancelled":
            context.abort(grpc.StatusCode.CANCELLED, "request cancelled or past its deadline")
        return self._response(request, result)

    def _response(self, request: pb.GenerateRequest, result: Generation) -> pb.GenerateResponse:
        key = self.identity.key
        signature = b""
        if key is not None:
            signature = key.sign(answer_sign_bytes(self.identity.chain_id, request.query_id, request.round,
                                                   result.text))
        return pb.GenerateResponse(
            text=result.text, prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
            finish_reason=result.finish_reason, expert=key.address if key else "", domain=request.domain,
            signature=signature, chain_id=self.identity.chain_id)

    def Generate(self, request: pb.GenerateRequest, context: grpc.ServicerContext) -> pb.GenerateResponse:  # noqa: N802
        return self._run(request, context)

    def GenerateStream(self, request: pb.GenerateStreamRequest,  # noqa: N802
                       context: grpc.ServicerContext) -> Iterator[pb.GenerateStreamResponse]:
        pieces: queue.Queue[str | pb.GenerateResponse | grpc.RpcError | Exception] = queue.Queue()

        def work() -> None:
            try:
                pieces.put(self._run(request.request, context, pieces.put))
            except Exception as exc:  # noqa: BLE001 - handed to the streaming thread, which re-raises it
                pieces.put(exc)

        threading.Thread(target=work, daemon=True).start()
        while True:
            item = pieces.get()
            if isinstance(item, str):
                yield pb.GenerateStreamResponse(text_delta=item)
            elif isinstance(item, pb.GenerateResponse):
                yield pb.GenerateStreamResponse(result=item)
                return
            else:
                raise item


def create_server(engine: Engine, identity: ExpertIdentity, address: str = "127.0.0.1:0") -> tuple[grpc.Server, int]:
    """Build (not start) the expert's gRPC server; port 0 picks a free port. Returns (server, port)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=engine.limits.max_concurrent + 4))
    expert_pb2_grpc.add_ExpertServiceServicer_to_server(ExpertServicer(engine, identity), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection((SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot bind the expert server to {address}")
    return server, port
