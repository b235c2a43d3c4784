"""The expert daemon: watch the chain, answer the queries that drew this expert, score when drawn.

It learns about work from block events (`query_assigned` names the respondents, `scoring_started`
the scorers), woken by CometBFT's websocket and falling back to polling, and reads every height's
results so a reconnect or restart misses nothing. What to do next is always decided from the chain's
own QueryStatus, so a restarted daemon never commits twice: it acts only on steps the chain does
not yet show. Answers and scores are kept in a small state file before they are committed, so the
reveal after a restart carries exactly the committed text (salts are derived from the key).

Later rounds (experts/later_round.py): an expert with an adapter for the domain keeps its previous answer
unless its adapter finds a peer's likelier; a base-model expert takes up the answer of a peer ranked above it
(reputation in the domain, then the briefer answer), or else answers again with the peers' revealed answers
in its prompt (experts/answers.py).
Generation never waits for its turn: each tick first starts, side by side, every answer its open queries
need, so the engine batches them.
Judging (experts/judge.py): a scorer holding an adapter for the query's domain scores each final answer
by the probability its adapter gives that answer to the question (0 unless the adapter prefers it to the
base model); one without scores every answer the same (NEUTRAL). A missing final answer scores 0. It scores
the answers likely to be final while the final round runs (reading the question already once every
respondent has committed them), and keeps each score (experts/scorebook.py).

Several nodes: given a FailoverClient over them, the daemon leaves its node when it stops answering
(gRPC or CometBFT RPC) or stalls (no new height for stall_after seconds while another node is ahead),
since a missed window costs the expert, not the node. Each move is logged as `node_failover` (by the
client's on_switch, which experts/cli.py sets) and heights, events, websocket and sender follow it.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import grpc

from abci_app.x.auth.types import DUTY_GAS_LIMIT, DUTY_TX_BYTES
from abci_app.x.inference.types import (
    ATTR_QUERY_ID,
    ATTR_RESPONDENTS,
    ATTR_SCORERS,
    DUTIES,
    EV_QUERY_ASSIGNED,
    EV_SCORING_STARTED,
)
from experts import judge
from experts.answers import DEFAULT_PLAN, AnswerPlan, answer_prompt, fit_answer, fitted_prompt
from experts.engine import Engine, EngineError
from experts.later_round import LaterRound
from experts.scorebook import ScoreBook
from llmnet.client import protocol
from llmnet.client.comet import CometError, comet_get
from llmnet.client.events import find
from llmnet.client.keys import Key
from llmnet.client.sdk import Client, ClientError, Sender
from llmnet.client.txbuilder import DEFAULT_GAS_LIMIT
from llmnet.files import write_private
from wire.llmnet.inference.v1 import inference_pb2 as inf
from wire.llmnet.query.v1 import query_pb2

RESEND_AFTER_BLOCKS = 3
MAX_RECORD_FIELD = 128
"""Longer than any address, domain, role or number the chain writes into a query's record (implausible)."""
GENERATE_AHEAD = 8
"""Generations one daemon keeps going at once (the engine batches up to its max_batch of them)."""
GAS_PER_QUERY_BYTE = 40
"""Gas a commit, reveal or score needs beyond DEFAULT_GAS_LIMIT, per byte of the query's record and of the
message (the chain's default charges 30 gas a byte written; a third more to spare): the last one of a
phase rewrites the query's record, prompt included, and a reveal writes its answer. A requester sending a
prompt of the largest size allowed to five respondents ran the last reveal out of gas at the default
limit: an honest expert would have missed, query after query, for a prompt someone else chose. (The fee
is paid on the limit: other answers, stored apart from the record, are not counted.)"""
STALL_AFTER = 5.0
"""Seconds at one height, while another node is ahead, before the daemon leaves its node: answer and
score windows are a few blocks long."""


