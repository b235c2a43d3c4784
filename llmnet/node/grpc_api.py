"""The node's gRPC API. Servicers translate protobuf to app calls and back; nothing is decided here.

QueryService is served straight from the app's query router (raw request bytes in, raw response
bytes out), so gRPC and ABCI Query can never disagree.
"""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from abci_app.app import Application
from abci_app.errors import ErrHeightUnavailable, ErrUnknownPath, Missing, registered_errors
from abci_app.queries import QUERY_SERVICE
from llmnet.node.cometrpc import CometRPC, RPCError, RPCUnavailable
from llmnet.node.metrics import NodeMetrics
from llmnet.process import bind_grpc, grpc_server_options
from wire.llmnet.node.v1 import node_pb2, node_pb2_grpc
from wire.llmnet.query.v1 import query_pb2
from wire.llmnet.tx.v1 import service_pb2, service_pb2_grpc
from wire.tendermint.abci import types_pb2 as abci

_QUERY_STATUS = {
    (err.codespace, err.code): status for err, status in (
        (ErrUnknownPath, grpc.StatusCode.UNIMPLEMENTED),
        (ErrHeightUnavailable, grpc.StatusCode.OUT_OF_RANGE),
    )
}


def status_for(codespace: str, code: int) -> grpc.StatusCode:
    """The gRPC status an app error maps to: any "no such thing" error (an unknown account, expert or
    query) is NOT_FOUND; the rest is bad input unless listed above."""
    cls = registered_errors().get((codespace, code))
    if cls is not None and issubclass(cls, Missing):
        return grpc.StatusCode.NOT_FOUND
    return _QUERY_STATUS.get((codespace, code), grpc.StatusCode.INVALID_ARGUMENT)


def _tx_result(code: int, codespace: str, log: str, gas_wanted: int, gas_used: int,
               events: list[tuple[str, list[tuple[str, str]]]]) -> service_pb2.TxResult:
    """events: (type, [(key, value), ...]) in order."""
    return service_pb2.TxResult(
        code=code, codespace=codespace, log=log, gas_wanted=gas_wanted, gas_used=gas_used,
        events=[service_pb2.Event(type=kind, attributes=[service_pb2.Attribute(key=k, value=v) for k, v in attrs])
                for kind, attrs in events],
    )


class TxServicer(service_pb2_grpc.TxServiceServicer):
    def __init__(self, app: Application, rpc: CometRPC) -> None:
        self.app = app
        self.rpc = rpc

    async def BroadcastTx(self, request: service_pb2.BroadcastTxRequest,  # noqa: N802
                          context: grpc.aio.ServicerContext) -> service_pb2.BroadcastTxResponse:
        if not request.tx:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "tx is empty")
        try:
            res = await self.rpc.broadcast_tx_sync(request.tx)
        except RPCUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        except RPCError as exc:
            text = str(exc)
            code = grpc.StatusCode.ALREADY_EXISTS if "already exists" in text else (
                grpc.StatusCode.RESOURCE_EXHAUSTED if "full" in text else grpc.StatusCode.INVALID_ARGUMENT)
            await context.abort(code, f"CometBFT refused the tx: {text}")
        check = service_pb2.TxResult(code=int(res.get("code", 0)), codespace=res.get("codespace", ""),
                                     log=res.get("log", ""))
        return service_pb2.BroadcastTxResponse(tx_hash=res["hash"], check=check)

    async def Simulate(self, request: service_pb2.SimulateRequest,  # noqa: N802
                       context: grpc.aio.ServicerContext) -> service_pb2.SimulateResponse:
        r = self.app.simulate(request.tx)
        events = [(e.type, [(a.key, a.value) for a in e.attributes]) for e in r.events]
        return service_pb2.SimulateResponse(
            result=_tx_result(r.code, r.codespace, r.log, r.gas_wanted, r.gas_used, events))

    async def GetTx(self, request: service_pb2.GetTxRequest,  # noqa: N802
                    context: grpc.aio.ServicerContext) -> service_pb2.GetTxResponse:
        try:
            tx_hash = bytes.fromhex(request.tx_hash.removeprefix("0x"))
            if len(tx_hash) != 32:
                raise ValueError
        except ValueError:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "tx_hash must be 64 hex characters")
        try:
            res = await self.rpc.tx(tx_hash)
        except RPCUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        except RPCError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"tx {request.tx_hash}: {exc}")
        r = res["tx_result"]
        return service_pb2.GetTxResponse(
            tx_hash=res["hash"], height=int(res["height"]), index=int(res.get("index", 0)),
            tx=base64.b64decode(res["tx"]),
            result=_tx_result(int(r.get("code", 0)), r.get("codespace", ""), r.get("log", ""),
                              int(r.get("gas_wanted", 0)), int(r.get("gas_used", 0)),
                              [(e["type"], [(a["key"], a.get("value", "")) for a in e.get("attributes", [])])
                               for e in r.get("events", [])]),
        )


class NodeServicer(node_pb2_grpc.NodeServiceServicer):
    def __init__(self, app: Application, rpc_url: str) -> None:
        self.app = app
        self.rpc_url = rpc_url

    async def Status(self, request: node_pb2.StatusRequest,  # noqa: N802
                     context: grpc.aio.ServicerContext) -> node_pb2.StatusResponse:
        info = self.app.info(abci.RequestInfo())
        return node_pb2.StatusResponse(
            chain_id=self.app.chain_id, height=info.last_block_height, app_hash=info.last_block_app_hash,
            app_version=info.version, cometbft_rpc=self.rpc_url)


