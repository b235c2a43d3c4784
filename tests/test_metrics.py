"""The node's gRPC request counter: every outcome is counted under the status the client saw, and method
labels stay bounded whatever names clients invent."""

from __future__ import annotations

import asyncio

import grpc

from llmnet.node.grpc_api import UNKNOWN_METHOD, _Counting
from llmnet.node.metrics import NodeMetrics


def test_each_outcome_is_counted_under_its_status() -> None:
    async def run() -> dict[tuple[str, str], float]:
        metrics = NodeMetrics()
        counting = _Counting(metrics)
        counting.known = frozenset(f"/t.S/{n}" for n in ("Ok", "Abort", "Raise", "SetCode", "Slow"))

        async def ok(req: bytes, ctx: grpc.aio.ServicerContext) -> bytes:
            return b"ok"

        async def abort(req: bytes, ctx: grpc.aio.ServicerContext) -> bytes:
            await ctx.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
            return b""

        async def raise_(req: bytes, ctx: grpc.aio.ServicerContext) -> bytes:
            raise RuntimeError("a bug")

        async def set_code(req: bytes, ctx: grpc.aio.ServicerContext) -> bytes:
            ctx.set_code(grpc.StatusCode.PERMISSION_DENIED)
            return b""

        async def slow(req: bytes, ctx: grpc.aio.ServicerContext) -> bytes:
            await asyncio.sleep(3)
            return b""

        handlers = {"Ok": ok, "Abort": abort, "Raise": raise_, "SetCode": set_code, "Slow": slow}
        server = grpc.aio.server(interceptors=[counting])
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "t.S", {n: grpc.unary_unary_rpc_method_handler(f) for n, f in handlers.items()}),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            for name in (*handlers, "Invented1", "Invented2"):
                try:
                    await channel.unary_unary(f"/t.S/{name}")(b"", timeout=0.3)
                except grpc.aio.AioRpcError:
                    pass
            await asyncio.sleep(0.5)
        await server.stop(None)
        return {(s.labels["method"], s.labels["code"]): s.value for s in metrics.grpc.collect()[0].samples
                if s.name.endswith("_total")}

    counts = asyncio.run(run())
    assert counts == {("/t.S/Ok", "OK"): 1, ("/t.S/Abort", "NOT_FOUND"): 1, ("/t.S/Raise", "UNKNOWN"): 1,
                      ("/t.S/SetCode", "PERMISSION_DENIED"): 1, ("/t.S/Slow", "CANCELLED"): 1,
                      (UNKNOWN_METHOD, "UNIMPLEMENTED"): 2}
