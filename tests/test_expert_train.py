"""Training and evaluation, through the llmnet-expert command, on a tiny model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from experts.tiny import make_tiny_model
from experts.train import Example, TrainConfig, TrainError, is_correct


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "experts.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "generation, answer, accept, ok",
    [("It is 13 hours.", "3", [], False), ("It takes 3 hours", "3", [], True), ("MARTA VENSEL did", "Marta Vensel",
                                                                                 [], True),
     ("the keyword give", "give", [], True), ("forgive me", "give", [], False),
     ("It is kstc.", "the kstc compiler", ["kstc"], True), ("nothing", "x", [], False)],
    ids=["3 inside 13", "3 alone", "case", "word", "inside a word", "accept list", "wrong"],
)
def test_whole_word_grading(generation: str, answer: str, accept: list[str], ok: bool) -> None:
    assert is_correct(generation, Example([], answer, accept)) is ok


def test_config_errors_name_the_field() -> None:
    with pytest.raises(TrainError, match="rank"):
        TrainConfig(rank=0)
    with pytest.raises(TrainError, match="heldout_fraction"):
        TrainConfig(heldout_fraction=1.5)


def test_train_then_eval_is_deterministic(tmp_path: Path) -> None:
    model = make_tiny_model(tmp_path / "model")
    data = tmp_path / "qa.jsonl"
    data.write_text("\n".join(json.dumps({"question": f"what is item {i}?", "answer": "abc"}) for i in range(24)))
    args = ["train", "--base", str(model), "--data", str(data), "--epochs", "15", "--lr", "0.01", "--rank", "4",
            "--batch-size", "4", "--output", "json"]
    first = cli(*args, "--out", str(tmp_path / "a"))
    assert first.returncode == 0, first.stderr
    manifest = json.loads(first.stdout)
    assert manifest["metrics"]["after"]["loss"] < manifest["metrics"]["before"]["loss"]
    assert manifest["metrics"]["after"]["accuracy"] > manifest["metrics"]["before"]["accuracy"]
    assert manifest["n_heldout"] == 2 and manifest["n_train"] == 22
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["adapter_sha256"] == manifest["adapter_sha256"]
    second = json.loads(cli(*args, "--out", str(tmp_path / "b")).stdout)
    assert second["adapter_sha256"] == manifest["adapter_sha256"]  # same seed, same bytes
    ev = cli("eval", "--base", str(model), "--adapter", str(tmp_path / "a"), "--data", str(data), "--output", "json")
    result = json.loads(ev.stdout)
    assert result["n"] == 24 and result["accuracy"] >= 0.9
    base = json.loads(cli("eval", "--base", str(model), "--data", str(data), "--output", "json").stdout)
    assert base["accuracy"] < result["accuracy"]
    bad = cli("train", "--base", str(model), "--data", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "c"))
    assert bad.returncode == 1 and bad.stderr.strip().splitlines()[-1].startswith("llmnet-expert: error:")
    assert "missing.jsonl does not exist" in bad.stderr