def _query_handler(app: Application, path: str) -> grpc.RpcMethodHandler:
    async def handle(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        resp = app.query(abci.RequestQuery(path=path, data=request))
        if resp.code:
            await context.abort(status_for(resp.codespace, resp.code), resp.log)
        return bytes(resp.value)

    return grpc.unary_unary_rpc_method_handler(handle)


def _decoding_handlers(service: ServiceDescriptor, servicer: object) -> grpc.GenericRpcHandler:
    """servicer's unary methods, each decoding its request itself: bytes that do not decode are INVALID_ARGUMENT
    with the reason, as QueryService answers them. Left to grpc, they were UNKNOWN to the caller and a
    traceback in the node's log per request (9 MB of log in 10 s of 2-byte requests)."""
    def handler(name: str, request_type: type[Message]) -> grpc.RpcMethodHandler:
        method = getattr(servicer, name)

        async def handle(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
            try:
                request = request_type.FromString(raw)
            except DecodeError as err:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"the request does not decode as {request_type.DESCRIPTOR.full_name}: {err}")
            return (await method(request, context)).SerializeToString()  # type: ignore[no-any-return]

        return grpc.unary_unary_rpc_method_handler(handle)

    return grpc.method_handlers_generic_handler(service.full_name, {
        m.name: handler(m.name, message_factory.GetMessageClass(m.input_type)) for m in service.methods})


UNKNOWN_METHOD = "unknown"


class _Counting(grpc.aio.ServerInterceptor):
    """Counts requests by method and status code. The method label takes only names this server serves,
    so a client inventing method names cannot create unbounded series; streams count as they open."""

    def __init__(self, metrics: NodeMetrics) -> None:
        self.metrics = metrics
        self.known: frozenset[str] = frozenset()

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        method = details.method if details.method in self.known else UNKNOWN_METHOD
        if handler is None:
            self.metrics.grpc.labels(method, grpc.StatusCode.UNIMPLEMENTED.name).inc()
            return None
        if handler.unary_unary is None:
            self.metrics.grpc.labels(method, "stream").inc()
            return handler
        return grpc.unary_unary_rpc_method_handler(
            self._counted(handler.unary_unary, method), handler.request_deserializer, handler.response_serializer)

    def _counted(self, behaviour: Any, method: str) -> Any:
        async def run(request: Any, context: grpc.aio.ServicerContext) -> Any:
            failed: grpc.StatusCode | None = None
            try:
                return await behaviour(request, context)
            except asyncio.CancelledError:  # the client gave up or its deadline passed
                failed = grpc.StatusCode.CANCELLED
                raise
            except grpc.aio.AbortError:  # context.abort() set the code
                raise
            except Exception:  # grpc answers an unhandled exception with UNKNOWN
                failed = grpc.StatusCode.UNKNOWN
                raise
            finally:
                code = failed or context.code()
                name = code.name if isinstance(code, grpc.StatusCode) else (
                    grpc.StatusCode.OK.name if code in (None, 0) else grpc.StatusCode.UNKNOWN.name)
                self.metrics.grpc.labels(method, name).inc()

        return run


def served_methods(services: tuple[str, ...]) -> frozenset[str]:
    """Full method names (/package.Service/Method) of the services this server registers, reflection included."""
    files = [service_pb2.DESCRIPTOR, node_pb2.DESCRIPTOR, query_pb2.DESCRIPTOR, health_pb2.DESCRIPTOR]
    names = {f"/{s.full_name}/{m.name}" for fd in files for s in fd.services_by_name.values() for m in s.methods
             if s.full_name in services}
    return frozenset(names | {f"/{reflection.SERVICE_NAME}/ServerReflectionInfo"})


@dataclass
class NodeAPI:
    server: grpc.aio.Server
    health: health.aio.HealthServicer
    services: tuple[str, ...]

    async def start(self) -> None:
        await self.server.start()
        for name in ("", *self.services):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float = 2.0) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


def create_server(app: Application, address: str, rpc: CometRPC,
                  metrics: NodeMetrics | None = None) -> tuple[NodeAPI, int]:
    """Build the API server bound to address (port 0 picks a free port). Returns (api, port)."""
    counting = _Counting(metrics) if metrics else None
    server = grpc.aio.server(interceptors=[counting] if counting else [], options=grpc_server_options())
    for descriptor, servicer in ((service_pb2.DESCRIPTOR.services_by_name["TxService"], TxServicer(app, rpc)),
                                 (node_pb2.DESCRIPTOR.services_by_name["NodeService"], NodeServicer(app, rpc.url))):
        server.add_generic_rpc_handlers((_decoding_handlers(descriptor, servicer),))
    methods = {name: _query_handler(app, f"/{QUERY_SERVICE}/{name}")
               for name in query_pb2.DESCRIPTOR.services_by_name["QueryService"].methods_by_name}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(QUERY_SERVICE, methods),))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    services = (
        service_pb2.DESCRIPTOR.services_by_name["TxService"].full_name,
        node_pb2.DESCRIPTOR.services_by_name["NodeService"].full_name,
        QUERY_SERVICE,
    )
    reflection.enable_server_reflection((*services, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    if counting:
        counting.known = served_methods((*services, health.SERVICE_NAME))
    return NodeAPI(server, health_servicer, services), bind_grpc(server, address, "gRPC API")
