"""gRPC ExpertService. Servicers translate protobuf <-> engine calls; the engine decides.

Every answer served is signed with the expert's account key over ServedAnswerSignDoc (the request's
hash and the answer's), so a requester can prove what it was served. That doc is not evidence: the
chain's equivocation evidence is AnswerSignDoc, which nothing here signs, so no sequence of requests can
make an honest expert sign its way into a slash. Every field of a request is checked here, at the edge,
before it reaches the engine.

A chain query's requester may ask a drawn expert for the answer it is giving that query: a request with
the query's id and no messages is answered with the expert's own round-1 prompt and sampling (the ones
its daemon commits), a provisional answer the requester sees before the chain's rounds end. The engine
shares that work with the daemon's, so it costs the expert nothing more.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from experts.access import AccessDenied, ChainAccess, NotYetKnown
from experts.answers import DEFAULT_PLAN, AnswerPlan, fitted_prompt
from experts.engine import Engine, EngineError, ErrorKind, Generation, Sampling
from llmnet.client.expert_api import served_answer_sign_bytes
from llmnet.client.keys import Key
from llmnet.client.sdk import ClientError
from llmnet.process import bind_grpc, grpc_server_options
from wire.llmnet.expert.v1 import expert_pb2 as pb
from wire.llmnet.expert.v1 import expert_pb2_grpc
from wire.llmnet.inference.v1 import inference_pb2 as inf

T = TypeVar("T")
SERVICE = pb.DESCRIPTOR.services_by_name["ExpertService"].full_name
MAX_TEMPERATURE = 5.0
MAX_MESSAGES = 64
MAX_STOPS, MAX_STOP_CHARS = 8, 64


def sampling_from(s: pb.Sampling) -> Sampling:
    """The request's sampling, each field checked: a NaN or an infinity must never reach the model."""
    if not math.isfinite(s.temperature) or not 0 <= s.temperature <= MAX_TEMPERATURE:
        raise EngineError(ErrorKind.INVALID, f"sampling.temperature must be a number in 0..{MAX_TEMPERATURE}")
    if not math.isfinite(s.top_p) or not 0 <= s.top_p <= 1:
        raise EngineError(ErrorKind.INVALID, "sampling.top_p must be a number in (0, 1] (0 means 1)")
    if len(s.stop) > MAX_STOPS or any(len(x) > MAX_STOP_CHARS for x in s.stop):
        raise EngineError(ErrorKind.INVALID, f"sampling.stop takes at most {MAX_STOPS} strings of "
                                             f"{MAX_STOP_CHARS} characters")
    return Sampling(max_new_tokens=s.max_new_tokens or 64, temperature=s.temperature, top_p=s.top_p or 1.0,
                    seed=s.seed, stop=list(s.stop))


def messages_from(request: pb.GenerateRequest) -> list[dict[str, str]]:
    if len(request.messages) > MAX_MESSAGES:
        raise EngineError(ErrorKind.INVALID, f"at most {MAX_MESSAGES} messages")
    return [{"role": m.role, "content": m.content} for m in request.messages]
STATUS = {ErrorKind.INVALID: grpc.StatusCode.INVALID_ARGUMENT, ErrorKind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
          ErrorKind.EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED}


@dataclass
class ExpertIdentity:
    key: Key | None
    chain_id: str
    adapters: dict[str, str] = field(default_factory=dict)  # domain -> adapter sha256


class ExpertMetrics:
    def __init__(self, registry: CollectorRegistry, engine: Engine) -> None:
        self.requests = Counter("llmnet_expert_requests", "Generate/GenerateStream requests by outcome",
                                ["method", "code"], registry=registry)
        self.tokens = Counter("llmnet_expert_generated_tokens", "completion tokens produced", registry=registry)
        self.latency = Histogram("llmnet_expert_request_seconds", "time to answer a request", ["method"],
                                 buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60), registry=registry)
        self.tokens_per_second = Gauge("llmnet_expert_tokens_per_second", "completion tokens/s of the last request",
                                       registry=registry)
        self.in_flight = Gauge("llmnet_expert_in_flight", "requests being answered", registry=registry)
        Gauge("llmnet_expert_queue_depth", "requests waiting for the model", registry=registry).set_function(
            engine.queue_depth)


