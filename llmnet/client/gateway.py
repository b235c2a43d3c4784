"""`llmnet gateway`: OpenAI's chat-completions API in front of the network (aiohttp).

Each request becomes a chain query paid by the gateway's key: submitted (one broadcast at a time, so
the key's sequence never races), followed block by block in a worker thread, and answered with the
settled final answer, or streamed as server-sent events (progress, then the answer). The chain client
is blocking, so chain work runs in a thread pool sized to the in-flight limit.

A stream also carries the drawn experts' provisional round-1 answers (llmnet/client/provisional.py) as
they are generated, in the `llmnet` extension of its chunks (`provisional`: expert and text_delta, pieces
that are not signed, then expert, text, signature and seconds once whole and checked), never in
`content`: content is only ever the settled answer, so a client that ignores the extension sees exactly
what it saw before.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import grpc
from aiohttp import web

from llmnet.address import host_port
from llmnet.client import protocol
from llmnet.client.ask import AskResult, follow, included_query
from llmnet.client.keys import Key
from llmnet.client.openai_api import (
    AUTO,
    ApiError,
    ChatRequest,
    Limits,
    chunk,
    completion,
    models_list,
    outcome,
    parse_chat,
)
from llmnet.client.provisional import ProvisionalAnswers
from llmnet.client.sdk import MAX_TX_FEE, Client, ClientError, NodeUnreachable, Sender, TxRejected

log = logging.getLogger("llmnet.gateway")
MAX_BODY = 256 * 1024
DOMAINS_TTL = 10.0
PAYMENT_REFUSED = {("tx", 12), ("bank", 2)}  # the fee, or the escrow, cannot be paid
NO_CAPACITY = ("inference", 3)  # too few active experts in the domain


def is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def api_error(exc: Exception) -> ApiError:
    """What a chain-side failure means to an API client."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, NodeUnreachable):
        return ApiError(503, f"the chain is unreachable: {exc}", "service_unavailable", "chain_unavailable")
    if isinstance(exc, TxRejected):
        if (exc.codespace, exc.code) in PAYMENT_REFUSED:
            return ApiError(402, f"the gateway's key cannot pay for this query: {exc.log}", "insufficient_funds",
                            "insufficient_funds")
        if (exc.codespace, exc.code) == NO_CAPACITY:
            return ApiError(503, exc.log, "service_unavailable", "no_experts")
        return ApiError(400, f"the chain refused the query: {exc.log}", code=f"{exc.codespace}/{exc.code}")
    if isinstance(exc, ClientError) and exc.status == grpc.StatusCode.DEADLINE_EXCEEDED:
        return ApiError(504, str(exc), "timeout", "timeout")
    if isinstance(exc, ClientError):
        return ApiError(502, f"the node failed: {exc}", "upstream_error", "upstream_error")
    log.exception("gateway failure", exc_info=exc)
    return ApiError(500, "internal error in the gateway", "server_error", "internal_error")


def _unanswered(result: AskResult) -> ApiError:
    why = next((str(p["reason"]) for p in result.payouts if p["role"] == "refund"), "no experts were drawn")
    return ApiError(503, f"query {result.query_id} was not answered ({why}); its fee was refunded",
                    "service_unavailable", "not_answered")


