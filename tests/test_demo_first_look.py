"""make demo's order of work when adapters must be trained (the builds and networks stand in: both are real
in `make demo`, which is too slow for the suite)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tools import demo


def domains(root: Path, *names: str) -> Path:
    for name in names:
        (root / name).mkdir(parents=True)
        (root / name / "qa_train.jsonl").write_text(json.dumps({"question": "q?", "answer": "a"}) + "\n")
    return root


def record(monkeypatch: pytest.MonkeyPatch, stale: list[str], first_look_fails: bool = False) -> list[object]:
    done: list[object] = []

    def build(command: list[str], *extra: str) -> str:
        done.append(("build", *extra))
        return "".join(f"{d}\n" for d in stale) if extra == ("--stale",) else ""

    def network(home: Path, adapters: Path, ready: list[str], questions: int, started: float) -> None:
        done.append(("first look", *ready))
        if first_look_fails:
            raise SystemExit("llmnet ask failed: a port is busy")

    monkeypatch.setattr(demo, "_build", build)
    monkeypatch.setattr(demo, "run_network", network)
    return done


def test_a_fresh_clone_trains_one_domain_then_looks_then_trains_the_rest(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    done = record(monkeypatch, stale=["alpha", "beta", "gamma"])
    demo.build_adapters(domains(tmp_path / "d", "alpha", "beta", "gamma"), tmp_path / "a", tmp_path / "h", 3, 0.0)
    assert done == [("build", "--stale"), ("build", "--only=alpha"), ("first look", "alpha"), ("build",)]


def test_adapters_already_there_are_looked_at_without_training_first(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    done = record(monkeypatch, stale=["gamma"])
    demo.build_adapters(domains(tmp_path / "d", "alpha", "beta", "gamma"), tmp_path / "a", tmp_path / "h", 3, 0.0)
    assert done == [("build", "--stale"), ("first look", "alpha", "beta"), ("build",)]


def test_with_every_adapter_built_there_is_no_first_look(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    done = record(monkeypatch, stale=[])
    demo.build_adapters(domains(tmp_path / "d", "alpha"), tmp_path / "a", tmp_path / "h", 3, 0.0)
    assert done == [("build", "--stale"), ("build",)]


def test_a_first_look_that_fails_does_not_cost_the_demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    done = record(monkeypatch, stale=["alpha", "beta"], first_look_fails=True)
    demo.build_adapters(domains(tmp_path / "d", "alpha", "beta"), tmp_path / "a", tmp_path / "h", 3, 0.0)
    assert done[-1] == ("build",) and "the first look failed (llmnet ask failed" in capsys.readouterr().out


def test_a_failed_build_ends_the_demo_with_one_line(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="building the adapters failed"):
        demo._build(["false"])