def log(event: str, **fields: Any) -> None:
    """One JSON object per line on stderr."""
    print(json.dumps({"ts": round(time.time(), 3), "event": event, **fields}, sort_keys=True), file=sys.stderr,
          flush=True)


class Kind(StrEnum):
    """The transactions a daemon sends for a query."""

    COMMIT = "commit"
    REVEAL = "reveal"
    COMMIT_SCORES = "commit-scores"
    REVEAL_SCORES = "reveal-scores"


@dataclass(frozen=True, order=True)
class Step:
    """One transaction of one query: its kind, the query and the answer round (0 for scores)."""

    kind: Kind
    query_id: int
    round: int = 0

    def __str__(self) -> str:
        """As the daemon's log lines name it: kind:query[:round]."""
        return f"{self.kind}:{self.query_id}" + (f":{self.round}" if self.round else "")


@dataclass
class DaemonState:
    scanned_height: int = 0
    """The last height whose events were read (the chain's tip is usually ahead of it)."""
    open: list[int] = field(default_factory=list)
    answers: dict[tuple[int, int], str] = field(default_factory=dict)
    """(query, round) -> the answer text committed."""
    scores: dict[int, list[int]] = field(default_factory=dict)
    """query -> the scores committed."""
    sent: dict[Step, int] = field(default_factory=dict)
    """step -> the chain height when it was broadcast."""

    @classmethod
    def load(cls, path: Path) -> DaemonState:
        if not path.exists():
            return cls()
        data = json.loads(path.read_text())
        if isinstance(data.get("answers"), dict):  # the first release's "query:round" string keys
            data = _upgrade(data)
        return cls(scanned_height=data["scanned_height"], open=data["open"],
                   answers={(q, r): text for q, r, text in data["answers"]},
                   scores={q: scores for q, scores in data["scores"]},
                   sent={Step(Kind(k), q, r): h for k, q, r, h in data["sent"]})

    def save(self, path: Path) -> None:
        data = {"scanned_height": self.scanned_height, "open": self.open,
                "answers": [[q, r, text] for (q, r), text in sorted(self.answers.items())],
                "scores": [[q, s] for q, s in sorted(self.scores.items())],
                "sent": [[st.kind.value, st.query_id, st.round, h] for st, h in sorted(self.sent.items())]}
        path.parent.mkdir(parents=True, exist_ok=True)
        # private: it holds committed answers and scores before their reveal; another local user reading them
        # could copy them in the same round (the commit-reveal's whole point)
        write_private(path, json.dumps(data, sort_keys=True).encode())

    def forget(self, query_id: int) -> None:
        """Drop a settled query's entries."""
        self.open.remove(query_id)
        self.answers = {k: v for k, v in self.answers.items() if k[0] != query_id}
        self.scores.pop(query_id, None)
        self.sent = {k: v for k, v in self.sent.items() if k.query_id != query_id}


def _upgrade(old: dict[str, Any]) -> dict[str, Any]:
    """A state file written before steps were typed: keys were "query:round", "query", "kind:query[:round]"."""
    def step(key: str) -> list[Any]:
        kind, _, rest = key.partition(":")
        query, _, round_ = rest.partition(":")
        return [kind, int(query), int(round_ or 0)]

    return {"scanned_height": old["height"], "open": old["open"],
            "answers": [[*map(int, k.split(":")), v] for k, v in old["answers"].items()],
            "scores": [[int(k), v] for k, v in old["scores"].items()],
            "sent": [[*step(k), h] for k, h in old["sent"].items()]}


class BlockWatcher(threading.Thread):
    """Sets `wake` on every NewBlock from CometBFT's websocket; reconnects with backoff until `stop` is set."""

    def __init__(self, rpc_url: str, wake: threading.Event) -> None:
        super().__init__(name="block-watcher", daemon=True)
        self.ws_url = rpc_url.replace("http://", "ws://").replace("https://", "wss://").rstrip("/") + "/websocket"
        self.wake, self.stop = wake, threading.Event()

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


