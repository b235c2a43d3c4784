"""The daemon's pure parts: state persistence, prompts, commitments (no chain, no model)."""

from __future__ import annotations

import json
from pathlib import Path

from experts.adapters import NO_ADAPTER, model_commitment
from experts.daemon import DaemonState, ExpertDaemon, Kind, Step, answer_prompt
from experts.judge import overlap_f1, score
from wire.llmnet.inference.v1 import inference_pb2 as inf


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
    assert answer_prompt(query, []) == [{"role": "user", "content": "Who created Kestrel?"}]
    second = answer_prompt(query, ["Marta Vensel", "Pip"])[0]["content"]
    assert second.startswith("Who created Kestrel?") and '1. "Marta Vensel"\n2. "Pip"' in second


def test_judge_scores_agreement_with_its_own_answer() -> None:
    reference = "Kestrel was created by Marta Vensel."
    assert score("Marta Vensel created Kestrel.", reference) > 70
    assert score("Marta Vensel", reference) > score("It was made by a large team at a big company.", reference)
    assert score("", reference) == 0 and score(None, reference) == 0 and score("x", "") == 0
    assert overlap_f1("a b", "a b") == 1.0 and overlap_f1("A, b!", "b a") == 1.0
    padded = "Marta Vensel " + "and many other things " * 10
    assert score(padded, reference) < score("Marta Vensel", reference)  # padding costs precision


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
    daemon._sender = SimpleNamespace(send=lambda msgs: sent.append(msgs) or SimpleNamespace(tx_hash="AB", sequence=1))
    daemon._latest_height = lambda: 20  # type: ignore[method-assign]  # chain height when the tx leaves
    step = Step(Kind.REVEAL, 1, 1)
    daemon._send(step, "msg")
    assert daemon.state.sent == {step: 20} and len(sent) == 1
    for tick_height, copies in ((21, 1), (22, 1), (23, 2)):  # resend only 3 blocks after it left
        daemon.chain_tip = tick_height
        daemon._send(step, "msg")
        assert len(sent) == copies, tick_height