class ExpertServicer(expert_pb2_grpc.ExpertServiceServicer):
    def __init__(self, engine: Engine, identity: ExpertIdentity, access: ChainAccess | None = None,
                 registry: CollectorRegistry | None = None, plan: AnswerPlan = DEFAULT_PLAN) -> None:
        self.engine = engine
        self.identity = identity
        self.access = access  # None: open to anyone (llmnet-expert serve --open)
        self.plan = plan
        self.metrics = ExpertMetrics(registry or CollectorRegistry(), engine)
        self._slots = threading.BoundedSemaphore(engine.limits.max_concurrent)
        # the blocking work of calls: the slots' generations, plus room for refusals while every slot is busy
        self.pool = futures.ThreadPoolExecutor(max_workers=engine.limits.max_concurrent + 4,
                                               thread_name_prefix="expert")

    async def Info(self, request: pb.InfoRequest, context: grpc.aio.ServicerContext) -> pb.InfoResponse:  # noqa: N802
        lim = self.engine.limits
        return pb.InfoResponse(
            address=self.identity.key.address if self.identity.key else "", base_model=self.engine.model_id,
            adapters=[pb.AdapterInfo(domain=d, adapter_sha256=h) for d, h in sorted(self.identity.adapters.items())],
            limits=pb.Limits(max_prompt_tokens=lim.max_prompt_tokens, max_new_tokens=lim.max_new_tokens,
                             max_concurrent=lim.max_concurrent),
            chain_id=self.identity.chain_id)

    def _work(self, method: str, request: pb.GenerateRequest, ended: threading.Event,
              on_text: Callable[[str], None] | None = None) -> tuple[grpc.StatusCode, str, pb.GenerateResponse | None]:
        """The blocking part of a call, in the pool: (status, message, response); response is None on failure."""
        started = time.monotonic()
        code, message, result = self._answer(request, ended, on_text)
        self.metrics.requests.labels(method, code.name).inc()
        self.metrics.latency.labels(method).observe(time.monotonic() - started)
        if result is None:
            return code, message, None
        self.metrics.tokens.inc(result.completion_tokens)
        self.metrics.tokens_per_second.set(result.completion_tokens / max(1e-9, time.monotonic() - started))
        return code, message, self._response(request, result)

    def _answer(self, request: pb.GenerateRequest, ended: threading.Event,
                on_text: Callable[[str], None] | None) -> tuple[grpc.StatusCode, str, Generation | None]:
        """(status, message, generation); generation is None when the request failed. Checks come before
        a generation slot is taken, so requests that will be refused cannot keep slots from those that will
        not (a refusal after the access check still spends the request's nonce). `ended` is set once the call
        is over (its client went, its deadline passed, the server stopped): the generation then stops."""
        try:
            sampling, messages = sampling_from(request.sampling), messages_from(request)
            domain, share = request.domain, None
            if self.access is not None:
                query = self.access.check(request)  # always: access never depends on the other fields
                domain, share = domain or self.engine.adapter_for(query.domain), query.id
                if not messages:
                    messages, sampling, domain = self._query_answer(request, query)
        except EngineError as err:
            return STATUS[err.kind], str(err), None
        except AccessDenied as err:
            return grpc.StatusCode.PERMISSION_DENIED, str(err), None
        except NotYetKnown as err:
            return grpc.StatusCode.UNAVAILABLE, str(err), None
        except ClientError as err:
            return grpc.StatusCode.UNAVAILABLE, f"cannot check access with the chain: {err}", None
        if ended.is_set():
            return grpc.StatusCode.CANCELLED, "the call ended before its generation began", None
        if not self._slots.acquire(blocking=False):
            return grpc.StatusCode.RESOURCE_EXHAUSTED, "expert is busy: too many concurrent requests", None
        self.metrics.in_flight.inc()
        try:
            result = self.engine.generate(messages, sampling, domain, on_text, cancelled=ended.is_set, share=share)
        except EngineError as err:
            return STATUS[err.kind], str(err), None
        finally:
            self.metrics.in_flight.dec()
            self._slots.release()
        if result.finish_reason == "cancelled":
            return grpc.StatusCode.CANCELLED, "the call ended during generation (cancelled, or past its deadline)", None
        return grpc.StatusCode.OK, "", result

    def _query_answer(self, request: pb.GenerateRequest, query: inf.Query
                      ) -> tuple[list[dict[str, str]], Sampling, str]:
        """What this expert answers (or answered) the query in round 1, as its daemon asks the engine."""
        if request.round > 1:
            raise EngineError(ErrorKind.INVALID, "a request without messages asks for the round-1 answer: set "
                                                 "round to 0 or 1 (later rounds depend on the peers' answers)")
        if request.HasField("sampling"):
            raise EngineError(ErrorKind.INVALID, "a request without messages is answered with the expert's "
                                                 "own sampling: leave sampling unset")
        return fitted_prompt(self.engine, query, []), self.plan.sampling(query), self.engine.adapter_for(query.domain)

    def _response(self, request: pb.GenerateRequest, result: Generation) -> pb.GenerateResponse:
        key = self.identity.key
        signature = b""
        if key is not None:
            signature = key.sign(served_answer_sign_bytes(self.identity.chain_id, request, key.address, result.text))
        return pb.GenerateResponse(
            text=result.text, prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
            finish_reason=result.finish_reason, expert=key.address if key else "", domain=request.domain,
            signature=signature, chain_id=self.identity.chain_id)

    async def Generate(self, request: pb.GenerateRequest,  # noqa: N802
                       context: grpc.aio.ServicerContext) -> pb.GenerateResponse:
        ended = threading.Event()
        try:
            code, message, response = await asyncio.get_running_loop().run_in_executor(
                self.pool, self._work, "Generate", request, ended, None)
        finally:
            ended.set()  # also when this coroutine is cancelled: the client went, or the deadline passed
        if response is None:
            await context.abort(code, message)
        return response

    async def GenerateStream(self, request: pb.GenerateStreamRequest,  # noqa: N802
                             context: grpc.aio.ServicerContext) -> AsyncIterator[pb.GenerateStreamResponse]:
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[str] = asyncio.Queue()
        ended = threading.Event()

        def arrived(text: str) -> None:  # in the pool's thread; queued before the work's result is set
            loop.call_soon_threadsafe(pieces.put_nowait, text)

        work = loop.run_in_executor(self.pool, self._work, "GenerateStream", request.request, ended, arrived)
        waiting: asyncio.Future[str] | None = None
        try:
            while not work.done() or not pieces.empty():
                if pieces.empty():
                    waiting = asyncio.ensure_future(pieces.get())
                    await asyncio.wait({waiting, work}, return_when=asyncio.FIRST_COMPLETED)
                    if not waiting.done():
                        continue  # the work is done: what it queued is read next, then its result
                    text = waiting.result()
                else:
                    text = pieces.get_nowait()
                yield pb.GenerateStreamResponse(text_delta=text)
            code, message, response = work.result()
        finally:
            ended.set()
            if waiting is not None:
                waiting.cancel()
        if response is None:
            await context.abort(code, message)
        yield pb.GenerateStreamResponse(result=response)