TX_ENVELOPE_BYTES = 512
"""More than a one-message tx adds to its message (key, signature, fee, sequence, type URL): a duty whose
tx might outgrow DUTY_TX_BYTES (an answer larger than the default limit allows) pays its fee instead."""


def implausible(query: inf.Query, params: inf.Params) -> str:
    """Why a query record, as a node reports it, cannot be one the chain wrote under params ("" if it can).
    Asked only of a duty that would not go free: a lying node padded the record until the duty paid a fee."""
    if len(query.prompt.encode()) > params.max_prompt_bytes:
        return "a prompt over max_prompt_bytes"
    if len(query.respondents) > params.max_k or len(query.scorers) > params.scorers or \
            len(query.draws) > params.max_k + params.scorers or query.rounds > params.max_rounds:
        return "more experts, draws or rounds than the chain allows"
    short = [query.requester, query.domain, *query.respondents, *query.scorers,
             *(f for d in query.draws for f in (d.address, d.role, d.weight, d.point, d.total))]
    if any(len(text) > MAX_RECORD_FIELD for text in short) or max(len(query.seed), len(query.block_seed)) > 64:
        return "a field longer than the chain writes"
    return ""


def gas_for(status: query_pb2.QueryStatusResponse, msg: Any) -> int:
    """The gas limit of this expert's tx carrying msg for a query (GAS_PER_QUERY_BYTE). Fields the chain does
    not know are left out: the chain keeps none, and a lying node padded the record with them until the duty
    could no longer go free and cost the expert a fee at the price that node reported."""
    query = inf.Query()
    query.CopyFrom(status.query)
    query.DiscardUnknownFields()
    return DEFAULT_GAS_LIMIT + GAS_PER_QUERY_BYTE * (query.ByteSize() + msg.ByteSize())


