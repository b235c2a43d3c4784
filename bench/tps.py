"""Throughput of the chain, each figure next to a baseline measured in the same run.

1. App alone: signed MsgSend txs through FinalizeBlock+Commit over the ABCI socket, no consensus
   (signatures are cold: nothing was CheckTx'd first).
2. Commit cost: stage+commit of one block of writes into a state of 10k keys and of 1M keys.
3. Localnets: committed tx/s of our app on 1 and 4 validators, next to CometBFT's built-in
   kvstore app on identical localnet settings, fed the same way (JSON-RPC batches of
   broadcast_tx_async) with txs of the same size. Time runs from the first broadcast until the
   last block holding one of the txs is committed (the time in the next block's header).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from abci_app.store.db import CommittedStore  # noqa: E402
from llmnet.client.keys import Keyring  # noqa: E402
from llmnet.client.txbuilder import build_tx, send_msg  # noqa: E402
from llmnet.devchain import seeded_key  # noqa: E402
from llmnet.node.abci.framing import Decoder, frame  # noqa: E402
from llmnet.node.localnet import Localnet  # noqa: E402
from wire.tendermint.abci import types_pb2 as abci  # noqa: E402

CHAIN_ID = "bench"
RPC_BATCH = 10  # CometBFT's default rpc.max_request_batch_size
STREAMS = 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- 1. the app alone over the socket -------------------------------------------------------


async def _abci_call(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, decoder: Decoder,
                     **kind: Any) -> abci.Response:
    writer.write(frame(abci.Request(**kind).SerializeToString())
                 + frame(abci.Request(flush=abci.RequestFlush()).SerializeToString()))
    await writer.drain()
    got: list[bytes] = []
    while len(got) < 2:
        got += decoder.feed(await reader.read(1 << 20))
    return abci.Response.FromString(got[0])


def app_alone(blocks: int, per_block: int, senders: int) -> dict[str, float]:
    keys = [seeded_key(f"bench-{i}") for i in range(senders)]
    per_sender = blocks * per_block // senders
    txs = [build_tx(k, CHAIN_ID, s, [send_msg(k.address, keys[0].address, 1)], fee=2000)
           for s in range(per_sender) for k in keys]
    with tempfile.TemporaryDirectory() as home:
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "llmnet.node.cli", "start", "--home", home, "--abci", f"tcp://127.0.0.1:{port}",
             "--grpc", f"127.0.0.1:{free_port()}", "--metrics", "", "--log-level", "warning"], cwd=ROOT)
        try:
            deadline = time.monotonic() + 60
            while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
                if time.monotonic() > deadline:
                    raise RuntimeError("app did not start")
                time.sleep(0.1)

            async def drive() -> float:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                dec = Decoder()
                genesis = {"bank": {"balances": [{"address": k.address, "amount": "1000000000000"} for k in keys]}}
                await _abci_call(reader, writer, dec, init_chain=abci.RequestInitChain(
                    chain_id=CHAIN_ID, app_state_bytes=json.dumps(genesis).encode(), initial_height=1))
                started = time.perf_counter()
                for b in range(blocks):
                    chunk = txs[b * per_block:(b + 1) * per_block]
                    fin = await _abci_call(reader, writer, dec, finalize_block=abci.RequestFinalizeBlock(
                        txs=chunk, height=b + 1, hash=bytes(32)))
                    assert all(r.code == 0 for r in fin.finalize_block.tx_results)
                    await _abci_call(reader, writer, dec, commit=abci.RequestCommit())
                elapsed = time.perf_counter() - started
                writer.close()
                return elapsed

            elapsed = asyncio.run(drive())
        finally:
            proc.terminate()
            proc.wait(30)
    return {"txs": len(txs), "seconds": elapsed, "tx_per_s": len(txs) / elapsed}


# -- 2. commit cost versus state size -------------------------------------------------------


def commit_cost(keys: int, writes: int, rounds: int = 5) -> float:
    """Median ms to stage+commit one block of `writes` (half updates, half new keys) into a
    state of `keys` keys."""
    with tempfile.TemporaryDirectory() as d:
        db = Path(d) / "s.db"
        store = CommittedStore(db, ["bank"])
        store.close()
        with sqlite3.connect(db) as conn:
            conn.executemany("INSERT INTO kv (store, key, value, pos) VALUES ('bank', ?, ?, ?)",
                             ((b"k%09d" % i, b"v%d" % i, i) for i in range(keys)))
        store = CommittedStore(db, ["bank"])
        assert store.trees["bank"].size == keys
        times = []
        for r in range(rounds):
            w: dict[tuple[str, bytes], bytes | None] = {}
            for i in range(writes // 2):
                w[("bank", b"k%09d" % ((i * 7919 + r * 104729) % keys))] = b"u%d-%d" % (r, i)
                w[("bank", b"n%d-%09d" % (r, i))] = b"new"
            started = time.perf_counter()
            store.commit(store.stage(w), r + 1)
            times.append(time.perf_counter() - started)
        store.close()
    return statistics.median(times) * 1000


# -- 3. localnets: ours versus kvstore --------------------------------------------------------


def _parse_time(text: str) -> float:
    head, _, frac = text.rstrip("Z").partition(".")
    return datetime.fromisoformat(head + "+00:00").timestamp() + float("0." + (frac or "0"))


def _blocks(rpc: str, lo: int, hi: int) -> list[tuple[int, float, int]]:
    out = []
    h = hi
    while h >= lo:
        res = httpx.get(f"http://{rpc}/blockchain", params={"minHeight": max(lo, h - 19), "maxHeight": h},
                        timeout=10).json()["result"]
        for meta in res["block_metas"]:
            out.append((int(meta["header"]["height"]), _parse_time(meta["header"]["time"]), int(meta["num_txs"])))
        h -= 20
    return sorted(out)


async def _flood(streams: list[tuple[str, list[bytes]]], batch: int) -> int:
    """Send every stream's txs in order, streams concurrently; returns how many requests CometBFT
    refused (an error object instead of a result)."""
    refused = 0

    async def one(rpc: str, txs: list[bytes]) -> None:
        nonlocal refused
        async with httpx.AsyncClient(timeout=60) as client:
            for i in range(0, len(txs), batch):
                reqs = [{"jsonrpc": "2.0", "id": j, "method": "broadcast_tx_async",
                         "params": {"tx": base64.b64encode(t).decode()}} for j, t in enumerate(txs[i:i + batch])]
                replies = (await client.post(f"http://{rpc}", json=reqs)).json()
                if isinstance(replies, dict):
                    raise RuntimeError(f"CometBFT refused the batch: {replies.get('error')}")
                refused += sum(1 for r in replies if "error" in r)

    await asyncio.gather(*(one(rpc, txs) for rpc, txs in streams))
    return refused


def localnet_tps(validators: int, kvstore: bool, total: int, senders: int, timeout_commit: str,
                 base_port: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as d:
        net = Localnet(Path(d) / "net")
        net.create(validators, chain_id=CHAIN_ID, base_port=base_port, accounts=senders,
                   timeout_commit=timeout_commit, proxy_app="kvstore" if kvstore else None,
                   mempool_size=max(5000, 2 * total))
        try:
            net.start(wait_height=2)
            nodes = net.manifest()["nodes"]
            ring = Keyring(net.manifest()["keyring"])
            keys = [ring.load(n) for n in net.manifest()["keys"]]
            sample = build_tx(keys[0], CHAIN_ID, 0, [send_msg(keys[0].address, keys[1].address, 1)], fee=2000)
            # a sender always uses one stream to one node, so its sequence numbers arrive in order
            streams: list[tuple[str, list[bytes]]] = [(nodes[j % len(nodes)]["rpc"], []) for j in range(STREAMS)]
            for s in range(total // senders):
                for i, k in enumerate(keys):
                    if kvstore:
                        head = b"k%d-%d=" % (i, s)
                        tx = head + b"v" * (len(sample) - len(head))
                    else:
                        tx = build_tx(k, CHAIN_ID, s, [send_msg(k.address, keys[0].address, 1)], fee=2000)
                    streams[i % STREAMS][1].append(tx)
            sent = sum(len(v) for _, v in streams)
            start_h = max(net.height(i) or 0 for i in range(len(nodes)))
            flood_start = time.time()  # header times are wall-clock times of this same machine
            refused = asyncio.run(_flood(streams, batch=RPC_BATCH))
            rpc0 = nodes[0]["rpc"]
            committed, last_change, top = 0, time.monotonic(), start_h
            while committed < sent and time.monotonic() - last_change < 20:
                time.sleep(1)
                h = net.height(0) or top
                if h > top:
                    n = sum(b[2] for b in _blocks(rpc0, top + 1, h))
                    if n:
                        last_change = time.monotonic()
                    committed, top = committed + n, h
            with_txs = [b for b in _blocks(rpc0, start_h + 1, top) if b[2]]
            if not with_txs:
                raise RuntimeError(f"no tx was committed ({refused} of {sent} refused by CometBFT)")
            # a header's time is the median precommit time of the block before it, so block L is
            # known committed at the time in header L+1
            last = with_txs[-1][0]
            net.wait_height(last + 1, nodes=[0], timeout=60)
            span = _blocks(rpc0, last + 1, last + 1)[0][1] - flood_start
            return {"sent": sent, "refused": refused, "committed": committed, "seconds": span,
                    "tx_per_s": committed / span if span > 0 else 0.0, "blocks": len(with_txs)}
        finally:
            net.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--txs", type=int, default=24_000, help="txs per localnet run (default 24000)")
    p.add_argument("--senders", type=int, default=60, help="funded sender accounts (default 60)")
    p.add_argument("--timeout-commit", default="500ms")
    p.add_argument("--big-state", type=int, default=1_000_000, help="key count of the large state (default 1M)")
    p.add_argument("--skip", nargs="*", default=[], choices=["app", "commit", "localnet"])
    args = p.parse_args()
    out: dict[str, Any] = {}
    if "app" not in args.skip:
        out["app_alone"] = app_alone(blocks=10, per_block=2000, senders=200)
    if "commit" not in args.skip:
        small, big = commit_cost(10_000, 2000), commit_cost(args.big_state, 2000)
        out["commit_ms"] = {"keys_10k": small, f"keys_{args.big_state}": big, "ratio_big_over_small": big / small}
    if "localnet" not in args.skip:
        base = 28000
        for v in (1, 4):
            ours = localnet_tps(v, False, args.txs, args.senders, args.timeout_commit, base)
            kv = localnet_tps(v, True, args.txs, args.senders, args.timeout_commit, base + 100)
            out[f"localnet_{v}v"] = {"ours": ours, "kvstore": kv, "ratio": ours["tx_per_s"] / kv["tx_per_s"]}
    if args.json:
        print(json.dumps(out, indent=2))
        return
    if "app_alone" in out:
        a = out["app_alone"]
        print(f"app alone (FinalizeBlock+Commit over ABCI socket): {a['tx_per_s']:.0f} signed tx/s "
              f"({a['txs']} txs in {a['seconds']:.2f}s)")
    if "commit_ms" in out:
        c = out["commit_ms"]
        print(f"commit of 2000 writes: {c['keys_10k']:.1f} ms at 10k keys, "
              f"{c[f'keys_{args.big_state}']:.1f} ms at {args.big_state} keys (ratio {c['ratio_big_over_small']:.2f})")
    for v in (1, 4):
        if f"localnet_{v}v" in out:
            r = out[f"localnet_{v}v"]
            print(f"{v}-validator localnet: ours {r['ours']['tx_per_s']:.0f} tx/s "
                  f"({r['ours']['committed']}/{r['ours']['sent']} committed), kvstore {r['kvstore']['tx_per_s']:.0f} "
                  f"tx/s ({r['kvstore']['committed']}/{r['kvstore']['sent']}); ratio ours/kvstore {r['ratio']:.2f}")


if __name__ == "__main__":
    main()
