"""The daemon's pure parts: state persistence, prompts, commitments (no chain, no model)."""

from __future__ import annotations

import hashlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

from experts.adapters import NO_ADAPTER, model_commitment
from experts.answers import NOTES_PROMPT, SYSTEM_PROMPT, answer_prompt, fit_answer
from experts.daemon import DaemonState, ExpertDaemon, Kind, Step
from experts.judge import likelihood_score
from experts.later_round import LaterRound
from experts.notes import Notes
from experts.scorebook import ScoreBook
from llmnet.client.keys import Key
from llmnet.client.sdk import ClientError, Sender
from llmnet.client.txbuilder import send_msg
from wire.llmnet.inference.v1 import inference_pb2 as inf
from wire.llmnet.query.v1 import query_pb2 as qpb


def test_state_survives_a_round_trip_and_writes_atomically(tmp_path: Path) -> None:
    path = tmp_path / "s" / "state.json"
    assert DaemonState.load(path) == DaemonState()
    state = DaemonState(scanned_height=9, open=[3, 4], answers={(3, 1): "Marta Vensel"}, scores={4: [80, 10]},
                        sent={Step(Kind.COMMIT, 3, 1): 8, Step(Kind.REVEAL_SCORES, 4): 9})
    state.save(path)
    assert DaemonState.load(path) == state
    assert not path.with_suffix(".tmp").exists()


def test_a_state_file_of_the_first_release_still_loads(tmp_path: Path) -> None:
    """An expert upgraded in the middle of a query must still reveal what it committed."""
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"height": 9, "open": [3, 4], "answers": {"3:1": "Marta Vensel"},
                                "scores": {"4": [80, 10]}, "sent": {"commit:3:1": 8, "reveal-scores:4": 9}}))
    assert DaemonState.load(path) == DaemonState(
        scanned_height=9, open=[3, 4], answers={(3, 1): "Marta Vensel"}, scores={4: [80, 10]},
        sent={Step(Kind.COMMIT, 3, 1): 8, Step(Kind.REVEAL_SCORES, 4): 9})


def test_forgetting_a_settled_query_drops_only_its_entries(tmp_path: Path) -> None:
    state = DaemonState(open=[3, 31], answers={(3, 1): "a", (3, 2): "b", (31, 1): "c"}, scores={3: [1]},
                        sent={Step(Kind.COMMIT, 3, 1): 1, Step(Kind.REVEAL, 3, 2): 2, Step(Kind.COMMIT_SCORES, 3): 3,
                              Step(Kind.COMMIT, 31, 1): 4})
    state.forget(3)
    assert state.open == [31] and state.answers == {(31, 1): "c"} and state.scores == {}
    assert state.sent == {Step(Kind.COMMIT, 31, 1): 4}


def test_later_rounds_show_the_peers_answers() -> None:
    query = inf.Query(id=1, prompt="Who created Kestrel?")
    assert answer_prompt(query, []) == [{"role": "system", "content": SYSTEM_PROMPT},
                                        {"role": "user", "content": "Who created Kestrel?"}]
    second = answer_prompt(query, ["Marta Vensel", "Pip"])[-1]["content"]
    assert second.startswith("Who created Kestrel?") and '1. "Marta Vensel"\n2. "Pip"' in second


def test_likelihood_scores_fall_with_the_adapters_surprise_and_need_the_adapters_lift() -> None:
    base = -5.0  # far below: the lift floor is met
    assert likelihood_score(0.0, base) == 100 and likelihood_score(0.5, base) == 100  # never above 100
    assert likelihood_score(-0.05, base) == 90 and likelihood_score(-0.5, base) == 37
    assert likelihood_score(-3.0, base) == 0
    assert [likelihood_score(-x / 10, base) for x in range(30)] == \
        sorted((likelihood_score(-x / 10, base) for x in range(30)), reverse=True)
    # likely under the adapter, but as likely under the base model: its form, not the domain, made it likely
    assert likelihood_score(-0.05, -0.5) == 0 and likelihood_score(-0.05, -1.05) == 90
    assert likelihood_score(float("-inf"), base) == 0 and likelihood_score(float("nan"), base) == 0
    assert likelihood_score(-0.05, float("nan")) == 0


class _Scorer:
    """An engine holding an adapter for every domain, with made-up likelihoods per answer and per model."""

    def __init__(self, adapter: dict[str, float], base: dict[str, float], notes: Notes | None = None) -> None:
        self.by_model = {"kestrel-lang": adapter, "": base}
        self.notes = notes
        self.asked: list[tuple[str, str]] = []
        self.answers_asked: list[tuple[str, list[str]]] = []
        self.systems: list[tuple[str, str]] = []

    def adapter_for(self, domain: str) -> str:
        return domain

    def notes_for(self, domain: str) -> Notes | None:
        return self.notes

    def fits(self, messages: object) -> bool:
        return True

    def fit(self, messages: object) -> object:
        return messages

    def answer_logprobs(self, messages: list[dict[str, str]], answers: list[str], domain: str) -> list[float]:
        self.asked.append((messages[-1]["content"], domain))
        self.systems.append((domain, messages[0]["content"]))
        self.answers_asked.append((domain, list(answers)))
        if "boom" in answers:
            raise RuntimeError("this answer breaks the engine")
        return [self.by_model[domain][a] for a in answers]

    def generate(self, *args: object, **kwargs: object) -> object:
        raise AssertionError("the model generated")


def test_a_scorer_with_the_domains_adapter_scores_by_its_likelihood() -> None:
    daemon = ExpertDaemon.__new__(ExpertDaemon)
    daemon.key, daemon.state, daemon._generating = ME, DaemonState(open=[9]), {}
    daemon._book = ScoreBook(ThreadPoolExecutor(1))
    engine = _Scorer({"Marta Vensel": -0.05, "a long and wrong story": -2.0},
                     {"Marta Vensel": -4.0, "a long and wrong story": -3.0})
    daemon.engine = engine  # type: ignore[assignment]
    status = _scoring("kestrel-lang")
    assert daemon._generations_wanted(status) == []  # nothing to prepare: scoring reads the final answers
    assert daemon.judge(status) == [90, 2, 0]
    assert engine.asked == [("Who created Kestrel?", "kestrel-lang"), ("Who created Kestrel?", "")]


