"""Latency and throughput of queries, each a ratio against direct model calls measured in the same run.

    python bench/latency.py [--questions 6] [--adapters experts/adapters] [--timeout-commit 100ms]
                            [--empty-blocks-interval 1s]
                            [--requesters 8] [--per-requester 2] [--output json]

A 4-validator localnet with the demo's four experts (`llmnet-expert run` on the embedded model; with
--adapters, two of them serve the trained adapters) and one more `llmnet-expert serve --open` process with
the same model, adapters and settings (one thread, as the demo's experts run when four share a machine):
the direct server, the same expert called directly (a network expert serves only its queries' requesters).

1. Latency, one query at a time (k=2, 2 rounds, 2 scorers, as `llmnet ask` asks): the time from the start
   of an ask to its first provisional token, its first whole provisional answer, the final round's
   answers (all revealed) and settlement, each divided by the time of one direct Generate of the same
   question (same model, adapter and sampling) on the idle direct server just before. Medians.
   A timeline per query (seconds and block heights of every phase) says where the time goes.
2. Throughput: --requesters keys ask --per-requester questions each, back to back, all at once: queries
   settled per minute, next to the machine's direct capacity measured the same way (as many concurrent
   clients calling the direct server), expressed in queries per minute by dividing it by the model calls
   a query needs (k x rounds answers + one reference per scorer).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402

from experts.answers import expert_messages  # noqa: E402
from experts.meaning import served_notes  # noqa: E402
from experts.notes import Notes  # noqa: E402
from llmnet.client.ask import submit  # noqa: E402
from llmnet.client.keys import Keyring  # noqa: E402
from llmnet.client.provisional import Provisional, ProvisionalAnswers  # noqa: E402
from llmnet.client.sdk import Client  # noqa: E402
from llmnet.node.localnet import Localnet  # noqa: E402
from tools.demo import EXPERTS, PARAMS, TIMEOUT_COMMIT, start_experts, stop_all, wait_ready  # noqa: E402
from wire.llmnet.expert.v1 import expert_pb2 as pb  # noqa: E402
from wire.llmnet.expert.v1 import expert_pb2_grpc  # noqa: E402
from wire.llmnet.inference.v1 import inference_pb2 as inf  # noqa: E402

K, ROUNDS, SCORERS, ANSWER_TOKENS = 2, 2, 2, 24
CALLS_PER_QUERY = K * ROUNDS + SCORERS
DIRECT_PORT = 50171


def questions(adapters: Path | None, domains: list[str], count: int) -> list[tuple[str, str]]:
    """(domain, question), round robin over the domains: the dev split beside the adapters, else the
    repository's training questions (latency does not depend on which)."""
    per_domain = {}
    for d in domains:
        dev = adapters / "data" / f"{d}.dev.jsonl" if adapters is not None else None
        path = dev if dev is not None and dev.exists() else ROOT / "data" / "domains" / d / "qa_train.jsonl"
        per_domain[d] = [json.loads(line)["question"] for line in path.read_text().splitlines() if line.strip()]
    return [(domains[i % len(domains)], per_domain[domains[i % len(domains)]][i // len(domains)])
            for i in range(count)]


def direct_server(adapters: Path | None, domains: list[str], home: Path) -> Any:
    import subprocess

    args = [a for d in domains for a in ("--adapter", f"{d}={adapters / d}")] if adapters is not None else []
    log = (home / "direct.log").open("wb")
    proc = subprocess.Popen([ROOT / ".venv" / "bin" / "llmnet-expert", "serve", "--open", *args, "--listen",
                             f"127.0.0.1:{DIRECT_PORT}", "--max-concurrent", "16", "--threads", "1"],
                            stdout=log, stderr=log)
    channel = grpc.insecure_channel(f"127.0.0.1:{DIRECT_PORT}")
    grpc.channel_ready_future(channel).result(timeout=300)
    return proc, expert_pb2_grpc.ExpertServiceStub(channel)


@functools.cache
def adapter_notes(adapters: Path | None, domain: str) -> Notes | None:
    return served_notes(adapters / domain) if adapters is not None else None  # as the experts rank them


def direct_call(stub: Any, adapters: Path | None, domain: str, question: str) -> float:
    """One direct Generate of the prompt the trained expert answers question with (its notes included)."""
    messages = expert_messages(question, adapter_notes(adapters, domain))
    request = pb.GenerateRequest(messages=[pb.ChatMessage(**m) for m in messages],
                                 sampling=pb.Sampling(max_new_tokens=ANSWER_TOKENS),
                                 domain=domain if adapters is not None else "")
    t0 = time.monotonic()
    stub.Generate(request, timeout=300)
    return time.monotonic() - t0


def timed_ask(client: Client, key: Any, chain_id: str, domain: str, question: str) -> dict[str, Any]:
    """One ask as `llmnet ask` makes it, with the time (from its start) and height of every phase."""
    t0 = time.monotonic()
    marks: dict[str, float] = {}
    lock = threading.Lock()

    def mark(name: str) -> None:
        with lock:
            marks.setdefault(name, round(time.monotonic() - t0, 3))

    def answered(answer: Provisional) -> None:
        if not answer.error:
            mark("first_answer")

    early = ProvisionalAnswers(client, key, chain_id, t0, answered, lambda expert, text: mark("first_token"))
    query_id = submit(client, key, domain, question, 100_000, K, ROUNDS)
    mark("included")
    timeline: list[tuple[float, int, str]] = []
    seen = None
    while True:
        st = client.query_status(query_id)
        phase = (inf.Phase.Name(st.query.phase), st.query.round)
        if phase != seen:
            seen = phase
            timeline.append((round(time.monotonic() - t0, 3), st.height, f"{phase[0]} r{phase[1]}"))
            if st.query.respondents and "drawn" not in marks:
                mark("drawn")
                early.start(st.query)
            if st.query.phase == inf.PHASE_SCORE_COMMIT:
                mark("final_answers")
            if st.query.phase == inf.PHASE_SETTLED:
                mark("settled")
                break
        time.sleep(0.05)
    answers = early.wait(timeout=10)
    return {"query_id": query_id, "marks": marks, "timeline": timeline,
            "provisional": [a.error or a.text for a in answers]}


def latency(net: Localnet, stub: Any, work: list[tuple[str, str]], adapters: Path | None) -> dict[str, Any]:
    manifest = net.manifest()
    key = Keyring(manifest["keyring"]).load("faucet", None)
    rows = []
    with Client(manifest["nodes"][1]["grpc"]) as client:
        chain_id = client.status().chain_id
        for domain, question in work:
            direct = direct_call(stub, adapters, domain, question)
            asked = timed_ask(client, key, chain_id, domain, question)
            asked["direct_seconds"] = round(direct, 3)
            rows.append(asked)
            print(f"  query {asked['query_id']}: direct {direct:.2f}s; {asked['marks']}", file=sys.stderr)
    ratios = {}
    for name in ("first_token", "first_answer", "final_answers", "settled"):
        got = [r["marks"][name] / r["direct_seconds"] for r in rows if name in r["marks"]]
        ratios[name] = round(statistics.median(got), 2) if got else None
    direct = statistics.median(r["direct_seconds"] for r in rows)
    return {"queries": len(rows), "median_direct_seconds": round(direct, 3),
            "median_seconds": {n: round(statistics.median(r["marks"][n] for r in rows if n in r["marks"]), 3)
                               for n in ("included", "drawn", "first_token", "first_answer", "final_answers",
                                         "settled") if any(n in r["marks"] for r in rows)},
            "ratio_to_direct": ratios, "per_query": rows}


def throughput(net: Localnet, stub: Any, work: list[tuple[str, str]], requesters: int, per_requester: int,
               adapters: Path | None) -> dict[str, Any]:
    manifest = net.manifest()
    ring = Keyring(manifest["keyring"])
    names = manifest["keys"][1 + len(EXPERTS):1 + len(EXPERTS) + requesters]
    jobs = [work[i % len(work)] for i in range(requesters * per_requester)]

    def direct_worker(i: int) -> None:
        for domain, question in jobs[i::requesters]:
            direct_call(stub, adapters, domain, question)

    t0 = time.monotonic()
    with ThreadPoolExecutor(requesters) as pool:
        list(pool.map(direct_worker, range(requesters)))
    direct_per_minute = len(jobs) / (time.monotonic() - t0) * 60

    settled = []

    def ask_worker(i: int) -> None:
        key = ring.load(names[i], None)
        with Client(manifest["nodes"][i % len(manifest["nodes"])]["grpc"]) as client:
            chain_id = client.status().chain_id
            for domain, question in jobs[i::requesters]:
                settled.append(timed_ask(client, key, chain_id, domain, question)["marks"]["settled"])

    t0 = time.monotonic()
    with ThreadPoolExecutor(requesters) as pool:
        list(pool.map(ask_worker, range(requesters)))
    per_minute = len(settled) / (time.monotonic() - t0) * 60
    capacity = direct_per_minute / CALLS_PER_QUERY
    return {"requesters": requesters, "queries": len(settled), "settled_per_minute": round(per_minute, 2),
            "direct_calls_per_minute": round(direct_per_minute, 2), "calls_per_query": CALLS_PER_QUERY,
            "capacity_queries_per_minute": round(capacity, 2), "ratio_to_capacity": round(per_minute / capacity, 2),
            "median_settle_seconds": round(statistics.median(settled), 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--questions", type=int, default=6, help="questions asked one at a time (default 6)")
    p.add_argument("--adapters", default="experts/adapters",
                   help="trained adapters (make experts); without them every expert is the base model")
    p.add_argument("--timeout-commit", default=TIMEOUT_COMMIT, help="the localnet's consensus.timeout_commit "
                                                                     f"(default {TIMEOUT_COMMIT}, as the demo)")
    p.add_argument("--empty-blocks-interval", default="", metavar="DURATION",
                   help="blocks only for txs, and an empty one at least this often (default: a block every "
                        "timeout_commit, as the demo)")
    p.add_argument("--requesters", type=int, default=8, help="concurrent requesters for throughput (0: skip)")
    p.add_argument("--per-requester", type=int, default=2, help="queries each requester asks (default 2)")
    p.add_argument("--home", default="", help="keep the localnet and expert logs here (default: a temporary "
                                              "directory, removed at the end)")
    p.add_argument("--output", choices=("text", "json"), default="text")
    args = p.parse_args()
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # what the set-up and its subprocesses print goes to stderr; the figures alone to stdout
    adapters: Path | None = ROOT / args.adapters
    assert adapters is not None
    domains = sorted(d.name for d in adapters.iterdir() if (d / "manifest.json").exists()) if adapters.is_dir() else []
    if not domains:
        adapters, domains = None, sorted(d.name for d in (ROOT / "data" / "domains").iterdir() if d.is_dir())
    home = Path(args.home).resolve() if args.home else Path(tempfile.mkdtemp(prefix="llmnet-latency-"))
    if args.home:
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir(parents=True)
    net = Localnet(home / "net", str(ROOT / "bin" / "cometbft"))
    net.create(4, base_port=27600, accounts=1 + len(EXPERTS) + max(args.requesters, 1),
               timeout_commit=args.timeout_commit, params=PARAMS, empty_blocks_interval=args.empty_blocks_interval)
    procs: list[Any] = []
    try:
        net.start()
        procs = start_experts(net, adapters, domains, home, answer_tokens=ANSWER_TOKENS, capacity=16)
        direct_proc, stub = direct_server(adapters, domains, home)
        procs.append(direct_proc)
        wait_ready(home)
        work = questions(adapters, domains, max(args.questions, args.requesters * args.per_requester))
        trained = adapters is not None
        direct_call(stub, adapters, *work[0])  # warm the direct server
        result: dict[str, Any] = {"timeout_commit": args.timeout_commit, "trained_adapters": trained,
                                  "empty_blocks_interval": args.empty_blocks_interval,
                                  "latency": latency(net, stub, work[:args.questions], adapters)}
        if args.requesters:
            result["throughput"] = throughput(net, stub, work, args.requesters, args.per_requester, adapters)
    finally:
        stop_all(procs)
        net.stop()
        if not args.home:
            shutil.rmtree(home, ignore_errors=True)
    if args.output == "json":
        print(json.dumps(result, indent=2), file=out)
        return
    lat = result["latency"]
    print(f"latency over {lat['queries']} queries (median direct call {lat['median_direct_seconds']} s):", file=out)
    for name, ratio in lat["ratio_to_direct"].items():
        print(f"  {name:<14} {lat['median_seconds'].get(name, '-')!s:>7} s  {ratio}x a direct call", file=out)
    if "throughput" in result:
        t = result["throughput"]
        print(f"throughput with {t['requesters']} requesters: {t['settled_per_minute']} queries/min settled; direct "
              f"capacity {t['direct_calls_per_minute']} calls/min = {t['capacity_queries_per_minute']} queries/min "
              f"at {t['calls_per_query']} calls per query; ratio {t['ratio_to_capacity']}", file=out)


if __name__ == "__main__":
    main()