class ExpertDaemon:
    _params: inf.Params | None = None
    """The chain's inference params, read once (genesis sets them)."""

    def __init__(self, engine: Engine, key: Key, client: Client, state_file: Path,
                 rpc_urls: dict[str, str] | None = None, plan: AnswerPlan = DEFAULT_PLAN, lookback: int = 200,
                 poll_seconds: float = 2.0, stall_after: float = STALL_AFTER) -> None:
        self.engine, self.key, self.client = engine, key, client
        self.state_file = state_file
        self.state = DaemonState.load(state_file)
        self.rpc_urls = dict(rpc_urls or {})
        """A node's gRPC address -> its CometBFT RPC URL; a node not listed is asked for the one it reports."""
        self.rpc_url = ""
        """The current node's: heights, events and the websocket come from it."""
        self.plan, self.lookback, self.poll_seconds = plan, lookback, poll_seconds
        self._generating: dict[tuple[str, int, int], Future[str]] = {}
        """Answers started ahead of the step that needs them, by ("answer", query, round). Their results wait
        in the engine, shared under the query's id."""
        self._pool = ThreadPoolExecutor(max_workers=GENERATE_AHEAD, thread_name_prefix="generate")
        self._book = ScoreBook(self._pool)
        self._read_ahead: set[int] = set()
        """Queries whose question this scorer has read ahead of their answers (_judge_ahead)."""
        self.rounds = LaterRound(engine, client, key.address, self._scores)
        self.stall_after, self.clock = stall_after, time.monotonic
        self._sender: Sender | None = None
        self.chain_tip = 0
        """The chain's latest height when this tick started."""
        self._chain_id = ""
        self._on = ""
        """The node rpc_url, the block watcher and the sender belong to."""
        self._watcher: BlockWatcher | None = None
        self._progress: tuple[int, float | None] = (0, None)
        """The current node's highest height seen, and when it was first seen."""

    @property
    def chain_id(self) -> str:
        """The chain's id, asked of the node once (commitments are bound to it)."""
        if not self._chain_id:
            self._chain_id = self.client.status().chain_id
        return self._chain_id

    # -- the loop ---------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        wake = threading.Event()
        backoff = 0.5
        try:
            while not stop.is_set():
                try:
                    self._follow_node(wake)
                    self.tick()
                    self._leave_if_stalled()
                    backoff = 0.5
                except Exception as exc:  # noqa: BLE001 - the daemon outlives any one failure; a dead daemon misses work
                    self._failed(exc, backoff)
                    stop.wait(backoff)
                    backoff = min(backoff * 2, 10.0)
                    continue
                wake.wait(self.poll_seconds)
                wake.clear()
        finally:
            self._stop_watcher()
            self._pool.shutdown(wait=False, cancel_futures=True)  # generations nobody will commit

    def _failed(self, exc: Exception, backoff: float) -> None:
        node = isinstance(exc, ClientError | CometError | KeyError)  # node down or answering oddly
        error = f"{type(exc).__name__}: {exc}"[:200]
        log("node_unreachable" if node else "tick_failed", node=self._on, error=error, retry_in=backoff)
        self._sender = None  # re-read chain id and sequence once the node is back
        if node and self.client.node == self._on and len(self._nodes()) > 1:
            # the client moves on by itself when gRPC fails; a CometBFT RPC failure is only seen here
            self._move_to((self._nodes().index(self._on) + 1) % len(self._nodes()), error)

    # -- which node -------------------------------------------------------------------------------

    def _nodes(self) -> list[str]:
        return list(getattr(self.client, "nodes", [self.client.node]))

    def _move_to(self, index: int, reason: str) -> None:
        self.client.use(index, reason)  # type: ignore[attr-defined]  # several nodes come as a FailoverClient

    def _follow_node(self, wake: threading.Event) -> None:
        """Point heights, events, the websocket and the sender at the client's current node."""
        node = self.client.node
        if node == self._on and self._watcher is not None:
            return
        self._stop_watcher()
        self._on, self._sender, self._progress = node, None, (0, None)
        self.rpc_url = self._rpc_of(node)  # raises if the node is down: then _on names it and run moves on
        self._watcher = BlockWatcher(self.rpc_url, wake)
        self._watcher.start()

    def _stop_watcher(self) -> None:
        if self._watcher is not None:
            self._watcher.stop.set()
            self._watcher = None

    def _rpc_of(self, node: str) -> str:
        if node not in self.rpc_urls:
            with Client(node, timeout=5) as that:  # that very node, not whichever the shared client reaches
                self.rpc_urls[node] = that.status().cometbft_rpc
        return self.rpc_urls[node]

    def _leave_if_stalled(self) -> None:
        """A node stuck at one height while the chain goes on elsewhere makes this expert miss its windows
        and pay for its node's fault: after stall_after seconds, move to a node that is ahead."""
        height, since = self._progress
        now = self.clock()
        if self.chain_tip > height or since is None:
            self._progress = (self.chain_tip, now)
            return
        if now - since < self.stall_after or len(self._nodes()) < 2:
            return
        self._progress = (height, now)  # look at the others again only after another stall_after
        ahead = self._node_ahead(height)
        if ahead is not None:
            index, tip = ahead
            self._move_to(index, f"node {self._on} stalled at height {height} for {now - since:.0f}s while "
                                 f"{self._nodes()[index]} is at {tip}")

    def _node_ahead(self, height: int) -> tuple[int, int] | None:
        for index, node in enumerate(self._nodes()):
            if node == self._on:
                continue
            try:
                tip = int(comet_get(self._rpc_of(node), "status", timeout=3)["sync_info"]["latest_block_height"])
            except (ClientError, CometError, KeyError, ValueError):
                continue  # no better than ours
            if tip > height:
                return index, tip
        return None

    def tick(self) -> None:
        """Read new heights' events, then take every step the chain is waiting on from us."""
        self.chain_tip = self._latest_height()
        scanned = self.state.scanned_height
        if scanned > self.chain_tip:
            # Scanned past this node's tip: a node claimed heights the chain had not reached (or this one lags a
            # block). Kept, it left the daemon blind to every real height below it, on every node, until its
            # misses got it jailed: the heights past this tip are read again as this node reaches them.
            scanned = self.state.scanned_height = self.chain_tip
            log("scanned_past_tip", tip=self.chain_tip)
        for h in range(scanned + 1 if scanned else max(1, self.chain_tip - self.lookback), self.chain_tip + 1):
            if not self._scan(h):
                break  # its results are not stored yet: that height again next tick
            self.state.scanned_height = h
        statuses: dict[int, query_pb2.QueryStatusResponse] = {}
        wanted: list[tuple[tuple[str, int, int], inf.Query, list[dict[str, str]]]] = []

        def look(query_id: int) -> None:
            statuses[query_id] = self.client.query_status(query_id)
            wanted.extend(self._generations_wanted(statuses[query_id]))

        self._each_open_query(look)
        # all at once, so that the engine batches them; answers first (their windows are the shorter)
        for key, query, prompt in sorted(wanted, key=lambda w: w[0][0] != "answer"):
            self._generate_ahead(key, query, prompt)
        self._each_open_query(lambda query_id: self._judge_ahead(statuses[query_id]) if query_id in statuses
                              else None)
        self._each_open_query(lambda query_id: self.step(query_id, statuses.get(query_id)))
        self.state.save(self.state_file)

    def _each_open_query(self, work: Callable[[int], None]) -> None:
        for query_id in sorted(self.state.open):
            try:
                work(query_id)
            except (ClientError, CometError):
                raise  # the node, not this query: the loop backs off
            except Exception as err:  # noqa: BLE001 - one query's failure never stops the others
                log("cannot_answer" if isinstance(err, EngineError) else "step_failed", query_id=query_id,
                    error=f"{type(err).__name__}: {err}"[:300])

    def _latest_height(self) -> int:
        return int(comet_get(self.rpc_url, "status")["sync_info"]["latest_block_height"])

    def _scan(self, height: int) -> bool:
        """Note the queries a height's events hand us; False when the node has not stored its results yet."""
        try:
            results = comet_get(self.rpc_url, "block_results", height=height)
        except CometError as err:
            # a node reports a height in `status` a moment before its block results can be read: a healthy
            # node, not a reason to leave it for another (an older height it lacks is a real gap)
            if height == self.chain_tip and "could not find results for height" in str(err):
                return False
            raise
        events = [e for tx in results.get("txs_results") or [] for e in tx.get("events") or []]
        events += results.get("finalize_block_events") or []
        for kind, names, role in ((EV_QUERY_ASSIGNED, ATTR_RESPONDENTS, "respondent"),
                                  (EV_QUERY_ASSIGNED, ATTR_SCORERS, "scorer"),
                                  (EV_SCORING_STARTED, ATTR_SCORERS, "scorer")):
            for attrs in find(events, kind):
                query_id = int(attrs[ATTR_QUERY_ID])
                if self.key.address in attrs.get(names, "").split(",") and query_id not in self.state.open:
                    self.state.open.append(query_id)
                    log("assigned", query_id=query_id, role=role, height=height)
        return True

    # -- one query --------------------------------------------------------------------------------

    def _generations_wanted(self, status: query_pb2.QueryStatusResponse
                            ) -> list[tuple[tuple[str, int, int], inf.Query, list[dict[str, str]]]]:
        """What this query will need from the model and does not have yet (see the module's doc)."""
        query, me = status.query, self.key.address
        answer = ("answer", query.id, query.round)
        wanted = []  # the prompt is built only for what is not already under way
        if answer not in self._generating and query.phase == inf.PHASE_ANSWER_COMMIT and me in query.respondents \
                and (query.id, query.round) not in self.state.answers \
                and not self.rounds.answered_without_model(status) \
                and not any(a.respondent == me and a.round == query.round for a in status.answers):
            wanted.append((answer, query, self._answer_prompt(status)))
        return wanted

    def _generate_ahead(self, key: tuple[str, int, int], query: inf.Query, prompt: list[dict[str, str]]) -> None:
        """Start a generation in the background; the step that needs it later joins it or takes its result.
        A failure is left for that step to meet and log."""
        if key not in self._generating:
            future = self._pool.submit(self._generate, query, prompt)
            self._generating[key] = future
            future.add_done_callback(lambda _: self._generating.pop(key, None))

    def _judge_ahead(self, status: query_pb2.QueryStatusResponse) -> None:
        """As a scorer with the domain's adapter, start scoring the answers the final round is likely to end
        with: the previous round's (kept or adopted by trained respondents) and the final round's as they are
        revealed. The scoring phase then waits only for what is new (experts/scorebook.py)."""
        query = status.query
        domain = self.engine.adapter_for(query.domain)
        if not domain or self.key.address not in query.scorers \
                or query.phase not in (inf.PHASE_ANSWER_COMMIT, inf.PHASE_ANSWER_REVEAL):
            return
        likely = [a.answer for a in status.answers if a.revealed and a.round >= query.rounds - 1]
        if likely:
            self._book.ahead(query.id, likely, lambda answers: self._likelihood_scores(query, answers, domain))
        elif query.id not in self._read_ahead and len(query.respondents) == sum(
                a.round == max(1, query.rounds - 1) for a in status.answers):
            # every respondent committed the round to be judged ahead: none is generating for this query now,
            # so the question can be read (kept by the engine) before the answers are revealed
            self._read_ahead.add(query.id)
            reading = self._pool.submit(self.engine.answer_logprobs, fitted_prompt(self.engine, query, []), [], domain)
            reading.add_done_callback(lambda done: done.exception() is None or log(
                "cannot_read_ahead", query_id=query.id, error=f"{type(done.exception()).__name__}"))

    def _scores(self, query: inf.Query, answers: list[str], domain: str) -> list[int]:
        """_likelihood_scores, each answer's computed once per query."""
        return self._book.scores(query.id, answers, lambda todo: self._likelihood_scores(query, todo, domain))

    def _generate(self, query: inf.Query, prompt: list[dict[str, str]]) -> str:
        """Generation as every step asks it: the query's adapter, greedy, seeded by the query and shared
        under its id (with the server's provisional answers too)."""
        domain = self.engine.adapter_for(query.domain)
        return self.engine.generate(prompt, self.plan.sampling(query), domain, share=query.id, urgent=True).text

    def _answer_prompt(self, status: query_pb2.QueryStatusResponse) -> list[dict[str, str]]:
        return fitted_prompt(self.engine, status.query, self.rounds.peers(status))

    def step(self, query_id: int, status: query_pb2.QueryStatusResponse | None = None) -> None:
        status = status or self.client.query_status(query_id)
        query = status.query
        me = self.key.address
        if query.phase == inf.PHASE_SETTLED:
            if not self._has_receipt(query_id):
                return  # a status that says settled without a receipt: believed, it lost an unrevealed answer
            self.state.forget(query_id)
            self._book.forget(query_id)
            self.rounds.forget(query_id)
            self._read_ahead.discard(query_id)
            log("settled", query_id=query_id)
            return
        if query.phase in (inf.PHASE_ANSWER_COMMIT, inf.PHASE_ANSWER_REVEAL) and me in query.respondents:
            self._answer_step(status)
        elif query.phase in (inf.PHASE_SCORE_COMMIT, inf.PHASE_SCORE_REVEAL) and me in query.scorers:
            self._score_step(status)

    def _gas(self, status: query_pb2.QueryStatusResponse, msg: Any) -> int:
        """gas_for; a duty that would then pay a fee is sent only for a record the chain could have written."""
        gas = gas_for(status, msg)
        if gas > DUTY_GAS_LIMIT and (why := implausible(status.query, self._inference_params())):
            raise ValueError(f"the node's record of query {status.query.id} has {why}: no tx that would pay for it")
        return gas

    def _has_receipt(self, query_id: int) -> bool:
        try:
            self.client.receipt(query_id)
        except ClientError as err:
            if err.status != grpc.StatusCode.NOT_FOUND:
                raise  # the node, not the query: the loop backs off
            log("settled_without_receipt", query_id=query_id)
            return False
        return True

    def _max_answer_bytes(self) -> int:
        """The longest answer the chain reveals, asked once. Not guessed while the node cannot say (ClientError
        goes up: the step is tried again next tick): an answer cut to a guess longer than the chain's limit would
        be committed and its reveal refused."""
        return int(self._inference_params().max_answer_bytes)

    def _inference_params(self) -> inf.Params:
        """The chain's inference params, asked once (genesis sets them)."""
        if self._params is None:
            self._params = self.client.params().inference
        return self._params

    def _answer_step(self, status: query_pb2.QueryStatusResponse) -> None:
        query, me = status.query, self.key.address
        mine = next((a for a in status.answers if a.respondent == me and a.round == query.round), None)
        slot = (query.id, query.round)
        if query.phase == inf.PHASE_ANSWER_COMMIT and mine is None:
            if slot not in self.state.answers:
                limit = self._max_answer_bytes()  # first: the node may not answer, and a generation is not free
                chosen = self.rounds.without_model(status)
                text, how = chosen if chosen is not None else \
                    (self._generate(query, self._answer_prompt(status)), "generated")
                self.state.answers[slot] = fit_answer(text, limit)
                self.state.save(self.state_file)  # before the commit: the reveal must match it
                log("answered", query_id=query.id, round=query.round, peers=len(self.rounds.peers(status)),
                    domain=self.engine.adapter_for(query.domain) or "base", chars=len(text), how=how)
            text = self.state.answers[slot]
            commit = protocol.commit_answer(self.key, self.chain_id, query.id, query.round, text)
            self._send(Step(Kind.COMMIT, *slot), commit, self._gas(status, commit))
        elif query.phase == inf.PHASE_ANSWER_REVEAL and mine is not None and not mine.revealed:
            if slot not in self.state.answers:
                log("cannot_reveal", query_id=query.id, round=query.round, reason="answer text lost")
                return
            text = self.state.answers[slot]
            reveal = protocol.reveal_answer(self.key, self.chain_id, query.id, query.round, text)
            self._send(Step(Kind.REVEAL, *slot), reveal, self._gas(status, reveal))

    def _score_step(self, status: query_pb2.QueryStatusResponse) -> None:
        query, me = status.query, self.key.address
        mine = next((s for s in status.scores if s.scorer == me), None)
        slot = query.id
        if query.phase == inf.PHASE_SCORE_COMMIT and mine is None:
            if slot not in self.state.scores:
                self.state.scores[slot] = self.judge(status)
                self.state.save(self.state_file)
                log("judged", query_id=query.id, scores=self.state.scores[slot])
            scores = self.state.scores[slot]
            commit = protocol.commit_scores(self.key, self.chain_id, query.id, scores)
            self._send(Step(Kind.COMMIT_SCORES, slot), commit, self._gas(status, commit))
        elif query.phase == inf.PHASE_SCORE_REVEAL and mine is not None and not mine.revealed:
            if slot not in self.state.scores:
                log("cannot_reveal", query_id=query.id, reason="scores lost")
                return
            scores = self.state.scores[slot]
            reveal = protocol.reveal_scores(self.key, self.chain_id, query.id, scores)
            self._send(Step(Kind.REVEAL_SCORES, slot), reveal, self._gas(status, reveal))

    def judge(self, status: query_pb2.QueryStatusResponse) -> list[int]:
        query = status.query
        finals = {a.respondent: a.answer for a in status.answers if a.round == query.rounds and a.revealed}
        domain = self.engine.adapter_for(query.domain)
        if not domain:  # nothing to judge with (experts/judge.py)
            return [judge.neutral(finals.get(r)) for r in query.respondents]
        given = [r for r in query.respondents if finals.get(r) is not None]
        scores = dict(zip(given, self._scores(query, [finals[r] for r in given], domain), strict=True))
        return [scores.get(r, 0) for r in query.respondents]

    def _likelihood_scores(self, query: inf.Query, answers: list[str], domain: str) -> list[int | None]:
        """experts/judge.py's score of each answer to query. An answer the engine fails on has None (the score
        book gives it 0 if it fails again when the scores are due) alone: one peer's text never costs the
        others their scores, and one failure while scoring ahead does not stick to it."""
        # the adapter reads the question with its notes, as it answers it; the base model, which the lift is
        # measured against, without: notes would make the right answer likely to any model that can read
        question = self.engine.fit(answer_prompt(query, []))
        noted = fitted_prompt(self.engine, query, [])
        started = time.monotonic()
        try:
            adapted = self.engine.answer_logprobs(noted, answers, domain)
            # the base model's pass only where it can change the score (a wordy answer the adapter finds
            # unlikely scores 0 either way): it costs as much as the adapter's, and scorers and later-round
            # respondents wait for it
            needed = [i for i, lp in enumerate(adapted) if judge.adapter_score(lp) > 0]
            base = dict(zip(needed, self.engine.answer_logprobs(question, [answers[i] for i in needed], ""),
                            strict=True)) if needed else {}
            log("scored", query_id=query.id, answers=len(answers), base_passes=len(base),
                seconds=round(time.monotonic() - started, 3))
            return [judge.likelihood_score(lp, base[i]) if i in base else 0 for i, lp in enumerate(adapted)]
        except Exception:  # noqa: BLE001 - find the answer that failed
            if len(answers) == 1:
                log("cannot_score", query_id=query.id, chars=len(answers[0]))
                return [None]
            return [s for a in answers for s in self._likelihood_scores(query, [a], domain)]

    def _chain_height_now(self) -> int:
        """The height when a tx leaves. A tick can run long (catch-up scans, generation), so its start height
        is stale; timing a resend from it would resend before the first copy had a chance to land."""
        try:
            return self._latest_height()
        except CometError:
            return self.chain_tip

    def _send(self, step: Step, msg: Any, gas_limit: int = DEFAULT_GAS_LIMIT) -> None:
        """Broadcast once; again only if RESEND_AFTER_BLOCKS pass without the chain showing it."""
        sent_at = self.state.sent.get(step)
        if sent_at is not None and self.chain_tip < sent_at + RESEND_AFTER_BLOCKS:
            return
        if self._sender is None:
            self._sender = Sender(self.client, self.key)
        free = isinstance(msg, DUTIES) and gas_limit <= DUTY_GAS_LIMIT and \
            msg.ByteSize() + TX_ENVELOPE_BYTES <= DUTY_TX_BYTES  # the query's fee paid for it (else it pays)
        try:
            result = self._sender.send([msg], gas_limit=gas_limit, fee=0 if free else None)
        except ClientError as err:
            log("tx_refused", step=str(step), error=str(err)[:300])
            self._sender = None  # the sequence may be off; re-read it next time
            self.state.sent[step] = self._chain_height_now()
            return
        self.state.sent[step] = self._chain_height_now()
        self.state.save(self.state_file)
        if result.seen:  # a resend the node answered "tx already exists in cache": the first copy went through
            log("tx_already_accepted", step=str(step), tx_hash=result.tx_hash, sequence=result.sequence,
                seen=result.seen)
        else:
            log("tx_sent", step=str(step), tx_hash=result.tx_hash, sequence=result.sequence)
