"""`llmnetd start`: the ABCI server, the gRPC API and metrics on one event loop.

One loop means the app is only ever called from one thread, by CometBFT or by the API, never by
both at once. SIGTERM/SIGINT stop it cleanly; a fatal app error exits with status 1.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable

from abci_app.app import Application
from llmnet.node.abci.server import ABCIServer, FatalError
from llmnet.node.cometrpc import CometRPC
from llmnet.node.config import NodeConfig, beacon_key
from llmnet.node.explorer.data import ExplorerData, router_query
from llmnet.node.explorer.server import Explorer
from llmnet.node.grpc_api import create_server
from llmnet.node.metrics import NodeMetrics
from llmnet.node.snapshots import SnapshotManager
from wire.tendermint.abci import types_pb2 as abci

log = logging.getLogger("llmnet.node")


async def run(cfg: NodeConfig) -> int:
    cfg.db_file.parent.mkdir(parents=True, exist_ok=True)
    app = Application(cfg.db_file, cfg.pruning_keep_recent)
    app.beacon_key = beacon_key(cfg.beacon_key_file)
    metrics = NodeMetrics()
    metrics.height.set(app.committed.height)

    def measured(kind: str, call: Callable[[], abci.Response]) -> abci.Response:
        started = time.perf_counter()
        resp = call()
        metrics.observe_abci(kind, time.perf_counter() - started, resp)
        if kind in ("commit", "apply_snapshot_chunk"):  # a restored snapshot moves the height too
            metrics.height.set(app.committed.height)
        return resp

    snapshots = SnapshotManager(app, cfg.snapshot_dir, cfg.snapshot_interval, cfg.snapshot_keep_recent,
                                cfg.snapshot_chunk_bytes)
    server = ABCIServer(app, cfg.abci_address, middleware=measured, snapshots=snapshots)
    rpc = CometRPC(cfg.cometbft_rpc)
    api, port = create_server(app, cfg.grpc_address, rpc, metrics)
    explorer = Explorer(ExplorerData(router_query(app), rpc), cfg.explorer_address) if cfg.explorer_address else None
    try:
        await server.start()
        await api.start()
        if cfg.metrics_address:
            metrics.serve(cfg.metrics_address)
        if explorer is not None:
            await explorer.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, server.stop)
        log.info(
            "llmnetd started: height=%d abci=%s grpc=%s:%d metrics=%s explorer=%s cometbft_rpc=%s",
            app.committed.height, cfg.abci_address, cfg.grpc_address.rsplit(":", 1)[0], port,
            cfg.metrics_address or "off", f"http://{explorer.host}:{explorer.port}/" if explorer else "off",
            cfg.cometbft_rpc,
        )
        await server.serve()
        log.info("llmnetd stopped at height %d", app.committed.height)
        return 0
    except FatalError as exc:
        log.error("llmnetd stopped on a fatal error: %s", exc)
        return 1
    finally:
        if explorer is not None:
            await explorer.stop()
        await api.stop()
        await rpc.close()
        app.close()
