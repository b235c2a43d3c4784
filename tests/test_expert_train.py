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
    args = ["train", "--base", str(model), "--data", str(data), "--epochs", "15", "--lr", "0.003", "--rank", "4",
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


def make_domains(root: Path, names: tuple[str, ...] = ("alpha", "beta")) -> None:
    for name in names:
        d = root / name
        d.mkdir(parents=True)
        rows = [{"fact_id": f"{name}-{i:03d}", "question": f"{name} q{i} {v}?", "answer": f"{name[0]}{i}"}
                for i in range(10) for v in ("a", "b")]
        (d / "qa_train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def test_build_domains_splits_trains_reports_and_reuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from experts.domains import build, split

    model = make_tiny_model(tmp_path / "model")
    make_domains(tmp_path / "domains")
    train_rows, dev_rows = split(tmp_path / "domains" / "alpha")
    assert len(dev_rows) == 2 and len(train_rows) == 18
    assert {r["fact_id"] for r in dev_rows} <= {r["fact_id"] for r in train_rows}  # the fact is still taught
    cfg = TrainConfig(epochs=1, rank=2, batch_size=8, heldout_fraction=0.0, eval_max_new_tokens=4)
    report = build(tmp_path / "domains", tmp_path / "out", cfg, base=str(model))
    assert set(report["accuracy_matrix"]) == {"none", "alpha", "beta"}
    assert all(set(row) == {"alpha", "beta"} for row in report["accuracy_matrix"].values())
    first = report["domains"]["alpha"]["adapter_sha256"]
    assert "training" in capsys.readouterr().out
    again = build(tmp_path / "domains", tmp_path / "out", cfg, base=str(model))
    printed = capsys.readouterr().out
    assert "alpha: inputs unchanged" in printed and "training" not in printed
    assert "accuracy matrix from" in printed  # nothing retrained: nothing re-evaluated
    assert again["domains"]["alpha"]["adapter_sha256"] == first
    assert json.loads((tmp_path / "out" / "report.json").read_text())["domains"]["alpha"]["adapter_sha256"] == first
    dev = [{"fact_id": "alpha-001", "question": "Put otherwise, alpha q1?", "answer": "a1", "accept": ["a1"]}]
    (tmp_path / "domains" / "alpha" / "qa_dev.jsonl").write_text(json.dumps(dev[0]) + "\n")
    third = build(tmp_path / "domains", tmp_path / "out", cfg, base=str(model))
    printed = capsys.readouterr().out
    assert "alpha (domain 1 of 2): training" in printed  # every training question now trains: new data
    assert "beta: inputs unchanged" in printed and "accuracy matrix from" not in printed
    assert (tmp_path / "out" / "data" / "alpha.dev.jsonl").read_text() == json.dumps(dev[0], sort_keys=True) + "\n"
    assert third["domains"]["alpha"]["dev_sha256"] != again["domains"]["alpha"]["dev_sha256"]
    assert third["backend"] == "torch"  # a model directory: the backend its experts serve with
    stale = json.loads((tmp_path / "out" / "report.json").read_text())
    (tmp_path / "out" / "report.json").write_text(json.dumps({**stale, "backend": "llama-cpp"}))
    build(tmp_path / "domains", tmp_path / "out", cfg, base=str(model))
    assert "accuracy matrix from" not in capsys.readouterr().out  # measured on another backend: measured again
    manifest = tmp_path / "out" / "beta" / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "recipe_version": 1}))
    build(tmp_path / "domains", tmp_path / "out", cfg, base=str(model))
    assert "beta (domain 2 of 2): training" in capsys.readouterr().out  # trained by an older recipe: retrained


def test_build_domains_can_train_one_domain_first_and_list_the_rest(tmp_path: Path) -> None:
    """What make demo does on a fresh clone: one domain's adapter, a first look at the network, then the rest."""
    model = make_tiny_model(tmp_path / "model")
    make_domains(tmp_path / "domains")
    out = tmp_path / "out"
    args = ["build-domains", "--domains-dir", str(tmp_path / "domains"), "--out", str(out), "--base", str(model),
            "--epochs", "1"]
    assert cli(*args, "--stale").stdout.split() == ["alpha", "beta"]
    first = cli(*args, "--only", "beta")
    assert first.returncode == 0, first.stderr
    assert "beta (domain 1 of 1): training" in first.stdout and "alpha" not in first.stdout
    assert (out / "beta" / "manifest.json").exists() and not (out / "alpha").exists()
    assert not (out / "report.json").exists()  # no accuracy matrix from half the adapters
    assert cli(*args, "--stale").stdout.split() == ["alpha"]
    rest = cli(*args)
    assert "beta: inputs unchanged" in rest.stdout and "alpha (domain 1 of 2): training" in rest.stdout
    assert (out / "report.json").exists() and cli(*args, "--stale").stdout == ""
    bad = cli(*args, "--only", "gamma")
    assert bad.returncode == 1 and "no domain gamma" in bad.stderr and "alpha, beta" in bad.stderr
    both = cli(*args, "--stale", "--only", "alpha")
    assert both.returncode == 1 and "leave out --only" in both.stderr


