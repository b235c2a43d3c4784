"""The ABCI server over a real socket, driven in the call orders CometBFT's grammar allows."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from abci_app.app import Application
from llmnet.client.txbuilder import build_tx, send_msg
from llmnet.node.abci.framing import Decoder, encode_uvarint, frame
from llmnet.node.abci.server import ABCIServer
from tests.helpers import CHAIN_ID, FUNDS, deterministic_key
from wire.tendermint.abci import types_pb2 as abci

KEYS = [deterministic_key(f"key{i}") for i in range(2)]
GENESIS = json.dumps({"bank": {"balances": [{"address": k.address, "amount": str(FUNDS)} for k in KEYS]}}).encode()


class Conn:
    """One ABCI connection as CometBFT's socket client uses it: request, flush, read replies in order."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self.decoder = reader, writer, Decoder()
        self.pending: list[bytes] = []

    @classmethod
    async def open(cls, port: int) -> Conn:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def call(self, **kind: object) -> abci.Response:
        (name, value), = kind.items()
        req = abci.Request(**{name: value})
        flush = abci.Request(flush=abci.RequestFlush())
        self.writer.write(frame(req.SerializeToString()) + frame(flush.SerializeToString()))
        await self.writer.drain()
        replies: list[abci.Response] = []
        while len(replies) < 2:
            chunk = await asyncio.wait_for(self.reader.read(1 << 16), 5)
            if not chunk:
                raise ConnectionError("server closed the connection")
            replies += [abci.Response.FromString(p) for p in self.decoder.feed(chunk)]
        assert replies[1].WhichOneof("value") == "flush"
        assert replies[0].WhichOneof("value") == name, "replies must come in request order"
        return replies[0]

    def close(self) -> None:
        self.writer.close()


def tx(seq: int) -> bytes:
    return build_tx(KEYS[0], CHAIN_ID, seq, [send_msg(KEYS[0].address, KEYS[1].address, 10)], fee=2000)


async def run_block(cons: Conn, height: int, txs: list[bytes], commit: bool = True) -> bytes:
    t = Timestamp(seconds=1_700_000_000 + height)
    prep = (await cons.call(prepare_proposal=abci.RequestPrepareProposal(
        txs=txs, max_tx_bytes=1 << 20, height=height, time=t))).prepare_proposal
    assert list(prep.txs) == txs
    proc = (await cons.call(process_proposal=abci.RequestProcessProposal(txs=prep.txs, height=height, time=t)))
    assert proc.process_proposal.status == abci.ResponseProcessProposal.ACCEPT
    fin = (await cons.call(finalize_block=abci.RequestFinalizeBlock(
        txs=prep.txs, height=height, time=t, hash=hashlib.sha256(b"%d" % height).digest()))).finalize_block
    assert all(r.code == 0 for r in fin.tx_results), [r.log for r in fin.tx_results]
    if commit:
        await cons.call(commit=abci.RequestCommit())
    return bytes(fin.app_hash)


async def start(db: Path) -> tuple[ABCIServer, Application]:
    app = Application(db)
    server = ABCIServer(app, "tcp://127.0.0.1:0")
    await server.start()
    return server, app


