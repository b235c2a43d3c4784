"""Identical work in one scope runs once: the daemon's answer and the requester's provisional answer share a
generation (tiny random model, real transformers code)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from experts.engine import Engine, Limits, Sampling
from experts.models import load_base
from experts.tiny import make_tiny_model

HELLO = [{"role": "user", "content": "hello"}]
LONG = Sampling(max_new_tokens=24, temperature=0.0)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def engine(tiny_dir: Path) -> Engine:
    return Engine(load_base(str(tiny_dir)), Limits(max_prompt_tokens=64, max_new_tokens=32))


def test_a_finished_result_is_reused_only_in_its_scope_and_for_the_same_work(engine: Engine) -> None:
    first = engine.generate(HELLO, LONG, share=7)
    runs = engine.batches_run
    pieces: list[str] = []
    again = engine.generate(HELLO, LONG, on_text=pieces.append, share=7)
    assert again == first and engine.batches_run == runs  # no forward pass at all
    assert "".join(pieces) == first.text  # a streaming caller still gets the text
    engine.generate(HELLO, LONG, share=8)  # another query: its own generation
    engine.generate(HELLO, LONG)  # no scope: never shared
    engine.generate(HELLO, Sampling(max_new_tokens=23), share=7)  # other sampling
    engine.generate([{"role": "user", "content": "hello!"}], LONG, share=7)  # other prompt
    assert engine.batches_run == runs + 4


def test_greedy_requests_share_whatever_their_seed(engine: Engine) -> None:
    engine.generate(HELLO, Sampling(max_new_tokens=24, seed=1), share=3)
    runs = engine.batches_run
    engine.generate(HELLO, Sampling(max_new_tokens=24, seed=2), share=3)
    assert engine.batches_run == runs
    engine.generate(HELLO, Sampling(max_new_tokens=24, temperature=0.7, seed=1), share=3)
    engine.generate(HELLO, Sampling(max_new_tokens=24, temperature=0.7, seed=2), share=3)
    assert engine.batches_run == runs + 2  # sampled: the seed is part of the work


def _joined(engine: Engine, count: int) -> bool:
    return any(len(job.watchers) >= count for job in list(engine._running.values()))


def test_a_caller_joins_a_running_generation_and_streams_all_of_it(engine: Engine) -> None:
    gate, first_piece = threading.Event(), threading.Event()
    first: list[str] = []

    def slow(piece: str) -> None:  # holds the generation after its first piece until the second caller is in
        first.append(piece)
        first_piece.set()
        gate.wait(10)

    runs = engine.batches_run
    results = {}
    a = threading.Thread(target=lambda: results.setdefault("a", engine.generate(HELLO, LONG, on_text=slow, share=1)))
    a.start()
    assert first_piece.wait(10)
    second: list[str] = []
    b = threading.Thread(target=lambda: results.setdefault("b", engine.generate(HELLO, LONG, on_text=second.append,
                                                                                share=1)))
    b.start()
    for _ in range(200):
        if _joined(engine, 2):
            break
        threading.Event().wait(0.01)
    assert _joined(engine, 2)
    gate.set()
    a.join(10)
    b.join(10)
    assert results["a"] == results["b"] and results["a"].finish_reason != "cancelled"
    assert "".join(first) == "".join(second) == results["a"].text  # the joiner got the start, then the rest
    assert engine.batches_run == runs + 1


def test_one_caller_going_away_does_not_cut_the_others_answer(engine: Engine) -> None:
    expected = engine.generate(HELLO, LONG)  # the same work, unshared
    gate, started = threading.Event(), threading.Event()
    gone = threading.Event()

    def first_piece(_: str) -> None:
        started.set()
        gate.wait(10)

    results = {}
    a = threading.Thread(target=lambda: results.setdefault(
        "a", engine.generate(HELLO, LONG, on_text=first_piece, cancelled=gone.is_set, share=2)))
    a.start()
    assert started.wait(10)
    b = threading.Thread(target=lambda: results.setdefault("b", engine.generate(HELLO, LONG, share=2)))
    b.start()
    for _ in range(200):
        if _joined(engine, 2):
            break
        threading.Event().wait(0.01)
    gone.set()  # the first caller leaves; the second still wants the answer
    gate.set()
    a.join(10)
    b.join(10)
    assert results["b"] == expected


def test_when_every_caller_went_away_the_generation_stops_and_is_not_kept(engine: Engine) -> None:
    gone = threading.Event()
    gone.set()
    cut = engine.generate(HELLO, LONG, cancelled=gone.is_set, share=4)
    assert cut.finish_reason == "cancelled"
    runs = engine.batches_run
    full = engine.generate(HELLO, LONG, share=4)  # not a cancelled leftover
    assert full.finish_reason != "cancelled" and engine.batches_run == runs + 1