def test_the_adapter_judges_with_its_notes_and_the_base_model_without() -> None:
    """Notes would make a right answer likely to any model that reads them, the base model too, and the lift
    over the base model is what tells knowledge from form."""
    daemon = ExpertDaemon.__new__(ExpertDaemon)
    daemon.key, daemon.state, daemon._generating = ME, DaemonState(open=[9]), {}
    daemon._book = ScoreBook(ThreadPoolExecutor(1))
    notes = Notes(["Kestrel was created by Marta Vensel.", "Ossery Point ships solar panels."])
    engine = _Scorer({"Marta Vensel": -0.05, "a long and wrong story": -2.0},
                     {"Marta Vensel": -4.0, "a long and wrong story": -3.0}, notes)
    daemon.engine = engine  # type: ignore[assignment]
    assert daemon.judge(_scoring("kestrel-lang")) == [90, 2, 0]
    assert engine.systems == [("kestrel-lang", NOTES_PROMPT + "\n- Kestrel was created by Marta Vensel."),
                              ("", SYSTEM_PROMPT)]


def test_the_base_model_pass_is_skipped_only_where_it_cannot_change_a_score() -> None:
    """An answer the adapter finds unlikely scores 0 whatever the base model says: no base pass for it."""
    import random

    from experts.judge import adapter_score

    daemon = ExpertDaemon.__new__(ExpertDaemon)
    daemon.key, daemon.state, daemon._generating = ME, DaemonState(open=[9]), {}
    daemon._book = ScoreBook(ThreadPoolExecutor(1))
    rng = random.Random(7)
    answers = [f"answer {i}" for i in range(40)]
    adapter = {a: -rng.uniform(0, 5) for a in answers}
    base = {a: adapter[a] - rng.uniform(-1, 3) for a in answers}
    engine = _Scorer(adapter, base)
    daemon.engine = engine  # type: ignore[assignment]
    query = inf.Query(id=9, prompt="Who created Kestrel?", domain="kestrel-lang")
    scores = daemon._likelihood_scores(query, answers, "kestrel-lang")
    assert scores == [likelihood_score(adapter[a], base[a]) for a in answers]  # what both passes give
    (_, on_base), = [asked for asked in engine.answers_asked if asked[0] == ""]
    assert on_base == [a for a in answers if adapter_score(adapter[a]) > 0] and len(on_base) < len(answers)
    assert 0 in scores and any(s > 0 for s in scores)


def test_an_answer_that_breaks_the_engine_scores_0_and_only_it() -> None:
    daemon = ExpertDaemon.__new__(ExpertDaemon)
    daemon.key, daemon.state, daemon._generating = ME, DaemonState(open=[9]), {}
    daemon._book = ScoreBook(ThreadPoolExecutor(1))
    daemon.engine = _Scorer({"Marta Vensel": -0.05}, {"Marta Vensel": -4.0})  # type: ignore[assignment]
    status = _scoring("kestrel-lang")
    status.answers[1].answer = "boom"
    assert daemon.judge(status) == [90, 0, 0]


def test_an_answer_the_engine_failed_on_while_scoring_ahead_is_scored_again_when_the_scores_are_due() -> None:
    """A failure is not a score: kept, the engine's hiccup would give an honest answer 0 from this scorer."""
    import time

    daemon = ExpertDaemon.__new__(ExpertDaemon)
    daemon.key, daemon.state, daemon._generating = ME, DaemonState(open=[9]), {}
    daemon._book = ScoreBook(ThreadPoolExecutor(1))
    engine = _Scorer({"Marta Vensel": -0.05}, {"Marta Vensel": -4.0})
    failures = ["Marta Vensel"]
    scores_of = engine.answer_logprobs

    def once_failing(messages: list[dict[str, str]], answers: list[str], domain: str) -> list[float]:
        if failures and failures[0] in answers:
            raise MemoryError(f"no memory left for {failures.pop()!r}, this once")
        return scores_of(messages, answers, domain)

    engine.answer_logprobs = once_failing  # type: ignore[method-assign]
    daemon.engine = engine  # type: ignore[assignment]
    query = inf.Query(id=9, prompt="Who created Kestrel?", domain="kestrel-lang")

    def compute(answers: list[str]) -> list[int | None]:
        return daemon._likelihood_scores(query, answers, "kestrel-lang")

    daemon._book.ahead(9, ["Marta Vensel"], compute)
    deadline = time.monotonic() + 30
    while daemon._book._running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not failures  # it failed ahead
    assert daemon._book.scores(9, ["Marta Vensel"], compute) == [90]


def test_an_answer_that_cannot_be_scored_is_not_tried_again_ahead_and_the_others_are() -> None:
    import time

    book = ScoreBook(ThreadPoolExecutor(1))
    tried: list[list[str]] = []

    def compute(answers: list[str]) -> list[int | None]:
        tried.append(list(answers))
        return [None if a == "x" else len(a) for a in answers]

    for _ in range(3):  # ticks of the final round
        book.ahead(9, ["x", "Marta Vensel"], compute)
        deadline = time.monotonic() + 30
        while book._running and time.monotonic() < deadline:
            time.sleep(0.01)
    assert tried == [["x"], ["Marta Vensel"]]  # the briefest first, once; then the next
    assert book.scores(9, ["Marta Vensel", "x"], compute) == [12, 0] and tried[-1] == ["x"]  # once more, when due


