"""The expert daemon: watch the chain, answer the queries that drew this expert, score when drawn.

It learns about work from block events (`query_assigned` names the respondents, `scoring_started`
the scorers), woken by CometBFT's websocket and falling back to polling, and reads every height's
results so a reconnect or restart misses nothing. What to do next is always decided from the chain's
own QueryStatus, so a restarted daemon never commits twice: it acts only on steps the chain does
not yet show. Answers and scores are kept in a small state file before they are committed, so the
reveal after a restart carries exactly the committed text (salts are derived from the key).

Collaborative prompting: in round r > 1 the prompt carries the peers' revealed round r-1 answers.
Judging (experts/judge.py): the scorer answers the question itself, with its adapter for the domain,
and scores each final answer by its word overlap (F1) with that reference, 0-100. A missing final
answer scores 0.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experts import judge
from experts.engine import Engine, EngineError, Sampling
from llmnet.client import protocol
from llmnet.client.comet import CometError, comet_get
from llmnet.client.keys import Key
from llmnet.client.sdk import Client, ClientError, Sender
from wire.llmnet.inference.v1 import inference_pb2 as inf
from wire.llmnet.query.v1 import query_pb2

RESEND_AFTER_BLOCKS = 3


def log(event: str, **fields: Any) -> None:
    """One JSON object per line on stderr."""
    print(json.dumps({"ts": round(time.time(), 3), "event": event, **fields}, sort_keys=True), file=sys.stderr,
          flush=True)


@dataclass
class DaemonState:
    height: int = 0  # last height whose events were read
    open: list[int] = field(default_factory=list)
    answers: dict[str, str] = field(default_factory=dict)  # "query:round" -> text committed
    scores: dict[str, list[int]] = field(default_factory=dict)  # "query" -> scores committed
    sent: dict[str, int] = field(default_factory=dict)  # step -> height it was broadcast at

    @classmethod
    def load(cls, path: Path) -> DaemonState:
        if not path.exists():
            return cls()
        return cls(**json.loads(path.read_text()))

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.__dict__, sort_keys=True))
        os.replace(tmp, path)  # atomic: a crash leaves the old or the new state, never half


def answer_prompt(query: inf.Query, peers: list[str]) -> list[dict[str, str]]:
    if not peers:
        return [{"role": "user", "content": query.prompt}]
    listed = "\n".join(f"- {p}" for p in peers)
    return [{"role": "user", "content": f"{query.prompt}\n\nOther experts answered:\n{listed}\n\n"
                                        "Taking their answers into account, give your best short answer."}]


class BlockWatcher(threading.Thread):
    """Sets `wake` on every NewBlock from CometBFT's websocket; reconnects with backoff."""

    def __init__(self, rpc_url: str, wake: threading.Event, stop: threading.Event) -> None:
        super().__init__(name="block-watcher", daemon=True)
        self.ws_url = rpc_url.replace("http://", "ws://").replace("https://", "wss://").rstrip("/") + "/websocket"
        self.wake, self.stop = wake, stop

    def run(self) -> None:
        from websockets.sync.client import connect

        backoff = 0.5
        while not self.stop.is_set():
            try:
                with connect(self.ws_url, open_timeout=5, close_timeout=1) as ws:
                    ws.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "subscribe",
                                        "params": {"query": "tm.event='NewBlock'"}}))
                    log("websocket_connected", url=self.ws_url)
                    backoff = 0.5
                    while not self.stop.is_set():
                        try:
                            ws.recv(timeout=1)
                        except TimeoutError:
                            continue
                        self.wake.set()
            except Exception as exc:  # noqa: BLE001 - any transport failure means: reconnect later
                log("websocket_down", url=self.ws_url, error=str(exc)[:200], retry_in=backoff)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)