class ChainBridge:
    """The blocking chain side: domains, routing, one submission at a time, following to settlement."""

    def __init__(self, client: Client, key: Key, timeout: float, max_tx_fee: int = MAX_TX_FEE) -> None:
        self.client, self.key, self.timeout = client, key, timeout
        self.sender = Sender(client, key, max_fee=max_tx_fee)
        self._send_lock = threading.Lock()
        self._route_lock = threading.Lock()
        self._domains: tuple[float, list[str]] = (0.0, [])
        self._embedder: Any = None
        self._chain_id = ""

    def domains(self) -> list[str]:
        fetched, domains = self._domains
        if time.monotonic() - fetched > DOMAINS_TTL:
            domains = sorted(self.client.params().experts.domains)
            self._domains = (time.monotonic(), domains)
        return domains

    def resolve(self, model: str, question: str) -> str:
        """The domain a request asks: its model, or with `auto` the one closest to the question."""
        domains = self.domains()
        if model == AUTO:
            from llmnet.client.route import Embedder, choose, load_descriptions

            with self._route_lock:  # one embedding model, loaded once
                if self._embedder is None:
                    self._embedder = Embedder()
                return choose(question, domains, load_descriptions(), self._embedder).domain
        if model not in domains:
            raise ApiError(404, f"no domain {model!r} on this chain; GET /v1/models lists them", code="model_not_found",
                           param="model")
        return model

    def submit(self, req: ChatRequest, domain: str) -> int:
        msg = protocol.submit_query(self.key, domain, req.question, req.max_fee, req.k, req.rounds)
        with self._send_lock:  # only the broadcast: the key's sequence is the shared part
            sent = self.sender.send([msg], gas_limit=None)
        return included_query(self.client, sent.tx_hash, timeout=60)

    def settle(self, query_id: int, on_progress: Callable[[str], None],
               on_provisional: Callable[[dict[str, Any]], None] | None = None) -> AskResult:
        """Follow the query to settlement; with on_provisional, also fetch the drawn experts' round-1 answers
        and report their text as it comes (the settled result lists them too)."""
        if on_provisional is None:
            return follow(self.client, query_id, on_progress, timeout=self.timeout)
        early = ProvisionalAnswers(
            self.client, self.key, self.chain_id(), time.monotonic(),
            on_answer=lambda a: on_provisional({k: v for k, v in asdict(a).items() if v != ""}),
            on_delta=lambda expert, text: on_provisional({"expert": expert, "text_delta": text}))
        try:
            result = follow(self.client, query_id, on_progress, timeout=self.timeout, on_drawn=early.start)
            result.provisional = early.wait(timeout=1)
        finally:
            early.close()
        return result

    def chain_id(self) -> str:
        if not self._chain_id:
            self._chain_id = self.client.status().chain_id
        return self._chain_id


