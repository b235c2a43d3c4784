"""Prometheus metrics of the node process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from wire.tendermint.abci import types_pb2 as abci


class NodeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.abci_seconds = Histogram(
            "llmnet_abci_request_seconds", "Time to answer one ABCI request", ["method"],
            registry=self.registry, buckets=(0.0005, 0.002, 0.01, 0.05, 0.2, 1, 5),
        )
        self.txs = Counter(
            "llmnet_txs_total", "Transactions seen, by where and outcome", ["stage", "result"],
            registry=self.registry,
        )
        self.height = Gauge("llmnet_block_height", "Last committed block height", registry=self.registry)
        self.grpc = Counter(
            "llmnet_grpc_requests_total",
            "gRPC API requests, by method (a served method's full name, else 'unknown') and status code name",
            ["method", "code"],
            registry=self.registry,
        )

    def observe_abci(self, kind: str, seconds: float, resp: abci.Response) -> None:
        self.abci_seconds.labels(kind).observe(seconds)
        if kind == "check_tx":
            self.txs.labels("check", "ok" if resp.check_tx.code == 0 else "rejected").inc()
        elif kind == "finalize_block":
            for r in resp.finalize_block.tx_results:
                self.txs.labels("block", "ok" if r.code == 0 else "failed").inc()

    def serve(self, address: str) -> None:
        host, port = address.rsplit(":", 1)
        start_http_server(int(port), addr=host, registry=self.registry)