class ExpertDaemon:
    def __init__(self, engine: Engine, key: Key, client: Client, state_file: Path, rpc_url: str = "",
                 answer_tokens: int = 64, lookback: int = 200, poll_seconds: float = 2.0) -> None:
        self.engine, self.key, self.client = engine, key, client
        self.state_file = state_file
        self.state = DaemonState.load(state_file)
        self.rpc_url = rpc_url
        self.answer_tokens, self.lookback, self.poll_seconds = answer_tokens, lookback, poll_seconds
        self._sender: Sender | None = None
        self.height = 0

    # -- the loop ---------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        wake = threading.Event()
        watcher: BlockWatcher | None = None
        backoff = 0.5
        while not stop.is_set():
            try:
                if watcher is None:
                    self.rpc_url = self.rpc_url or self.client.status().cometbft_rpc
                    watcher = BlockWatcher(self.rpc_url, wake, stop)
                    watcher.start()
                self.tick()
                backoff = 0.5
            except (ClientError, CometError, KeyError) as exc:  # node down or answering oddly
                log("node_unreachable", error=f"{type(exc).__name__}: {exc}"[:200], retry_in=backoff)
                self._sender = None  # re-read chain id and sequence once the node is back
                stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            wake.wait(self.poll_seconds)
            wake.clear()

    def tick(self) -> None:
        """Read new heights' events, then take every step the chain is waiting on from us."""
        latest = self._latest_height()
        self.height = latest
        start = self.state.height + 1 if self.state.height else max(1, latest - self.lookback)
        for h in range(start, latest + 1):
            self._scan(h)
            self.state.height = h
        for query_id in sorted(self.state.open):
            try:
                self.step(query_id)
            except EngineError as err:  # e.g. a prompt over the limit: the chain records a miss
                log("cannot_answer", query_id=query_id, error=str(err))
        self.state.save(self.state_file)

    def _latest_height(self) -> int:
        return int(comet_get(self.rpc_url, "status")["sync_info"]["latest_block_height"])

    def _scan(self, height: int) -> None:
        results = comet_get(self.rpc_url, "block_results", height=height)
        events = [e for tx in results.get("txs_results") or [] for e in tx.get("events") or []]
        events += results.get("finalize_block_events") or []
        me = self.key.address
        for e in events:
            attrs = {a["key"]: a.get("value", "") for a in e.get("attributes") or []}
            names = attrs.get("respondents" if e["type"] == "query_assigned" else "scorers", "")
            if e["type"] in ("query_assigned", "scoring_started") and me in names.split(","):
                query_id = int(attrs["query_id"])
                if query_id not in self.state.open:
                    self.state.open.append(query_id)
                    log("assigned", query_id=query_id, role="respondent" if e["type"] == "query_assigned"
                        else "scorer", height=height)

    # -- one query --------------------------------------------------------------------------------

    def step(self, query_id: int) -> None:
        status = self.client.query_status(query_id)
        query = status.query
        me = self.key.address
        if query.phase == inf.PHASE_SETTLED:
            self._forget(query_id)
            log("settled", query_id=query_id)
            return
        if query.phase in (inf.PHASE_ANSWER_COMMIT, inf.PHASE_ANSWER_REVEAL) and me in query.respondents:
            self._answer_step(status)
        elif query.phase in (inf.PHASE_SCORE_COMMIT, inf.PHASE_SCORE_REVEAL) and me in query.scorers:
            self._score_step(status)

    def _answer_step(self, status: query_pb2.QueryStatusResponse) -> None:
        query, me = status.query, self.key.address
        mine = next((a for a in status.answers if a.respondent == me and a.round == query.round), None)
        slot = f"{query.id}:{query.round}"
        if query.phase == inf.PHASE_ANSWER_COMMIT and mine is None:
            if slot not in self.state.answers:
                peers = [a.answer for a in status.answers
                         if a.round == query.round - 1 and a.revealed and a.respondent != me]
                domain = query.domain if query.domain in self.engine.adapters else ""
                text = self.engine.generate(answer_prompt(query, peers),
                                            Sampling(max_new_tokens=self.answer_tokens, seed=query.id), domain).text
                self.state.answers[slot] = text.strip() or "(no answer)"
                self.state.save(self.state_file)  # before the commit: the reveal must match it
                log("answered", query_id=query.id, round=query.round, peers=len(peers), domain=domain or "base",
                    chars=len(text))
            text = self.state.answers[slot]
            self._send(f"commit:{slot}", protocol.commit_answer(self.key, query.id, query.round, text))
        elif query.phase == inf.PHASE_ANSWER_REVEAL and mine is not None and not mine.revealed:
            if slot not in self.state.answers:
                log("cannot_reveal", query_id=query.id, round=query.round, reason="answer text lost")
                return
            text = self.state.answers[slot]
            self._send(f"reveal:{slot}", protocol.reveal_answer(self.key, query.id, query.round, text))

    def _score_step(self, status: query_pb2.QueryStatusResponse) -> None:
        query, me = status.query, self.key.address
        mine = next((s for s in status.scores if s.scorer == me), None)
        slot = str(query.id)
        if query.phase == inf.PHASE_SCORE_COMMIT and mine is None:
            if slot not in self.state.scores:
                self.state.scores[slot] = self.judge(status)
                self.state.save(self.state_file)
                log("judged", query_id=query.id, scores=self.state.scores[slot])
            self._send(f"commit-scores:{slot}", protocol.commit_scores(self.key, query.id, self.state.scores[slot]))
        elif query.phase == inf.PHASE_SCORE_REVEAL and mine is not None and not mine.revealed:
            if slot not in self.state.scores:
                log("cannot_reveal", query_id=query.id, reason="scores lost")
                return
            self._send(f"reveal-scores:{slot}", protocol.reveal_scores(self.key, query.id, self.state.scores[slot]))

    def judge(self, status: query_pb2.QueryStatusResponse) -> list[int]:
        query = status.query
        finals = {a.respondent: a.answer for a in status.answers if a.round == query.rounds and a.revealed}
        domain = query.domain if query.domain in self.engine.adapters else ""
        reference = self.engine.generate(answer_prompt(query, []), Sampling(max_new_tokens=self.answer_tokens,
                                                                          seed=query.id), domain).text
        return [judge.score(finals.get(r), reference) for r in query.respondents]

    def _chain_height_now(self) -> int:
        """The height when a tx leaves. A tick can run long (catch-up scans, generation), so its start height
        is stale; timing a resend from it would resend before the first copy had a chance to land."""
        try:
            return self._latest_height()
        except CometError:
            return self.height

    def _send(self, step: str, msg: Any) -> None:
        """Broadcast once; again only if RESEND_AFTER_BLOCKS pass without the chain showing it."""
        sent_at = self.state.sent.get(step)
        if sent_at is not None and self.height < sent_at + RESEND_AFTER_BLOCKS:
            return
        if self._sender is None:
            self._sender = Sender(self.client, self.key)
        try:
            result = self._sender.send([msg])
        except ClientError as err:
            log("tx_refused", step=step, error=str(err)[:300])
            self._sender = None  # the sequence may be off; re-read it next time
            self.state.sent[step] = self._chain_height_now()
            return
        self.state.sent[step] = self._chain_height_now()
        self.state.save(self.state_file)
        log("tx_sent", step=step, tx_hash=result.tx_hash, sequence=result.sequence)

    def _forget(self, query_id: int) -> None:
        """Drop a settled query's entries: answers are "query:round", scores "query", steps "kind:query[:round]"."""
        qid = str(query_id)
        self.state.open.remove(query_id)
        self.state.answers = {k: v for k, v in self.state.answers.items() if k.split(":")[0] != qid}
        self.state.scores.pop(qid, None)
        self.state.sent = {k: v for k, v in self.state.sent.items() if k.split(":")[1] != qid}