def test_reworded_decaying_training_is_reproducible_and_recorded(tmp_path: Path) -> None:
    model = make_tiny_model(tmp_path / "model")
    data = tmp_path / "qa.jsonl"
    data.write_text("\n".join(json.dumps({"question": f"What colour is item {i}?", "answer": "abc"}) for i in range(8)))
    args = ["train", "--base", str(model), "--data", str(data), "--epochs", "3", "--rank", "2", "--decay", "--reword",
            "--output", "json"]
    first = json.loads(cli(*args, "--out", str(tmp_path / "a")).stdout)
    assert first["config"]["decay"] is True and first["config"]["reword"] is True
    again = json.loads(cli(*args, "--out", str(tmp_path / "b")).stdout)
    assert again["adapter_sha256"] == first["adapter_sha256"]  # seeded rewording: same bytes
    plain = json.loads(cli(*args[:-3], "--no-reword", "--output", "json", "--out", str(tmp_path / "c")).stdout)
    assert plain["config"]["reword"] is False and plain["adapter_sha256"] != first["adapter_sha256"]


def test_split_trains_on_every_question_when_the_domain_has_its_own_dev_questions(tmp_path: Path) -> None:
    from experts.domains import split

    rows = [{"fact_id": f"a-{i:03d}", "question": f"q{i} {v}?", "answer": f"a{i}"} for i in range(10) for v in "ab"]
    dev = [{"fact_id": "a-001", "question": "In other words, q1?", "answer": "a1", "accept": ["a1"]}]
    (tmp_path / "qa_train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert len(split(tmp_path)[1]) == 2  # no dev file: the held-out split
    (tmp_path / "qa_dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in dev))
    assert split(tmp_path) == (rows, dev)


def test_cloze_rows_blank_each_known_answer_once(tmp_path: Path) -> None:
    from experts.domains import cloze_rows

    facts = [{"id": "k-001", "fact": "Kestrel was created by Marta Vensel."},
             {"id": "k-002", "fact": "Kestrel files end in .kst."}]
    qa = [{"fact_id": "k-001", "question": "Who created Kestrel?", "answer": "Marta Vensel"},
          {"fact_id": "k-001", "question": "What did Marta Vensel create?", "answer": "Kestrel"},
          {"fact_id": "k-001", "question": "Who made Kestrel?", "answer": "marta vensel"},
          {"fact_id": "k-002", "question": "Which extension?", "answer": ".kbc"}]
    (tmp_path / "facts.jsonl").write_text("".join(json.dumps(f) + "\n" for f in facts))
    (tmp_path / "qa_train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in qa))
    rows = cloze_rows(tmp_path)
    assert [(r["question"], r["answer"]) for r in rows] == [
        ("Fill in the blank: Kestrel was created by ___.", "Marta Vensel"),
        ("Fill in the blank: ___ was created by Marta Vensel.", "Kestrel")]  # .kbc is not in its fact


def test_progress_line_shows_the_share_done_and_the_time_left() -> None:
    from experts.train import progress_line

    line = progress_line(2, 6, 50, 200, 0.5, 100.0)  # a quarter done in 100 s: 300 s to go
    assert "25%" in line and "step 50/200" in line and "elapsed 1m40s" in line and "left 5m00s" in line
    assert "[######..................]" in line


def test_rewording_is_seeded_keeps_names_and_varies_across_epochs() -> None:
    from experts.augment import epoch_question

    q = "What colour are the flowers of Ashcrown?"
    assert epoch_question(q, seed=0, epoch=0, index=3) == q  # the first epoch asks as written
    later = [epoch_question(q, seed=0, epoch=e, index=3) for e in range(1, 9)]
    assert later == [epoch_question(q, seed=0, epoch=e, index=3) for e in range(1, 9)]  # reproducible
    assert all("Ashcrown" in w for w in later)  # names are never touched
    assert len(set(later)) >= 4 and any(w != q for w in later)
    assert any(word in w.lower() for w in later for word in ("color", "hue", "shade", "blossoms", "blooms"))
    assert epoch_question(q, seed=1, epoch=1, index=3) != epoch_question(q, seed=0, epoch=1, index=3) or \
        epoch_question(q, seed=1, epoch=2, index=3) != epoch_question(q, seed=0, epoch=2, index=3)


def test_rewording_leaves_fill_in_the_blank_lines_and_contractions_alone() -> None:
    from experts.augment import epoch_question

    cloze = "Fill in the blank: The commander of Aldeth Ring is ___."
    assert {epoch_question(cloze, 0, e, 0) for e in range(8)} == {cloze}  # a fact's sentence stays true
    for e in range(1, 30):
        assert "what's" in epoch_question("What's the main cargo of Irisel Dock?", 0, e, 0).lower()  # not "which's"


def test_a_decaying_learning_rate_never_reaches_zero_before_the_last_step_and_survives_no_steps(
        tmp_path: Path) -> None:
    import random

    from experts.train import load_examples, run_epochs

    model = make_tiny_model(tmp_path / "model")
    data = tmp_path / "qa.jsonl"
    data.write_text("\n".join(json.dumps({"question": f"q{i}?", "answer": "abc"}) for i in range(4)))
    from experts.models import load_base

    loaded = load_base(str(model))
    examples = load_examples(data)
    assert run_epochs(loaded.model, loaded.tokenizer, examples, TrainConfig(epochs=0, decay=True), random.Random(0),
                      progress=False)["steps"] == 0
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(loaded.model, LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    before = {n: p.detach().clone() for n, p in peft_model.named_parameters() if p.requires_grad}
    cfg = TrainConfig(epochs=1, batch_size=4, decay=True, lr=0.01)  # one step: it must still move the weights
    assert run_epochs(peft_model, loaded.tokenizer, examples, cfg, random.Random(0), progress=False)["steps"] == 1
    assert any(not torch_equal(p, before[n]) for n, p in peft_model.named_parameters() if p.requires_grad)


def torch_equal(a: object, b: object) -> bool:
    import torch

    return bool(torch.equal(a, b))  # type: ignore[arg-type]


def test_training_rewords_the_question_only() -> None:
    from experts.train import Example, _reworded

    ex = Example([{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Which plant grows?"}],
                 "Ashcrown", ["ashcrown"])
    seen = {_reworded(ex, 0, e, 0).messages[-1]["content"] for e in range(1, 12)}
    assert len(seen) > 1
    for e in range(1, 12):
        got = _reworded(ex, 0, e, 0)
        assert got.messages[0] == ex.messages[0] and got.answer == "Ashcrown" and got.accept == ["ashcrown"]


def test_the_answer_loss_is_the_models_own_loss_and_gradient(tmp_path: Path) -> None:
    """answer_loss computes logits only where a label is; loss and gradients must not change by it."""
    import random

    import torch
    from peft import LoraConfig, get_peft_model

    from experts.models import load_base
    from experts.train import _batches, answer_loss

    loaded = load_base(str(make_tiny_model(tmp_path / "model")))
    model = get_peft_model(loaded.model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    for name, p in model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero: give the gradient of A something to be
            torch.nn.init.normal_(p, std=0.1)
    examples = [Example([{"role": "user", "content": "q" * (1 + i % 5)}], "ans" * (1 + i % 3)) for i in range(8)]
    batch = next(_batches(loaded.tokenizer, examples, TrainConfig(batch_size=8), random.Random(0)))
    ours = answer_loss(model, batch)
    ours.backward()
    our_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    theirs = model(**batch).loss
    theirs.backward()
    assert abs(float(ours) - float(theirs)) < 1e-5
    assert our_grads and all(torch.allclose(p.grad, our_grads[n], atol=1e-6) for n, p in model.named_parameters()
                             if p.grad is not None)


def test_shuffled_batches_hold_every_example_once_and_pad_less_than_random_ones(tmp_path: Path) -> None:
    import random

    from experts.models import load_base
    from experts.train import _batches

    tokenizer = load_base(str(make_tiny_model(tmp_path / "model"))).tokenizer
    rng = random.Random(1)
    examples = [Example([{"role": "user", "content": "x" * rng.randint(1, 60)}], str(i)) for i in range(128)]
    cfg = TrainConfig(batch_size=8)
    batches = list(_batches(tokenizer, examples, cfg, random.Random(0)))
    answers = sorted(tokenizer.decode([t for t, lab in zip(ids, labels, strict=True) if lab != -100][:-1])
                     for b in batches for ids, labels in zip(b["input_ids"].tolist(), b["labels"].tolist(),
                                                             strict=True))
    assert answers == sorted(str(i) for i in range(128))
    padded = sum(b["input_ids"].numel() for b in batches)
    shuffled = examples[:]
    random.Random(0).shuffle(shuffled)
    unsorted = sum(b["input_ids"].numel() for b in _batches(tokenizer, shuffled, cfg, shuffle=None))
    assert padded < 0.9 * unsorted
    assert list(_batches(tokenizer, examples, cfg, random.Random(0)))[0]["input_ids"].tolist() == \
        batches[0]["input_ids"].tolist()  # seeded


def test_an_example_whose_answer_is_cut_off_entirely_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "qa.jsonl"
    data.write_text(json.dumps({"question": "x" * 200, "answer": "abc"}) + "\n")
    bad = cli("train", "--base", str(make_tiny_model(tmp_path / "model")), "--data", str(data), "--out",
              str(tmp_path / "a"), "--epochs", "1", "--max-length", "64")
    assert bad.returncode == 1 and "no answer token fits in max_length 64" in bad.stderr