@dataclass
class Gateway:
    bridge: ChainBridge
    limits: Limits
    api_key: str | None = None
    max_in_flight: int = 16
    allowed_origins: frozenset[str] = frozenset()
    """Browser origins whose pages may call the gateway: none by default, so a web page the operator
    visits cannot spend the key (a browser always names the page's origin)."""

    def __post_init__(self) -> None:
        self.pool = ThreadPoolExecutor(max_workers=self.max_in_flight + 2, thread_name_prefix="gateway")
        self.in_flight = 0

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY, middlewares=[self._errors])
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.chat)
        for path in ("/v1/models", "/v1/chat/completions"):
            app.router.add_route("OPTIONS", path, self.preflight)
        app.on_response_prepare.append(self._cors)
        return app

    def _guard(self, request: web.Request) -> None:
        """Who may spend the key: a named browser origin only if allowed; without an API key only requests
        addressed to loopback (a rebound DNS name is refused); only JSON bodies, which a page cannot send
        across sites without a preflight this gateway does not grant."""
        origin = request.headers.get("Origin")
        if origin is not None and origin not in self.allowed_origins:
            raise ApiError(403, f"requests from the web page origin {origin!r} are refused (see --allow-origin)",
                           "permission_error", "origin_not_allowed")
        if self.api_key is None and not is_loopback(request.host.rsplit(":", 1)[0] if request.host else ""):
            raise ApiError(403, "without an API key only requests to a loopback address are served",
                           "permission_error", "host_not_allowed")
        if self.api_key is not None:
            given = request.headers.get("Authorization", "").encode("utf-8", "replace")
            if not hmac.compare_digest(given, f"Bearer {self.api_key}".encode()):
                raise ApiError(401, "missing or wrong API key (Authorization: Bearer ...)", code="invalid_api_key")
        if request.method == "POST" and request.content_type != "application/json":
            raise ApiError(415, "the body must be JSON with Content-Type: application/json",
                           code="unsupported_media_type")
        if request.method == "POST" and (request.charset or "utf-8").lower() not in ("utf-8", "utf8"):
            # the body is read as UTF-8 only: a charset such as punycode decodes in quadratic time, on the loop
            raise ApiError(415, f"the body must be UTF-8 JSON, not charset={request.charset[:40]!r}",
                           code="unsupported_media_type")

    async def preflight(self, request: web.Request) -> web.Response:
        origin = request.headers.get("Origin")
        if origin is None or origin not in self.allowed_origins:
            raise ApiError(403, "cross-origin requests are refused (see --allow-origin)", "permission_error",
                           "origin_not_allowed")
        return web.Response(status=204, headers={"Access-Control-Allow-Methods": "GET, POST",
                                                 "Access-Control-Allow-Headers": "Authorization, Content-Type"})

    async def _cors(self, request: web.Request, response: web.StreamResponse) -> None:
        origin = request.headers.get("Origin")
        if origin is not None and origin in self.allowed_origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"

    async def _chain(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    @web.middleware
    async def _errors(self, request: web.Request,
                      handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        """Every error in OpenAI's JSON shape; a bad request never takes the server down."""
        try:
            if request.method != "OPTIONS":
                self._guard(request)
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return web.json_response(ApiError(exc.status, exc.reason).body(), status=exc.status)
        except Exception as exc:  # noqa: BLE001 - mapped to a status, logged when unexpected
            err = api_error(exc)
            return web.json_response(err.body(), status=err.status)

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response(models_list(await self._chain(self.bridge.domains)))

    async def chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = json.loads(await request.read())  # bytes: UTF-8 as RFC 8259 says, whatever the headers
        except (ValueError, RecursionError):  # bad JSON, bad UTF-8, a 5,000-digit number, deep nesting
            raise ApiError(400, "the body is not valid JSON") from None
        req = parse_chat(body, self.limits)
        if self.in_flight >= self.max_in_flight:
            raise ApiError(429, f"{self.max_in_flight} queries are already in flight; retry shortly",
                           "rate_limit_exceeded", "rate_limit_exceeded")
        self.in_flight += 1
        try:
            domain = await self._chain(self.bridge.resolve, req.model, req.question)
            query_id = await self._chain(self.bridge.submit, req, domain)
            log.info("query %d in %s for %s", query_id, domain, request.remote)
            if req.stream:
                return await self._stream(request, query_id, domain)
            result: AskResult = await self._chain(self.bridge.settle, query_id, lambda line: None)
            if not result.answers:
                raise _unanswered(result)
            return web.json_response(completion(result, int(time.time())))
        finally:
            self.in_flight -= 1

    async def _stream(self, request: web.Request, query_id: int, domain: str) -> web.StreamResponse:
        """Server-sent events: the role, one chunk per progress line and per piece of a provisional answer (in
        the extension), the settled answer, then the outcome with finish_reason "stop". A client that goes
        away leaves the query to settle."""
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        created = int(time.time())

        async def send(data: dict[str, Any] | str) -> None:
            await resp.write(f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode())

        loop, news = asyncio.get_running_loop(), asyncio.Queue[dict[str, Any]]()

        def tell(item: dict[str, Any]) -> None:  # from the chain thread
            loop.call_soon_threadsafe(news.put_nowait, item)

        settling = asyncio.ensure_future(self._chain(
            self.bridge.settle, query_id, lambda line: tell({"progress": line}),
            lambda answer: tell({"provisional": answer})))
        try:
            await resp.prepare(request)
            await send(chunk(query_id, domain, created, {"role": "assistant", "content": ""},
                             extension={"query_id": query_id, "progress": f"submitted query {query_id}"}))
            while not settling.done() or not news.empty():
                getter = asyncio.ensure_future(news.get())
                await asyncio.wait({getter, settling}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    await send(chunk(query_id, domain, created, {}, extension=getter.result()))
                else:
                    getter.cancel()
            await self._finish(send, settling, query_id, domain, created)
        except ConnectionResetError:
            log.info("client left while query %d was open; it settles on chain regardless", query_id)
        finally:
            # The slot stays taken until the query settles, however the client's connection ended (even before
            # the first byte): leaving must not let a client keep more queries open than max_in_flight.
            await asyncio.wait({settling})
        return resp

    async def _finish(self, send: Callable[[dict[str, Any] | str], Awaitable[None]], settling: asyncio.Future[Any],
                      query_id: int, domain: str, created: int) -> None:
        try:
            result: AskResult = settling.result()
            if not result.answers:
                raise _unanswered(result)
        except Exception as exc:  # noqa: BLE001 - reported in the stream, as OpenAI does
            await send(api_error(exc).body())
            await send("[DONE]")
            return
        await send(chunk(query_id, domain, created, {"content": result.final_answer}))
        await send(chunk(query_id, domain, created, {}, finish="stop", extension=outcome(result)))
        await send("[DONE]")


async def serve(gateway: Gateway, listen: str, on_ready: Callable[[str], None]) -> None:
    """Serve until SIGINT or SIGTERM."""
    host, port = host_port(listen, "--listen")
    if gateway.api_key is None and not is_loopback(host):
        raise ValueError(f"--listen {listen} is beyond loopback: set an API key (--api-key-env) so that not "
                         "everyone who reaches it can spend the key")
    runner = web.AppRunner(gateway.app(), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0]
        on_ready(f"http://{bound[0]}:{bound[1]}/v1")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()
        gateway.pool.shutdown(wait=False, cancel_futures=True)