def test_clean_start_then_recovery(tmp_path: Path) -> None:
    async def scenario() -> None:
        server, app = await start(tmp_path / "a.db")
        cons, mem, query = [await Conn.open(server.port) for _ in range(3)]
        assert (await mem.call(echo=abci.RequestEcho(message="hi"))).echo.message == "hi"
        info = (await query.call(info=abci.RequestInfo(abci_version="2.0.0"))).info
        assert info.last_block_height == 0 and info.last_block_app_hash == b""
        await cons.call(init_chain=abci.RequestInitChain(chain_id=CHAIN_ID, app_state_bytes=GENESIS, initial_height=1))
        assert (await mem.call(check_tx=abci.RequestCheckTx(tx=tx(0)))).check_tx.code == 0
        hashes = [await run_block(cons, 1, [tx(0)]), await run_block(cons, 2, [tx(1), tx(2)])]
        # crash after FinalizeBlock of height 3, before its Commit
        lost = await run_block(cons, 3, [tx(3)], commit=False)
        snapshots = (await query.call(list_snapshots=abci.RequestListSnapshots())).list_snapshots
        assert list(snapshots.snapshots) == []
        server.stop()
        app.close()

        server, app = await start(tmp_path / "a.db")
        cons, query = await Conn.open(server.port), await Conn.open(server.port)
        info = (await query.call(info=abci.RequestInfo(abci_version="2.0.0"))).info
        assert info.last_block_height == 2 and info.last_block_app_hash == hashes[-1]
        assert await run_block(cons, 3, [tx(3)]) == lost  # the handshake's replay
        offer = (await query.call(offer_snapshot=abci.RequestOfferSnapshot())).offer_snapshot
        assert offer.result == abci.ResponseOfferSnapshot.REJECT
        server.stop()
        app.close()

        # a reference app that never crashed reaches the same hash
        server, app = await start(tmp_path / "b.db")
        cons = await Conn.open(server.port)
        await cons.call(init_chain=abci.RequestInitChain(chain_id=CHAIN_ID, app_state_bytes=GENESIS, initial_height=1))
        ref = [await run_block(cons, 1, [tx(0)]), await run_block(cons, 2, [tx(1), tx(2)]),
               await run_block(cons, 3, [tx(3)])]
        assert ref == [*hashes, lost]
        server.stop()
        app.close()

    asyncio.run(scenario())


def test_process_proposal_rejects_a_bad_block(tmp_path: Path) -> None:
    async def scenario() -> None:
        server, app = await start(tmp_path / "a.db")
        cons = await Conn.open(server.port)
        await cons.call(init_chain=abci.RequestInitChain(chain_id=CHAIN_ID, app_state_bytes=GENESIS, initial_height=1))
        prep = (await cons.call(prepare_proposal=abci.RequestPrepareProposal(
            txs=[tx(0), b"junk", tx(0), tx(1)], max_tx_bytes=1 << 20, height=1))).prepare_proposal
        assert list(prep.txs) == [tx(0), tx(1)]  # junk and the replay dropped
        proc = await cons.call(process_proposal=abci.RequestProcessProposal(txs=[tx(0), b"junk"], height=1))
        assert proc.process_proposal.status == abci.ResponseProcessProposal.REJECT
        server.stop()
        app.close()

    asyncio.run(scenario())