MAX_CALLS = 256
"""Calls the expert's server runs at once (each waiting one costs memory, however it was opened); past it new
ones are RESOURCE_EXHAUSTED at once. Far above what its slots serve: refusals, Info and streams' tails."""


class ExpertServer:
    """The expert's gRPC server, run by grpc.aio on an event loop of its own thread; the blocking part of a call
    (access checks, the model) runs in the servicer's pool once its request has arrived whole. gRPC's threaded
    server gave a call its thread when the call's headers came: a dozen calls that sent headers and never a
    request (no key, no payment) took every thread, and Info, Generate and requesters' provisional answers hung
    for everyone. Here such a call costs a coroutine, and MAX_CALLS bound them. A call whose client goes, whose
    deadline passes, or that the server's stop ends, stops its generation. The same API as grpc.Server where
    ours used it: start(), stop(grace)."""

    def __init__(self, build: Callable[[], Coroutine[Any, Any, grpc.aio.Server]], pool: futures.Executor) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve_loop, name="expert-grpc", daemon=True)
        self._thread.start()
        self._pool = pool
        self._stopped: threading.Event | None = None
        try:
            self._server = self._call(build())  # in the loop: an aio server belongs to the loop it is made on
        except BaseException:
            self._end_loop()
            raise

    def _serve_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()
        left = asyncio.all_tasks(self._loop)  # the server's own, if any outlived its stop
        for task in left:
            task.cancel()
        if left:
            self._loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
        self._loop.close()

    def _call(self, work: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(work, self._loop).result()

    def _end_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def start(self) -> None:
        if self._stopped is not None:
            raise RuntimeError("the expert server was stopped: make a new one")
        self._call(self._server.start())

    def stop(self, grace: float | None) -> threading.Event:
        """Stop taking calls, give those in flight grace seconds (None or 0: none; the rest end, and so do their
        generations), wait for the pool's work, then end the loop. Returns an event set once all that is done
        (as grpc.Server does: callers may wait on it or not); a second stop returns the same event."""
        if self._stopped is not None:
            return self._stopped
        self._stopped = stopped = threading.Event()

        async def wind_down() -> None:
            await self._server.stop(grace or None)
            await asyncio.get_running_loop().run_in_executor(None, self._pool.shutdown, True)

        def finish(_: object) -> None:
            threading.Thread(target=lambda: (self._end_loop(), stopped.set()), daemon=True).start()

        asyncio.run_coroutine_threadsafe(wind_down(), self._loop).add_done_callback(finish)
        return stopped


def create_server(engine: Engine, identity: ExpertIdentity, address: str = "127.0.0.1:0",
                  access: ChainAccess | None = None, registry: CollectorRegistry | None = None,
                  tls: tuple[bytes, bytes] | None = None, plan: AnswerPlan = DEFAULT_PLAN) -> tuple[ExpertServer, int]:
    """Build (not start) the expert's gRPC server; port 0 picks a free port. Returns (server, port).
    access=None serves anyone; metrics go to `registry` (serve it with prometheus_client); tls is
    (PEM private key, PEM certificate chain): with it the port speaks only TLS, so prompts, answers and
    access signatures cannot be read on the way."""
    servicer = ExpertServicer(engine, identity, access, registry, plan)
    port = 0

    async def build() -> grpc.aio.Server:
        nonlocal port
        server = grpc.aio.server(options=grpc_server_options(), maximum_concurrent_rpcs=MAX_CALLS)
        expert_pb2_grpc.add_ExpertServiceServicer_to_server(servicer, server)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        for name in ("", SERVICE):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        reflection.enable_server_reflection((SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        port = bind_grpc(server, address, "the expert server", tls)
        return server

    return ExpertServer(build, servicer.pool), port