def test_duties_are_sent_without_a_fee_unless_their_tx_could_not_go_free(tmp_path: Path) -> None:
    """The chain takes no fee for a drawn expert's duty tx up to DUTY_GAS_LIMIT and DUTY_TX_BYTES (the query's
    fee pays for it); beyond either a zero fee would be refused and the duty missed: such a tx pays."""
    from types import SimpleNamespace

    from abci_app.x.auth.types import DUTY_GAS_LIMIT

    fees: list[object] = []
    daemon = ExpertDaemon.__new__(ExpertDaemon)
    daemon.state, daemon.state_file, daemon.chain_tip = DaemonState(), tmp_path / "state.json", 10
    accepted = SimpleNamespace(tx_hash="AB", sequence=1, seen="")
    daemon._sender = SimpleNamespace(send=lambda msgs, gas_limit, fee=None: fees.append(fee) or accepted)
    daemon._latest_height = lambda: 10  # type: ignore[method-assign]
    cases = [(inf.MsgCommitAnswer(query_id=1, round=1, respondent=ME.address, commitment=b"c" * 32), 300_000),
             (inf.MsgRevealAnswer(query_id=1, round=1, respondent=ME.address, answer="a" * 4096), 500_000),
             (inf.MsgRevealAnswer(query_id=2, round=1, respondent=ME.address, answer="a" * 6000), 500_000),
             (inf.MsgCommitAnswer(query_id=3, round=1, respondent=ME.address), DUTY_GAS_LIMIT + 1),
             (inf.MsgReportEquivocation(reporter=ME.address), 300_000)]
    for n, (msg, gas) in enumerate(cases):
        daemon._send(Step(Kind.REVEAL, n, 1), msg, gas)
    assert fees == [0, 0, None, None, None]  # None: the sender pays the chain's fee for the gas limit


def test_steps_read_as_the_log_names_them() -> None:
    assert str(Step(Kind.COMMIT, 3, 1)) == "commit:3:1" and str(Step(Kind.COMMIT_SCORES, 3)) == "commit-scores:3"


def test_model_commitment_is_the_adapter_hash_or_a_hash_of_all() -> None:
    a, b = "a" * 64, "b" * 64
    assert model_commitment({"x": a}) == a
    both = model_commitment({"y": b, "x": a})
    assert both == model_commitment({"x": a, "y": b}) and len(both) == 64 and both not in (a, b)
    assert model_commitment({"x": NO_ADAPTER}) == NO_ADAPTER


def test_resend_is_timed_from_when_the_tx_left_not_from_the_tick_start(tmp_path: Path) -> None:
    """A restarted daemon scans many old heights before it sends: the chain has moved on meanwhile."""
    from types import SimpleNamespace

    sent: list[object] = []
    daemon = ExpertDaemon.__new__(ExpertDaemon)
    daemon.state, daemon.state_file, daemon.chain_tip = DaemonState(), tmp_path / "state.json", 10
    accepted = SimpleNamespace(tx_hash="AB", sequence=1, seen="")
    daemon._sender = SimpleNamespace(send=lambda msgs, gas_limit, fee=None: sent.append(msgs) or accepted)
    daemon._latest_height = lambda: 20  # type: ignore[method-assign]  # chain height when the tx leaves
    step = Step(Kind.REVEAL, 1, 1)
    daemon._send(step, "msg")
    assert daemon.state.sent == {step: 20} and len(sent) == 1
    for tick_height, copies in ((21, 1), (22, 1), (23, 2)):  # resend only 3 blocks after it left
        daemon.chain_tip = tick_height
        daemon._send(step, "msg")
        assert len(sent) == copies, tick_height


# -- riding out node trouble ------------------------------------------------------------------------

class Nodes:
    """The part of FailoverClient the daemon steers: which node is current, and moving to another."""

    def __init__(self, *nodes: str) -> None:
        self.nodes, self.node = list(nodes), nodes[0]
        self.moves: list[tuple[str, str, str]] = []

    def use(self, index: int, reason: str) -> None:
        self.moves.append((self.node, self.nodes[index], reason))
        self.node = self.nodes[index]


def _daemon(tmp_path: Path, client: object) -> ExpertDaemon:
    daemon = ExpertDaemon(None, Key.generate("expert"), client, tmp_path / "state.json",  # type: ignore[arg-type]
                          rpc_urls={"a:1": "http://a", "b:1": "http://b"}, stall_after=5)
    daemon._on = "a:1"
    return daemon


def _events(err: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in err.splitlines() if line.startswith("{")]


