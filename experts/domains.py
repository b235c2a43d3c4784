"""Build one expert per knowledge domain, reusing adapters whose inputs did not change.

A domain folder holds qa_train.jsonl with two questions per fact, and may hold qa_dev.jsonl: questions on
the same facts in wording the training data does not use (as users will ask). With qa_dev.jsonl the adapter
trains on every training question and is measured on the dev questions. Without it, the dev split holds out
the second question of a fifth of the facts: the adapter still sees the fact (through the first question)
and is measured on different wording. Every adapter is also measured on every other domain's dev set, where
it should know nothing. A domain's facts.jsonl becomes its adapter's notes (experts/notes.py): the adapter is
trained, measured and served with the facts that bear on each question in its prompt. Each note is also found
by the training questions about its fact (never the dev ones: they stand for questions nobody has seen).
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict
from pathlib import Path
from typing import Any

from experts.adapters import adapter_sha256
from experts.augment import CLOZE_PREFIX
from experts.engine import Engine
from experts.meaning import shared_embed
from experts.models import load_base, resolve_backend
from experts.train import TrainConfig, evaluate, inputs, load_examples, train


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def split(domain_dir: Path, seed: int = 0) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The training and dev questions of a domain folder."""
    rows = _rows(domain_dir / "qa_train.jsonl")
    if (domain_dir / "qa_dev.jsonl").exists():
        return rows, _rows(domain_dir / "qa_dev.jsonl")
    by_fact: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_fact.setdefault(r["fact_id"], []).append(r)
    facts = sorted(by_fact)
    dev_facts = set(random.Random(seed).sample(facts, len(facts) // 5))
    train_rows, dev_rows = [], []
    for fact in facts:
        questions = by_fact[fact]
        if fact in dev_facts and len(questions) > 1:
            train_rows.extend(questions[:-1])
            dev_rows.append(questions[-1])
        else:
            train_rows.extend(questions)
    return train_rows, dev_rows


def cloze_rows(domain_dir: Path) -> list[dict[str, Any]]:
    """Fill-in-the-blank examples from facts.jsonl: every known answer that occurs in its fact's
    sentence is blanked out once. They show each fact in a second surface form (the sentence
    itself), which helps the adapter answer questions worded unlike the training questions."""
    facts_file = domain_dir / "facts.jsonl"
    if not facts_file.exists():
        return []
    facts = {r["id"]: r["fact"] for r in _rows(facts_file)}
    rows, seen = [], set()
    for r in _rows(domain_dir / "qa_train.jsonl"):
        fact, answer = facts.get(r["fact_id"], ""), str(r["answer"])
        at = fact.lower().find(answer.lower())
        if at < 0 or (r["fact_id"], answer.lower()) in seen:
            continue
        seen.add((r["fact_id"], answer.lower()))
        blanked = fact[:at] + "___" + fact[at + len(answer):]
        rows.append({"fact_id": r["fact_id"], "question": CLOZE_PREFIX + blanked, "answer": answer})
    return rows


def notes_rows(domain_dir: Path, train_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The domain's facts as notes, each with the training questions (and their answers) about it as the
    phrases it is also found by; [] without facts.jsonl."""
    facts_file = domain_dir / "facts.jsonl"
    if not facts_file.exists():
        return []
    asked: dict[str, list[str]] = {}
    for r in train_rows:
        asked.setdefault(r["fact_id"], []).append(f"{r['question']} {r['answer']}")
    return [{"fact": f["fact"], "asked": asked.get(f.get("id"), [])} for f in _rows(facts_file)]


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def domain_names(domains_dir: Path) -> list[str]:
    """The domain folders under domains_dir (those holding qa_train.jsonl), sorted."""
    return sorted(p.name for p in domains_dir.iterdir() if (p / "qa_train.jsonl").exists())


def prepare(domains_dir: Path, out_dir: Path, cfg: TrainConfig) -> list[str]:
    """Write every domain's training and dev files under out_dir/data; returns the domains, sorted."""
    domains = domain_names(domains_dir)
    if not domains:
        raise FileNotFoundError(f"no domain folders with qa_train.jsonl under {domains_dir}")
    for d in domains:
        train_rows, dev_rows = split(domains_dir / d, cfg.seed)
        _write(out_dir / "data" / f"{d}.train.jsonl", train_rows + cloze_rows(domains_dir / d))
        _write(out_dir / "data" / f"{d}.dev.jsonl", dev_rows)
        noted = notes_rows(domains_dir / d, train_rows)
        notes_path = out_dir / "data" / f"{d}.notes.jsonl"
        if noted:
            _write(notes_path, noted)
        else:
            notes_path.unlink(missing_ok=True)
    return domains


def notes_file(out_dir: Path, domain: str, notes: bool) -> Path | None:
    """The domain's notes as prepare wrote them, given to its adapter (experts/notes.py) unless notes is False."""
    path = out_dir / "data" / f"{domain}.notes.jsonl"
    return path if notes and path.is_file() else None


def _reusable(out_dir: Path, domain: str, cfg: TrainConfig, notes: Path | None) -> dict[str, Any] | None:
    """The domain's manifest when its adapter was trained from exactly these inputs and its files are the ones
    the manifest commits to (notes.jsonl included), else None."""
    manifest_path = out_dir / domain / "manifest.json"
    data = out_dir / "data" / f"{domain}.train.jsonl"
    wanted = json.loads(json.dumps(inputs(cfg, data, notes.read_bytes() if notes else None)))  # as read back
    old = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    if not all(old.get(key) == value for key, value in wanted.items()):
        return None
    return old if old.get("adapter_sha256") == adapter_sha256(out_dir / domain) else None


def stale(domains_dir: Path, out_dir: Path, cfg: TrainConfig, notes: bool = True) -> list[str]:
    """The domains `build` would train (their adapter is missing or was trained from other inputs). Writes
    the data files as `build` does: an adapter's inputs include its training file's hash."""
    return [d for d in prepare(domains_dir, out_dir, cfg)
            if _reusable(out_dir, d, cfg, notes_file(out_dir, d, notes)) is None]


def build(domains_dir: Path, out_dir: Path, cfg: TrainConfig, base: str = "embedded",
          only: list[str] | None = None, notes: bool = True) -> dict[str, Any]:
    """Train (or reuse) out_dir/<domain> for every domain; returns and writes out_dir/report.json.
    With `only`, just those domains, and no report (its accuracy matrix needs every adapter)."""
    domains = prepare(domains_dir, out_dir, cfg)
    unknown = sorted(set(only or ()) - set(domains))
    if unknown:
        raise ValueError(f"no domain {', '.join(unknown)} under {domains_dir} (there are: {', '.join(domains)})")
    data_dir = out_dir / "data"
    report: dict[str, Any] = {"config": asdict(cfg), "domains": {}}
    chosen = [d for d in domains if only is None or d in only]
    for n, d in enumerate(chosen, 1):
        train_file = data_dir / f"{d}.train.jsonl"
        facts = notes_file(out_dir, d, notes)
        manifest = _reusable(out_dir, d, cfg, facts)
        if manifest is not None:
            print(f"{d}: inputs unchanged, reusing {out_dir / d}", flush=True)
        else:
            print(f"{d} (domain {n} of {len(chosen)}): training on {train_file}", flush=True)
            manifest = train(load_base(base), train_file, out_dir / d, cfg, data_dir / f"{d}.dev.jsonl",
                             accuracy=False, notes=facts)  # the accuracy matrix below measures it, as experts serve
        report["domains"][d] = {"adapter_sha256": manifest["adapter_sha256"], "metrics": manifest["metrics"],
                                "dev_sha256": hashlib.sha256((data_dir / f"{d}.dev.jsonl").read_bytes()).hexdigest()}
    if only is not None:
        return report
    cached_path = out_dir / "report.json"
    cached = json.loads(cached_path.read_text()) if cached_path.exists() else {}
    report["backend"] = resolve_backend(base, "auto")  # the experts serve with it (llama.cpp if installed)
    report["notes_ranking"] = "words+meaning" if shared_embed() is not None else "words"  # as experts serve
    if cached.get("domains") == json.loads(json.dumps(report["domains"])) and "accuracy_matrix" in cached \
            and cached.get("backend") == report["backend"] and cached.get("notes_ranking") == report["notes_ranking"]:
        print(f"every adapter reused; accuracy matrix from {cached_path}", flush=True)
        return dict(cached)
    engine = Engine(load_base(base, backend=report["backend"]))
    for d in domains:
        engine.add_adapter(d, str(out_dir / d))
    matrix: dict[str, dict[str, float]] = {}
    for adapter in ["none", *domains]:
        matrix[adapter] = {}
        for d in domains:
            dev = load_examples(data_dir / f"{d}.dev.jsonl", engine.notes_for(adapter))  # each with its own notes
            result = evaluate(engine, dev, "" if adapter == "none" else adapter, cfg.eval_max_new_tokens)
            matrix[adapter][d] = result["accuracy"]
    report["accuracy_matrix"] = matrix  # rows: adapter (or none); columns: the domain's dev questions
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    return report