def test_a_wrong_abci_version_closes_its_connection_with_the_reason(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """CometBFT of another ABCI version cannot hand-shake (its Info connection is closed, the log says why);
    anyone else sending such an Info stopped the node."""
    async def scenario() -> None:
        server, app = await start(tmp_path / "a.db")
        conn = await Conn.open(server.port)
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            await conn.call(info=abci.RequestInfo(abci_version="1.0.0"))
        good = await Conn.open(server.port)
        assert (await good.call(echo=abci.RequestEcho(message="up"))).echo.message == "up"
        assert server.fatal is None and "ABCI 1.0.0" in caplog.text
        server.stop()
        app.close()

    asyncio.run(scenario())


def test_whatever_else_reaches_the_port_loses_only_its_own_connection(tmp_path: Path) -> None:
    """One zero byte (an empty request: a port scanner's DNS probe begins so), a Commit or FinalizeBlock from a
    second connection (a forged block at height 1 forked the store and halted the chain), connections past the
    cap: each closed alone, and the consensus connection goes on."""
    async def scenario() -> None:
        server, app = await start(tmp_path / "a.db")
        cons = await Conn.open(server.port)
        await cons.call(init_chain=abci.RequestInitChain(chain_id=CHAIN_ID, app_state_bytes=GENESIS,
                                                         time=Timestamp(seconds=1_700_000_000)))
        probe_reader, probe_writer = await asyncio.open_connection("127.0.0.1", server.port)
        probe_writer.write(b"\x00\x1d\x12\x34\x01\x00")  # DNS over TCP: length 0x001d read as an empty frame
        await probe_writer.drain()
        assert await asyncio.wait_for(probe_reader.read(), 5) == b""
        intruder = await Conn.open(server.port)
        for forged in ({"finalize_block": abci.RequestFinalizeBlock(height=1, txs=[tx(0)])},
                       {"commit": abci.RequestCommit()}):
            with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
                await intruder.call(**forged)
            intruder = await Conn.open(server.port)
        crowd = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(20)]
        assert await asyncio.wait_for(crowd[-1][0].read(), 5) == b""  # past the cap: closed at once
        for _, w in crowd:
            w.close()
        first = await run_block(cons, 1, [tx(0)])
        assert server.fatal is None and len(first) == 32
        assert app.committed.height == 1
        cons.close()  # CometBFT restarts: until its next consensus call, the group is free to claim
        await asyncio.sleep(0.1)
        for first_call in ({"commit": abci.RequestCommit()},  # fatal from CometBFT; from a claimer, its own end
                           {"init_chain": abci.RequestInitChain(chain_id="evil", app_state_bytes=GENESIS)},
                           {"finalize_block": abci.RequestFinalizeBlock(height=9)}):
            intruder = await Conn.open(server.port)
            with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
                await intruder.call(**first_call)
        assert server.fatal is None and app.chain_id == CHAIN_ID and app.committed.height == 1
        restarted = await Conn.open(server.port)
        await run_block(restarted, 2, [tx(1)])
        assert app.committed.height == 2 and server.fatal is None
        server.stop()
        app.close()

    asyncio.run(scenario())


def test_bad_framing_closes_only_that_connection(tmp_path: Path) -> None:
    async def scenario() -> None:
        server, app = await start(tmp_path / "a.db")
        bad_reader, bad_writer = await asyncio.open_connection("127.0.0.1", server.port)
        bad_writer.write(encode_uvarint(1 << 40))
        await bad_writer.drain()
        assert await asyncio.wait_for(bad_reader.read(), 5) == b""  # closed, no hang
        good = await Conn.open(server.port)
        assert (await good.call(echo=abci.RequestEcho(message="still here"))).echo.message == "still here"
        assert server.fatal is None
        server.stop()
        app.close()

    asyncio.run(scenario())


def test_a_batch_of_queries_does_not_hold_consensus_until_it_is_answered(tmp_path: Path) -> None:
    """The four connections share one event loop, and CometBFT hands on every RPC `abci_query` anyone sends: a
    batch of requests read at once was answered back to back, and a consensus call arriving meanwhile waited
    for the whole batch (expensive queries held consensus for seconds). Now each connection lets the others
    in between two requests."""
    import time

    async def scenario() -> None:
        server, app = await start(tmp_path / "s.db")
        order: list[str] = []

        def middleware(kind: str, call):  # type: ignore[no-untyped-def]
            order.append(kind)
            if kind == "info":
                time.sleep(0.002)  # a query that takes a while
            return call()

        server.middleware = middleware
        queries, consensus = await Conn.open(server.port), await Conn.open(server.port)
        info = frame(abci.Request(info=abci.RequestInfo(abci_version="2.0.0")).SerializeToString())
        flush = frame(abci.Request(flush=abci.RequestFlush()).SerializeToString())
        queries.writer.write(info * 200 + flush)
        await queries.writer.drain()
        await asyncio.sleep(0.05)  # the batch is being answered
        assert (await consensus.call(echo=abci.RequestEcho(message="still here"))).echo.message == "still here"
        replies = 0
        while replies < 201:
            chunk = await asyncio.wait_for(queries.reader.read(1 << 16), 10)
            assert chunk, "the query connection closed"
            replies += len(queries.decoder.feed(chunk))
        assert order.count("info") == 200 and order.index("echo") < 150
        server.stop()
        app.close()

    asyncio.run(scenario())