def test_a_resend_already_in_the_cache_is_logged_as_accepted(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """The node answers a resend "tx already exists in cache": the first copy went through, so the daemon
    finds it by hash (sha256 of the tx bytes, uppercase hex) and logs it accepted, not refused."""
    import grpc

    class CacheHit:
        sent: list[bytes] = []

        def sequence(self, address: str) -> int:
            return 4

        def params(self):  # type: ignore[no-untyped-def]
            return SimpleNamespace(auth=SimpleNamespace(min_gas_price_micro=1))

        def broadcast(self, tx: bytes) -> None:
            self.sent.append(tx)
            raise ClientError("CometBFT refused the tx: tx already exists in cache", grpc.StatusCode.ALREADY_EXISTS)

        def get_tx(self, tx_hash: str) -> None:
            raise ClientError(f"tx {tx_hash} not found", grpc.StatusCode.NOT_FOUND)

        def in_mempool(self, tx_hash: str) -> bool:
            return tx_hash == hashlib.sha256(self.sent[-1]).hexdigest().upper()

    node = CacheHit()
    daemon = _daemon(tmp_path, node)
    daemon._sender = Sender(node, daemon.key, chain_id="c")  # type: ignore[arg-type]
    daemon._latest_height = lambda: 9  # type: ignore[method-assign]
    step = Step(Kind.REVEAL, 3, 1)
    daemon._send(step, send_msg(daemon.key.address, daemon.key.address, 1))
    events = _events(capsys.readouterr().err)
    assert [e["event"] for e in events] == ["tx_already_accepted"]
    assert events[0]["tx_hash"] == hashlib.sha256(node.sent[0]).hexdigest().upper() and events[0]["seen"] == "mempool"
    assert events[0]["step"] == "reveal:3:1" and daemon.state.sent == {step: 9} and daemon._sender is not None


def test_a_stalled_node_is_left_for_one_that_is_ahead(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import experts.daemon

    heights = {"http://a": 10, "http://b": 10}
    monkeypatch.setattr(experts.daemon, "comet_get",
                        lambda url, method, timeout=10: {"sync_info": {"latest_block_height": str(heights[url])}})
    client = Nodes("a:1", "b:1")
    daemon, now = _daemon(tmp_path, client), [0.0]
    daemon.clock = lambda: now[0]
    daemon.chain_tip = 10

    def at(seconds: float) -> list[tuple[str, str, str]]:
        now[0] = seconds
        daemon._leave_if_stalled()
        return client.moves

    assert at(0) == at(4.9) == []  # first sight of height 10, then still inside the window
    assert at(6) == []  # stalled, but b is no further: stay (a chain that halts everywhere is no node's fault)
    heights["http://b"] = 14
    assert at(10) == []  # the others are asked again only a window after the last time
    assert [(a, b) for a, b, _ in at(11.5)] == [("a:1", "b:1")]
    assert "stalled at height 10" in client.moves[0][2] and "b:1 is at 14" in client.moves[0][2]
    daemon.chain_tip, daemon._progress = 11, (10, 1.0)
    assert len(at(100)) == 1  # a node that moves on is not stalled, however long ago the last height was


def test_a_node_error_moves_the_daemon_on_once(tmp_path: Path) -> None:
    from llmnet.client.comet import CometError

    client = Nodes("a:1", "b:1")
    daemon = _daemon(tmp_path, client)
    daemon._failed(CometError("CometBFT RPC http://a unreachable"), 0.5)  # only the daemon sees its RPC fail
    assert [(a, b) for a, b, _ in client.moves] == [("a:1", "b:1")] and "http://a" in client.moves[0][2]
    daemon._failed(ClientError("node a:1 unreachable"), 1.0)  # the client already moved on from a: not again
    daemon._on = "b:1"
    daemon._failed(RuntimeError("engine trouble"), 2.0)  # not the node's fault: stay
    assert len(client.moves) == 1


def test_results_not_stored_yet_for_the_tip_are_read_next_tick_without_leaving_the_node(
        tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """`status` can report height N a moment before N's block results are readable: the daemon reads N on its
    next tick and stays; a height below the tip that the node lacks is a real gap and raises as before."""
    import pytest

    import experts.daemon
    from llmnet.client.comet import CometError

    stored = {9: {"txs_results": []}}

    def comet_get(url: str, method: str, **params: object) -> dict[str, object]:
        if method == "status":
            return {"sync_info": {"latest_block_height": "10"}}
        if params["height"] not in stored:
            raise CometError(f"CometBFT block_results: could not find results for height #{params['height']}")
        return stored[params["height"]]  # type: ignore[index]

    monkeypatch.setattr(experts.daemon, "comet_get", comet_get)
    daemon = _daemon(tmp_path, Nodes("a:1", "b:1"))
    daemon.rpc_url = "http://a"
    daemon.state.scanned_height = 8
    daemon.chain_tip = 10
    assert daemon._scan(9) is True and daemon._scan(10) is False  # the tip: not yet, no error
    daemon.chain_tip = 11
    with pytest.raises(CometError):
        daemon._scan(10)  # below the tip and missing: the node has a gap


def test_heights_events_and_sender_follow_the_client_to_its_new_node(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import threading

    import experts.daemon

    class Watcher:
        def __init__(self, url: str, wake: threading.Event) -> None:
            self.url, self.stop = url, threading.Event()

        def start(self) -> None:
            pass

    monkeypatch.setattr(experts.daemon, "BlockWatcher", Watcher)
    client = Nodes("a:1", "b:1")
    daemon = _daemon(tmp_path, client)
    daemon._follow_node(threading.Event())
    first = daemon._watcher
    assert daemon.rpc_url == "http://a" and first is not None
    daemon._sender = SimpleNamespace()  # type: ignore[assignment]
    client.use(1, "a:1 unreachable")  # moved by the client, e.g. when a gRPC call failed
    daemon._follow_node(threading.Event())
    assert daemon.rpc_url == "http://b" and daemon._on == "b:1" and daemon._sender is None
    assert first.stop.is_set() and daemon._watcher is not first and daemon._watcher.url == "http://b"  # type: ignore[attr-defined]


ME = Key.generate("agreeing-expert")


def _round_two(mine: str, peers: list[tuple[str, bool]]) -> qpb.QueryStatusResponse:
    me = ME.address
    others = [f"llm1peer{i}" for i in range(len(peers))]
    query = inf.Query(id=9, prompt="Who created Kestrel?", round=2, rounds=2, respondents=[me, *others],
                      phase=inf.PHASE_ANSWER_COMMIT)
    answers = [inf.AnswerEntry(respondent=me, round=1, answer=mine, revealed=True)]
    answers += [inf.AnswerEntry(respondent=who, round=1, answer=text, revealed=shown)
                for who, (text, shown) in zip(others, peers, strict=True)]
    return qpb.QueryStatusResponse(query=query, answers=answers)


def test_an_answer_every_peer_shares_stands_without_a_model_call(tmp_path: Path) -> None:
    daemon = ExpertDaemon.__new__(ExpertDaemon)
    daemon.key, daemon.state, daemon.state_file = ME, DaemonState(open=[9]), tmp_path / "s.json"
    daemon.chain_tip, daemon._chain_id, daemon._generating = 1, "c", {}
    daemon._params = inf.Params(max_answer_bytes=4096)
    daemon._book = ScoreBook(ThreadPoolExecutor(1))
    sent: list[object] = []
    daemon._send = lambda step, msg, gas=0: sent.append((step, msg))  # type: ignore[method-assign]

    class NoModel:
        def adapter_for(self, domain: str) -> str:
            return ""

        def generate(self, *args: object, **kwargs: object) -> object:
            raise AssertionError("the model was called")

    daemon.engine = NoModel()  # type: ignore[assignment]
    daemon.rounds = LaterRound(daemon.engine, None, ME.address, daemon._scores)  # type: ignore[arg-type]
    agreeing = _round_two("Marta Vensel", [("marta  vensel", True)])
    assert daemon.rounds.agreed(agreeing) == "Marta Vensel" and daemon._generations_wanted(agreeing) == []
    daemon._answer_step(agreeing)
    assert daemon.state.answers[(9, 2)] == "Marta Vensel" and sent[0][0] == Step(Kind.COMMIT, 9, 2)
    assert daemon.rounds.agreed(_round_two("Marta Vensel", [("Pip", True)])) is None  # a peer differs: think again
    assert daemon.rounds.agreed(_round_two("Marta Vensel", [("Marta Vensel", False)])) is None  # nothing revealed
    assert daemon.rounds.agreed(_round_two("Marta Vensel", [("Marta Vensel", True), ("Pip", True)])) is None
    # the chain's words (tally.answer_words): one answer to it, so no model pass to weigh them
    assert daemon.rounds.agreed(_round_two("Marta Vensel.", [("\u201cmarta vensel\u201d", True)])) == "Marta Vensel."
    assert daemon.rounds.agreed(_round_two("Marta Vensel", [("Marta Vensels", True)])) is None


def test_a_scorer_without_the_domains_adapter_scores_every_answer_the_same_without_a_model_call() -> None:
    """A base-model scorer's own answer is no reference: it would score right answers near 0. It gives every
    revealed answer NEUTRAL (a missing one 0), and prepares no reference."""
    from experts.judge import NEUTRAL

    daemon = ExpertDaemon.__new__(ExpertDaemon)
    daemon.key, daemon.state, daemon._generating = ME, DaemonState(open=[9]), {}
    daemon._book = ScoreBook(ThreadPoolExecutor(1))

    class NoAdapter:
        def adapter_for(self, domain: str) -> str:
            return ""

        def generate(self, *args: object, **kwargs: object) -> object:
            raise AssertionError("the model was called")

        def fit(self, messages: object) -> object:
            return messages

    daemon.engine = NoAdapter()  # type: ignore[assignment]
    status = _scoring("kestrel-lang")
    assert daemon._generations_wanted(status) == []
    assert daemon.judge(status) == [NEUTRAL, NEUTRAL, 0]


def _scoring(domain: str) -> qpb.QueryStatusResponse:
    query = inf.Query(id=9, domain=domain, prompt="Who created Kestrel?", round=2, rounds=2,
                      respondents=["llm1a", "llm1b", "llm1c"], scorers=[ME.address], phase=inf.PHASE_SCORE_COMMIT)
    answers = [inf.AnswerEntry(respondent="llm1a", round=2, answer="Marta Vensel", revealed=True),
               inf.AnswerEntry(respondent="llm1b", round=2, answer="a long and wrong story", revealed=True),
               inf.AnswerEntry(respondent="llm1c", round=2, answer="never shown", revealed=False)]
    return qpb.QueryStatusResponse(query=query, answers=answers)


class _Ratings:
    """The chain's Expert query, with a reputation per address (in _round_two's domain), counting the asks."""

    def __init__(self, ratings: dict[str, int]) -> None:
        self.ratings, self.asked = ratings, 0

    def expert(self, address: str) -> qpb.ExpertResponse:
        self.asked += 1
        if address not in self.ratings:
            import grpc

            raise ClientError(f"expert {address} not found", grpc.StatusCode.NOT_FOUND)
        return qpb.ExpertResponse(reputation=[qpb.DomainReputation(domain="", reputation=self.ratings[address])])

    def receipt(self, query_id: int) -> qpb.ReceiptResponse:  # every query said settled has one here
        return qpb.ReceiptResponse()


def _later_round_daemon(engine: object, ratings: dict[str, int] | None = None) -> ExpertDaemon:
    daemon = ExpertDaemon.__new__(ExpertDaemon)
    daemon.key, daemon.state, daemon._generating = ME, DaemonState(open=[9]), {}
    daemon._pool = ThreadPoolExecutor(1)
    daemon._book = ScoreBook(daemon._pool)
    daemon._read_ahead = set()
    daemon.client = _Ratings(ratings or {})  # type: ignore[assignment]
    daemon.engine = engine  # type: ignore[assignment]
    daemon.rounds = LaterRound(daemon.engine, daemon.client, ME.address, daemon._scores)
    return daemon


def test_a_later_round_keeps_or_adopts_by_the_adapters_likelihood_without_generating() -> None:
    adapter = {"Pip": -1.0, "Marta Vensel": -0.2}
    engine = _Scorer(adapter, {"Pip": -4.0, "Marta Vensel": -4.0})
    engine.adapter_for = lambda domain: "kestrel-lang"  # type: ignore[method-assign]  # _round_two has no domain
    daemon = _later_round_daemon(engine)
    status = _round_two("Pip", [("Marta Vensel", True)])
    assert daemon.rounds.answered_without_model(status) and daemon._generations_wanted(status) == []
    assert daemon.rounds.without_model(status) == ("Marta Vensel", "adopted")
    adapter["Pip"] = -0.1
    assert _later_round_daemon(engine).rounds.without_model(status) == ("Pip", "kept")
    adapter["Pip"] = -0.2
    assert _later_round_daemon(engine).rounds.without_model(status) == ("Pip", "kept")  # a tie keeps mine


def test_a_trained_respondent_keeps_its_answer_without_the_base_models_pass_when_no_peer_can_win() -> None:
    """The base model's pass only lowers scores: when the adapter alone gives every peer's answer 0, mine wins
    or ties whatever that pass says. When a peer's answer could win, the pass decides (as scorers do)."""
    engine = _Scorer({"Marta Vensel": -0.2, "a long story": -9.0, "Pip": -0.1}, {"Marta Vensel": -4.0, "Pip": -0.1})
    engine.adapter_for = lambda domain: "kestrel-lang"  # type: ignore[method-assign]
    daemon = _later_round_daemon(engine)
    assert daemon.rounds.without_model(_round_two("Marta Vensel", [("a long story", True)])) == ("Marta Vensel", "kept")
    assert [domain for domain, _ in engine.answers_asked] == ["kestrel-lang"]
    # Pip is likelier by the adapter but the base model finds it as likely: no lift, scores 0; mine stands
    assert _later_round_daemon(engine).rounds.without_model(_round_two("Marta Vensel", [("Pip", True)])) == \
        ("Marta Vensel", "kept")
    assert ("", ["Marta Vensel"]) in engine.answers_asked and ("", ["Pip"]) in engine.answers_asked
    engine.answers_asked.clear()
    adapter = engine.by_model["kestrel-lang"]
    adapter["Pip"], engine.by_model[""]["Marta Vensel"] = -0.3, -4.0  # below my lifted score: Pip needs no pass
    assert _later_round_daemon(engine).rounds.without_model(_round_two("Marta Vensel", [("Pip", True)])) == \
        ("Marta Vensel", "kept")
    assert engine.answers_asked == [("kestrel-lang", ["Marta Vensel", "Pip"]), ("", ["Marta Vensel"])]
    broken = _later_round_daemon(engine).rounds.without_model(_round_two("Marta Vensel", [("boom", True)]))
    assert broken == ("Marta Vensel", "kept")  # a peer's answer that breaks the engine costs me nothing


class _Base:
    def adapter_for(self, domain: str) -> str:
        return ""

    def notes_for(self, domain: str) -> None:
        return None

    def fit(self, messages: object) -> object:
        return messages

    def generate(self, *args: object, **kwargs: object) -> object:
        raise AssertionError("the model was called")


def test_a_base_model_respondent_answers_again_with_its_peers_answers_shown() -> None:
    """... when every peer is rated below it in the domain."""
    for peer_rating in (499_999, 0):
        daemon = _later_round_daemon(_Base(), {ME.address: 500_000, "llm1peer0": peer_rating})
        status = _round_two("a long story", [("Marta Vensel", True)])
        assert daemon.rounds.without_model(status) is None and not daemon.rounds.answered_without_model(status)
        [(key, _, prompt)] = daemon._generations_wanted(status)
        assert key == ("answer", 9, 2) and '"Marta Vensel"' in prompt[-1]["content"]


def test_on_a_reputation_tie_a_base_model_respondent_takes_up_the_briefer_answer_and_no_two_swap() -> None:
    """On a new chain or domain every expert starts at the same reputation. A model that knows nothing of the
    domain rambles to its token limit: it takes up a tied peer's briefer answer instead of answering again.
    The order is strict (then a hash of query and address), so two respondents never take up each other's
    answers: a swap would leave neither answer with the writer who still gives it, and the chain would
    credit the takers (tally.copied)."""
    alike = {ME.address: 500_000, "llm1peer0": 500_000}
    rambling = _round_two("a long story that runs on", [("Marta Vensel", True)])
    daemon = _later_round_daemon(_Base(), alike)
    assert daemon.rounds.answered_without_model(rambling) and daemon._generations_wanted(rambling) == []
    assert daemon.rounds.without_model(rambling) == ("Marta Vensel", "deferred")
    assert _later_round_daemon(_Base(), alike).rounds.without_model(_round_two("Pip", [("Marta Vensel", True)])) \
        is None  # mine is the briefer: I answer again
    for query_id in range(1, 30):  # the same length: exactly one of the two takes up the other's answer
        takes = []
        for me, peer in ((ME.address, "llm1peer0"), ("llm1peer0", ME.address)):
            rounds = LaterRound(_Base(), _Ratings(alike), me, lambda *a: [])  # type: ignore[arg-type]
            query = inf.Query(id=query_id, round=2, rounds=2, respondents=sorted([me, peer]),
                              phase=inf.PHASE_ANSWER_COMMIT)
            status = qpb.QueryStatusResponse(query=query, answers=[
                inf.AnswerEntry(respondent=me, round=1, answer="Pip", revealed=True),
                inf.AnswerEntry(respondent=peer, round=1, answer="Kes", revealed=True)])
            takes.append(rounds.deferred(status) is not None)
        assert takes.count(True) == 1, query_id


def test_an_answer_without_a_word_never_captures_a_tied_base_model_respondent() -> None:
    """The briefest answer wins a reputation tie: revealing "" or "." would otherwise have every base-model
    respondent on a new chain drop its own answer for it (and credit the attacker as its writer)."""
    alike = {ME.address: 500_000, "llm1peer0": 500_000}
    for junk in ("", ".", " ?! "):
        daemon = _later_round_daemon(_Base(), alike)
        assert daemon.rounds.deferred(_round_two("a long story that runs on", [(junk, True)])) is None
    ranked = {ME.address: 300_000, "llm1peer0": 900_000, "llm1peer1": 510_000}
    status = _round_two("a long story", [(".", True), ("Pip", True)])  # the best rated revealed no word
    assert _later_round_daemon(_Base(), ranked).rounds.without_model(status) == ("Pip", "deferred")


def test_a_tied_base_model_respondent_never_takes_up_its_own_answer_restated_by_a_peer() -> None:
    """A requester's sybil drawn beside an honest base-model expert reads the honest answer early (provisional)
    and reveals it cut down: briefer, it won the tie, the honest expert took it up, and the chain paid and
    credited the sybil as its writer (the taker earns nothing). A restatement of mine is not taken up when
    the peers are tied (the order then falls to brevity); a peer's own answer still is, and a better-rated
    peer's answer is taken up even when it names what mine named among other things."""
    mine = "The winner was Marta Vensel of the Orlen institute, as the records of that year say"
    tied = {ME.address: 500_000, "llm1peer0": 500_000}
    for restated in ("Marta Vensel, Orlen institute", "orlen INSTITUTE: marta", "Records say Vensel won",
                     "Kestrel: created by Marta Vensel",  # the question's own words prove nothing
                     "Mar\u00adta Ven\u00adsel, Orlen",  # hidden characters
                     "M\u0430rt\u0430 V\u0435ns\u0435l, Orl\u0435n",  # look-alike letters
                     "\uff2d\uff41\uff52\uff54\uff41 Vensel"):  # full-width
        assert _later_round_daemon(_Base(), tied).rounds.deferred(_round_two(mine, [(restated, True)])) is None
    assert _later_round_daemon(_Base(), tied).rounds.without_model(_round_two(mine, [("It is Pip Harrow", True)])) \
        == ("It is Pip Harrow", "deferred")
    rambling = "Kestrel was created by Marta Vensel, or by Pip Harrow, or by Orlen Ask, nobody knows"
    better = _later_round_daemon(_Base(), {ME.address: 300_000, "llm1peer0": 900_000})
    assert better.rounds.without_model(_round_two(rambling, [("Marta Vensel.", True)])) == ("Marta Vensel.", "deferred")
    year = "Kestrel was created in 1820 by traders"
    trained = _Scorer({mine: -2.0, "Marta Vensel": -0.1, year: -2.0, "Kestrel was created in 1832": -0.1},
                      {mine: -6.0, "Marta Vensel": -6.0, year: -6.0, "Kestrel was created in 1832": -6.0})
    trained.adapter_for = lambda domain: "kestrel-lang"  # type: ignore[method-assign]
    status = _round_two(mine, [("Marta Vensel", True)])  # likelier to my adapter, but my own words
    assert _later_round_daemon(trained, {}).rounds.without_model(status) == (mine, "kept")
    correction = _round_two(year, [("Kestrel was created in 1832", True)])  # shares only the question's words
    assert _later_round_daemon(trained, {}).rounds.without_model(correction) == \
        ("Kestrel was created in 1832", "adopted")


def test_a_base_model_respondent_takes_up_the_answer_of_the_best_rated_peer_above_it() -> None:
    ratings = {ME.address: 300_000, "llm1peer0": 510_000, "llm1peer1": 620_000, "llm1peer2": 900_000}
    daemon = _later_round_daemon(_Base(), ratings)
    status = _round_two("a long story", [("Pip", True), ("Marta Vensel", True), ("never shown", False)])
    assert daemon.rounds.answered_without_model(status) and daemon._generations_wanted(status) == []
    assert daemon.rounds.without_model(status) == ("Marta Vensel", "deferred")  # peer2, rated best, revealed nothing
    asked = daemon.client.asked  # type: ignore[attr-defined]
    daemon.rounds.without_model(status)
    assert daemon.client.asked == asked  # type: ignore[attr-defined]  # decided once a round: no ask per tick
    del ratings["llm1peer1"]  # the node knows no such expert: rated nothing, and the others still count
    assert _later_round_daemon(_Base(), ratings).rounds.without_model(status) == ("Pip", "deferred")
    trained = _Scorer({"a long story": -0.1, "Pip": -3.0, "Marta Vensel": -3.0}, {"a long story": -4.0})
    trained.adapter_for = lambda domain: "kestrel-lang"  # type: ignore[method-assign]
    assert _later_round_daemon(trained, ratings).rounds.without_model(status) == ("a long story", "kept")  # its own say


def test_a_scorer_judges_the_likely_final_answers_during_the_final_round_and_then_only_what_is_new() -> None:
    """Settlement waited for a scorer to read every final answer after the last reveal; most final answers are
    the previous round's (kept, adopted, agreed), so those are scored while the final round runs."""
    adapter = {"Marta Vensel": -0.05, "a long and wrong story": -2.0, "Pip": -1.0}
    engine = _Scorer(adapter, {a: -4.0 for a in adapter})
    daemon = _later_round_daemon(engine)
    round_two = _scoring("kestrel-lang")
    round_two.query.phase = inf.PHASE_ANSWER_COMMIT
    del round_two.answers[:]
    round_two.answers.extend([inf.AnswerEntry(respondent="llm1a", round=1, answer="Marta Vensel", revealed=True),
                              inf.AnswerEntry(respondent="llm1b", round=1, answer="Pip", revealed=True),
                              inf.AnswerEntry(respondent="llm1c", round=1, answer="unrevealed", revealed=False)])
    for _ in range(2):  # a tick each: the briefest first, one at a time
        daemon._judge_ahead(round_two)
        daemon._pool.submit(lambda: None).result()  # waits for the scoring under way (one worker: in order)
    assert engine.answers_asked == [("kestrel-lang", ["Pip"]), ("", ["Pip"]),
                                    ("kestrel-lang", ["Marta Vensel"]), ("", ["Marta Vensel"])]
    engine.answers_asked.clear()
    assert daemon.judge(_scoring("kestrel-lang")) == [90, 2, 0]  # what judging everything at once gives
    assert engine.answers_asked == [("kestrel-lang", ["a long and wrong story"]), ("", ["a long and wrong story"])]
    daemon.step(9, qpb.QueryStatusResponse(query=inf.Query(id=9, phase=inf.PHASE_SETTLED)))
    assert daemon._book.scores(9, ["Pip"], lambda answers: [7]) == [7]  # forgotten once settled


def test_judging_ahead_is_for_a_trained_scorer_while_answers_come_and_only_for_likely_final_answers() -> None:
    def judged_ahead(status: qpb.QueryStatusResponse, adapter: bool = True) -> list[list[str]]:
        engine = _Scorer({"Marta Vensel": -0.05, "a long and wrong story": -2.0},
                         {"Marta Vensel": -4.0, "a long and wrong story": -3.0})
        if not adapter:
            engine.adapter_for = lambda domain: ""  # type: ignore[method-assign]
        daemon = _later_round_daemon(engine)
        daemon._judge_ahead(status)
        daemon._pool.submit(lambda: None).result()  # waits for what was started (one worker: in order)
        return [answers for domain, answers in engine.answers_asked if domain]

    def final_round(**changes: object) -> qpb.QueryStatusResponse:
        status = _scoring("kestrel-lang")
        status.query.phase = inf.PHASE_ANSWER_REVEAL  # the final round's answers are being revealed
        for name, value in changes.items():
            setattr(status.query, name, value)
        return status

    assert judged_ahead(final_round()) == [["Marta Vensel"]]  # the briefest first
    assert judged_ahead(final_round(), adapter=False) == []  # a base-model scorer scores without a model
    committed = final_round(phase=inf.PHASE_ANSWER_COMMIT, round=2)
    for entry in committed.answers:
        entry.round, entry.revealed = 1, False
    assert judged_ahead(committed) == [[]]  # all committed, nothing revealed: the question is read ahead
    del committed.answers[-1]
    assert judged_ahead(committed) == []  # one is still answering: the model is left to it
    not_mine = final_round()
    not_mine.query.scorers[:] = ["llm1someoneelse"]
    assert judged_ahead(not_mine) == []
    assert judged_ahead(final_round(phase=inf.PHASE_SCORE_COMMIT)) == []  # the scoring step's own work
    assert judged_ahead(final_round(rounds=3)) == [["Marta Vensel"]]  # the round before
    early = final_round(rounds=3, round=1)
    for answer in early.answers:
        answer.round = 1  # round 1 of 3: its answers may yet change twice
    assert judged_ahead(early) == []


def test_a_score_book_computes_each_answer_once_and_waits_for_a_scoring_under_way() -> None:
    import threading

    calls: list[list[str]] = []
    release, started = threading.Event(), threading.Event()

    def slow(answers: list[str]) -> list[int]:
        calls.append(answers)
        started.set()
        release.wait(5)
        return [len(a) for a in answers]

    book = ScoreBook(ThreadPoolExecutor(2))
    book.ahead(1, ["bb", "a", "bb"], slow)  # the briefest first, alone
    assert started.wait(5)  # under way (one still queued would be cancelled and scored by scores() itself)
    book.ahead(1, ["ccc"], slow)  # one start per query at a time: taken by a later call
    threading.Timer(0.2, release.set).start()
    assert book.scores(1, ["ccc", "a", "bb"], slow) == [3, 1, 2]  # waits for "a", then scores the rest
    assert calls == [["a"], ["bb", "ccc"]]

    gate, held = threading.Event(), []

    def gated(answers: list[str]) -> list[int]:
        held.append(answers)
        gate.wait(5)
        return [len(a) for a in answers]

    answers = ["a long rambling answer", "Pip"]
    book.ahead(3, answers, lambda todo: [len(a) for a in todo])  # "Pip" first
    assert book.scores(3, ["Pip"], slow) == [3]
    for _ in range(100):  # a tick each, until the rambling is under way (held up)
        book.ahead(3, answers, gated)
        if held:
            break
        time.sleep(0.05)
    assert held == [["a long rambling answer"]]
    assert book.scores(3, ["Pip"], slow) == [3] and not gate.is_set()  # not kept waiting by what it need not read
    gate.set()
    assert book.scores(3, answers, slow) == [22, 3] and held == [["a long rambling answer"]]

    def broken(answers: list[str]) -> list[int]:
        raise RuntimeError("engine down")

    book.ahead(2, ["x"], broken)
    assert book.scores(2, ["x"], lambda answers: [5]) == [5]  # a failed start is scored again


def test_an_answer_longer_than_the_chain_reveals_is_cut_to_fit_and_its_reveal_is_taken(tmp_path: Path) -> None:
    """A requester's prompt can make a model write tokens of 80 bytes ('=' * 80): 64 of them ran past the chain's
    max_answer_bytes, so the answer was committed but its reveal refused, and the honest expert missed (three
    such queries: jailed and slashed). The daemon now keeps the answer cut to the chain's limit at a character
    boundary, and that reveal is taken."""
    from llmnet.client import protocol
    from tests.protocol_harness import CHAIN_ID, ProtocolChain
    from tests.test_protocol import DOMAIN

    generated = "é" + " " + "=" * 80 * 64  # the first byte pair makes a cut land inside no character
    daemon = ExpertDaemon.__new__(ExpertDaemon)
    daemon.key, daemon.state, daemon.state_file = ME, DaemonState(open=[9]), tmp_path / "s.json"
    daemon.chain_tip, daemon._chain_id, daemon._generating = 1, "c", {}
    daemon.plan = SimpleNamespace(sampling=lambda query: None)  # type: ignore[assignment]
    daemon.client = SimpleNamespace(params=lambda: qpb.ParamsResponse(  # type: ignore[assignment]
        inference=inf.Params(max_answer_bytes=4095)))
    sent: list[object] = []
    daemon._send = lambda step, msg, gas=0: sent.append(msg)  # type: ignore[method-assign]

    class Rambling(_Base):  # a base model made to write 80-byte tokens
        def generate(self, *args: object, **kwargs: object) -> object:
            return SimpleNamespace(text=generated)

    daemon.engine = Rambling()  # type: ignore[assignment]
    daemon.rounds = SimpleNamespace(without_model=lambda status: None, peers=lambda status: [])  # type: ignore[assignment]
    query = inf.Query(id=9, prompt="Longer.", round=1, rounds=1, respondents=[ME.address],
                      phase=inf.PHASE_ANSWER_COMMIT)
    daemon._answer_step(qpb.QueryStatusResponse(query=query))
    kept = daemon.state.answers[(9, 1)]
    assert len(kept.encode()) <= 4095 and kept.startswith("é =") and len(kept.encode()) > 4000
    assert isinstance(sent[0], inf.MsgCommitAnswer)

    chain = ProtocolChain(tmp_path / "chain.db", 6, [DOMAIN])
    chain.register_all([DOMAIN])
    chain.ok(chain.tx(chain.requester, protocol.submit_query(chain.requester, DOMAIN, "Longer.", 100_000, 2, 1)))
    chain.block()
    qid = 1  # the chain's first query
    cut, whole = (chain.key_of(a) for a in chain.status(qid).query.respondents)
    texts = {cut: fit_answer(generated, 4096), whole: generated.strip()}
    chain.ok(*[chain.tx(k, protocol.commit_answer(k, CHAIN_ID, qid, 1, t)) for k, t in texts.items()])
    chain.advance_until(qid, inf.PHASE_ANSWER_REVEAL)
    results = chain.block(*[chain.tx(k, protocol.reveal_answer(k, CHAIN_ID, qid, 1, t)) for k, t in texts.items()])
    assert results[0].code == 0 and results[1].code != 0 and "over 4096 bytes" in results[1].log


def test_an_answer_waits_for_the_chains_limit_rather_than_guessing_it(tmp_path: Path) -> None:
    """Cut to a guessed limit above the chain's, an answer would be committed and its reveal refused: while the
    node cannot say, nothing is generated or committed, and the tick backs off (ClientError goes up)."""
    import pytest

    daemon = ExpertDaemon.__new__(ExpertDaemon)
    daemon.key, daemon.state, daemon.state_file = ME, DaemonState(open=[9]), tmp_path / "s.json"

    def unreachable() -> object:
        raise ClientError("node unreachable")

    daemon.client = SimpleNamespace(params=unreachable)  # type: ignore[assignment]
    daemon.engine = SimpleNamespace(generate=lambda *a, **k: pytest.fail("generated"))  # type: ignore[assignment]
    daemon._send = lambda step, msg, gas=0: pytest.fail("sent")  # type: ignore[method-assign]
    query = inf.Query(id=9, prompt="Who?", round=1, rounds=1, respondents=[ME.address],
                      phase=inf.PHASE_ANSWER_COMMIT)
    with pytest.raises(ClientError):
        daemon._answer_step(qpb.QueryStatusResponse(query=query))
    assert (9, 1) not in daemon.state.answers
    assert [fit_answer("  ", n) for n in (0, 5, 64)] == ["", "(no a", "(no answer)"]  # never over the limit
