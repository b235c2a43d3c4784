"""asyncio ABCI server: CometBFT opens four connections (consensus, mempool, query, snapshot)
and expects, on each, one response per request in request order, flushed on Flush.

All handlers run on the event loop thread, so the app never sees two calls at once. An
unexpected exception is fatal: the server logs it, closes every connection and `serve()` raises
FatalError, so the node stops instead of diverging (fail-stop).

Whatever else reaches the port (a port scanner's DNS probe begins with a zero byte: an empty request) only
loses its own connection: consensus calls are taken on one connection at a time, the first to send one
(CometBFT's; a first call that fails claims nothing), and so are the calls that restore a snapshot; a
request of no known kind, the wrong ABCI version, more than MAX_CONNECTIONS at once, all close just that
connection. Keep the port unreachable by other users all the same (or use unix://): until CometBFT's consensus
connection has made its first call (at start, after a restart, in state sync), a local process could claim it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from google.protobuf.message import DecodeError

from abci_app.app import ABCI_VERSION, Application
from llmnet.address import host_port
from llmnet.node.abci.framing import Decoder, FramingError, frame
from llmnet.node.snapshots import SnapshotManager
from wire.tendermint.abci import types_pb2 as abci

log = logging.getLogger("llmnet.abci")


class FatalError(Exception):
    """The app hit an error it cannot safely continue from."""


MAX_CONNECTIONS = 16
"""CometBFT opens four."""
WRITE_BUFFER_BYTES = 1 << 20
"""Replies waiting for a client that never flushes or reads: past this, the connection waits for it."""
OWNED = {**dict.fromkeys(("init_chain", "prepare_proposal", "process_proposal", "extend_vote",
                          "verify_vote_extension", "finalize_block", "commit"), "consensus"),
         **dict.fromkeys(("offer_snapshot", "apply_snapshot_chunk"), "restore")}
"""Calls that change state or judge blocks: each group on one connection at a time (CometBFT's)."""


class ABCIServer:
    def __init__(
        self,
        app: Application,
        address: str = "tcp://127.0.0.1:26658",
        middleware: Callable[[str, Callable[[], abci.Response]], abci.Response] | None = None,
        snapshots: SnapshotManager | None = None,
    ) -> None:
        self.app = app
        self.snapshots = snapshots
        """State sync; without it the app lists no snapshots and takes no offer."""
        self.middleware = middleware
        """Wraps each call, e.g. to time it: middleware(kind, call) must return call()."""
        self.address = address
        self.fatal: BaseException | None = None
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._owners: dict[str, asyncio.StreamWriter] = {}
        """Which connection each OWNED group is taken on."""
        self._stopped = asyncio.Event()
        self._routes: dict[str, tuple[str, Callable[[Any], Any]]] = {
            "echo": ("echo", lambda r: abci.ResponseEcho(message=r.message)),
            "flush": ("flush", lambda r: abci.ResponseFlush()),
            "info": ("info", self._info),
            "init_chain": ("init_chain", app.init_chain),
            "query": ("query", app.query),
            "check_tx": ("check_tx", app.check_tx),
            "commit": ("commit", self._commit),
            "list_snapshots": ("list_snapshots", lambda r: abci.ResponseListSnapshots()),
            "offer_snapshot": ("offer_snapshot",
                               lambda r: abci.ResponseOfferSnapshot(result=abci.ResponseOfferSnapshot.REJECT)),
            "load_snapshot_chunk": ("load_snapshot_chunk", lambda r: abci.ResponseLoadSnapshotChunk()),
            "apply_snapshot_chunk": ("apply_snapshot_chunk",
                                     lambda r: abci.ResponseApplySnapshotChunk(
                                         result=abci.ResponseApplySnapshotChunk.ABORT)),
            "prepare_proposal": ("prepare_proposal", app.prepare_proposal),
            "process_proposal": ("process_proposal", app.process_proposal),
            "extend_vote": ("extend_vote", app.extend_vote),
            "verify_vote_extension": ("verify_vote_extension", app.verify_vote_extension),
            "finalize_block": ("finalize_block", app.finalize_block),
        }
        if snapshots is not None:
            for call in ("list_snapshots", "offer_snapshot", "load_snapshot_chunk", "apply_snapshot_chunk"):
                self._routes[call] = (call, getattr(snapshots, call))

    def _commit(self, req: abci.RequestCommit) -> abci.ResponseCommit:
        resp = self.app.commit(req)
        if self.snapshots is not None:  # now, while no later block can have committed: its read is this height's
            self.snapshots.after_commit()
        return resp

    def _info(self, req: abci.RequestInfo) -> abci.ResponseInfo:
        if req.abci_version and req.abci_version != ABCI_VERSION:
            raise FramingError(
                f"CometBFT speaks ABCI {req.abci_version}, this app speaks ABCI {ABCI_VERSION}: "
                "use CometBFT v0.38.x (run `make install`)"
            )
        return self.app.info(req)

    def handle(self, req: abci.Request, writer: asyncio.StreamWriter | None = None) -> abci.Response:
        """One request in, one response out. Raises FramingError for a request that only its connection should
        pay for, anything else on what is unexpected."""
        kind = req.WhichOneof("value")
        if kind is None or kind not in self._routes:
            raise FramingError(f"unknown ABCI request {kind!r}")
        group = OWNED.get(kind)
        claiming = group is not None and writer is not None and group not in self._owners
        if group is not None and writer is not None:
            owner = self._owners.setdefault(group, writer)
            if owner is not writer:
                raise FramingError(f"{kind} on a second connection: {group} calls are taken on one connection")
        field, fn = self._routes[kind]

        def call() -> abci.Response:
            resp = abci.Response()
            getattr(resp, field).CopyFrom(fn(getattr(req, kind)))
            return resp

        try:
            return call() if self.middleware is None else self.middleware(kind, call)
        except Exception as exc:  # noqa: BLE001 - a first call that fails proves it is not CometBFT's
            if not claiming:
                raise  # the connection that has driven the chain: fail-stop
            del self._owners[group]  # type: ignore[arg-type]
            raise FramingError(f"{kind} failed as the first {group} call of a connection: {exc}") from exc

    async def start(self) -> None:
        if self.address.startswith("unix://"):
            self._server = await asyncio.start_unix_server(self._connection, path=self.address[7:])
        else:
            host, port = host_port(self.address.removeprefix("tcp://"), "abci_address")
            self._server = await asyncio.start_server(self._connection, host, port)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def serve(self) -> None:
        """Run until stop() or a fatal error (then raise FatalError)."""
        if self._server is None:
            await self.start()
        await self._stopped.wait()
        if self.fatal is not None:
            raise FatalError(str(self.fatal)) from self.fatal

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.close()
        self._stopped.set()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._writers) >= MAX_CONNECTIONS:
            log.error("refusing an ABCI connection: %d are open already", len(self._writers))
            writer.close()
            return
        self._writers.add(writer)
        decoder = Decoder()
        try:
            while not self._stopped.is_set():
                chunk = await reader.read(1 << 16)
                if not chunk:
                    break
                flush = False
                for payload in decoder.feed(chunk):
                    try:
                        req = abci.Request.FromString(payload)
                    except DecodeError as exc:
                        raise FramingError(f"undecodable ABCI request: {exc}") from None
                    writer.write(frame(self.handle(req, writer).SerializeToString()))
                    flush = flush or req.WhichOneof("value") == "flush"
                    if writer.transport.get_write_buffer_size() > WRITE_BUFFER_BYTES:
                        await writer.drain()  # a client that never reads holds its own replies, not our memory
                    # The four connections share this loop: a batch of queries (anyone can send them through
                    # CometBFT's RPC) must not hold consensus calls until the whole batch is answered.
                    await asyncio.sleep(0)
                    if self._stopped.is_set():  # another connection's fatal error: answer nothing more
                        break
                if flush:
                    await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # CometBFT went away; it reconnects on restart
        except FramingError as exc:
            log.error("closing ABCI connection: %s", exc)
        except BaseException as exc:  # noqa: BLE001 - anything else is fatal by design
            log.exception("fatal error in ABCI handler; stopping the node")
            self.fatal = exc
            self.stop()
        finally:
            self._writers.discard(writer)
            for group in [g for g, owner in self._owners.items() if owner is writer]:
                del self._owners[group]  # CometBFT restarted: its next connection takes the group
            writer.close()
