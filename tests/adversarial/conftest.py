"""What the attacks run against: the real state machine in process, the node's real gRPC API over it on
loopback, and real expert servers (tiny random model) that check access against that API."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from experts.access import ChainAccess
from experts.engine import Engine, Limits
from experts.models import load_base
from experts.server import ExpertIdentity, create_server
from experts.tiny import make_tiny_model
from llmnet.client.keys import Key
from llmnet.client.sdk import Client
from llmnet.devchain import DevChain
from llmnet.node.cometrpc import CometRPC
from llmnet.node.grpc_api import create_server as create_node_api
from tests.protocol_harness import ProtocolChain

DOMAIN = "kestrel-lang"


@contextmanager
def node_api(chain: DevChain) -> Iterator[str]:
    """The node's gRPC API over chain's app, on its own event loop thread; yields host:port. (No
    CometBFT behind it: broadcasts fail, queries are answered from the app, as on a real node.)"""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    box: dict[str, Any] = {}

    async def serve() -> None:
        api, port = create_node_api(chain.app, "127.0.0.1:0", CometRPC("http://127.0.0.1:9"))
        await api.start()
        box.update(api=api, port=port)
        started.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(serve(), loop).result(30)
    started.wait(30)
    try:
        yield f"127.0.0.1:{box['port']}"
    finally:
        asyncio.run_coroutine_threadsafe(box["api"].stop(0), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


@contextmanager
def expert_server(engine: Engine, key: Key, node: str, chain_id: str) -> Iterator[str]:
    """A real ExpertService for key, checking access against the node at `node`; yields host:port."""
    client = Client(node)
    access = ChainAccess(client.query_status, chain_id, key.address)
    server, port = create_server(engine, ExpertIdentity(key, chain_id), "127.0.0.1:0", access)
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(0)
        client.close()


@pytest.fixture(scope="session")
def tiny_engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    model = make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")
    return Engine(load_base(str(model)), Limits(max_prompt_tokens=128, max_new_tokens=24))


@pytest.fixture
def chain(tmp_path: Path) -> ProtocolChain:
    c = ProtocolChain(tmp_path / "s.db", 6, [DOMAIN])
    c.register_all([DOMAIN])
    return c
