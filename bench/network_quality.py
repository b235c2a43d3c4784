"""How often the network's settled answer is right, against its best member answering alone, in the same run.

    python bench/network_quality.py [--data DOMAIN=QA.jsonl ...] [--per-domain N] [--adapters experts/adapters]
                                    [--home DIR] [--output json]

A 4-validator localnet with the demo's experts (two serving the trained adapters, two the base model, all
registered in every domain; tools/demo.py) answers each question of the QA files (the domains' `qa_*.jsonl`
format: question, answer, optional accept list; default: the dev split beside the adapters, wording the
adapters never saw) through `llmnet ask` (k 2, 2 rounds, 2 scorers). An answer is right when `answer` or an
`accept` string occurs in it as whole words (as `llmnet-expert eval`). Printed as one JSON object:

- network_accuracy: the settled final answer is right; any_right: some respondent's answer (any round) was;
- round1_accuracy / final_round_accuracy: of every respondent's round-1 / final-round answer;
- judge_auc: the probability that a right final answer out-scores a wrong one of the same query (aggregated
  scores; ties count half), and per scorer kind (trained / base) for their own revealed scores;
- solo: each kind of expert answering every question alone (the same prompt and sampling, in process), the
  baseline the network must beat;
- experts: per expert, its accuracy as a respondent, earnings and reputation per domain at the end;
- seconds_per_query.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from experts.train import Example, is_correct, load_examples  # noqa: E402
from llmnet.client.sdk import Client  # noqa: E402
from llmnet.node.localnet import Localnet  # noqa: E402
from tools.demo import EXPERTS, PARAMS, TIMEOUT_COMMIT, ask, expert_address, start_experts, stop_all, wait_ready  # noqa: E402

ANSWER_TOKENS = 24  # as the demo's experts


def pair_auc(right: list[float], wrong: list[float]) -> tuple[float, int]:
    """(wins, pairs): each right score against each wrong one, a tie counting half."""
    wins = sum(1.0 if r > w else 0.5 if r == w else 0.0 for r in right for w in wrong)
    return wins, len(right) * len(wrong)


def judged_query(client: Client, query_id: int, example: Example, kinds: dict[str, str]) -> dict[str, Any]:
    """Every answer and score of a settled query, each answer marked right or wrong."""
    st = client.query_status(query_id)
    receipt = client.receipt(query_id).receipt
    respondents = list(receipt.respondents)
    rounds = st.query.rounds
    by_round = {(a.respondent, a.round): a.answer for a in st.answers if a.revealed}
    final = [by_round.get((r, rounds)) for r in respondents]
    first = [by_round.get((r, 1)) for r in respondents]
    scorer_scores = {s.scorer: list(s.scores) for s in st.scores if s.revealed}
    return {
        "query_id": query_id, "question": example.messages[-1]["content"], "expected": example.answer,
        "respondents": [kinds[r] for r in respondents], "round1": first, "final": final,
        "round1_right": [a is not None and is_correct(a, example) for a in first],
        "final_right": [a is not None and is_correct(a, example) for a in final],
        "scores": list(receipt.scores), "final_answer": receipt.final_answer,
        "settled_right": bool(receipt.final_answer) and is_correct(receipt.final_answer, example),
        "payouts": [(p.address, p.amount) for p in receipt.payouts],
        "by_scorer": [(kinds[s], v) for s, v in sorted(scorer_scores.items())],
    }


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def share(flags: list[bool]) -> float:
        return round(sum(flags) / len(flags), 3) if flags else 0.0

    aggregate = [0.0, 0]
    per_kind: dict[str, list[float]] = {}
    for row in rows:
        right = [s for s, ok in zip(row["scores"], row["final_right"], strict=True) if ok]
        wrong = [s for s, ok in zip(row["scores"], row["final_right"], strict=True) if not ok]
        wins, pairs = pair_auc(right, wrong)
        aggregate[0] += wins
        aggregate[1] += pairs
        for kind, scores in row["by_scorer"]:
            r = [s for s, ok in zip(scores, row["final_right"], strict=True) if ok]
            w = [s for s, ok in zip(scores, row["final_right"], strict=True) if not ok]
            wins, pairs = pair_auc(r, w)
            acc = per_kind.setdefault(kind.split("-")[0], [0.0, 0])
            acc[0] += wins
            acc[1] += pairs
    return {
        "queries": len(rows),
        "network_accuracy": share([r["settled_right"] for r in rows]),
        "any_right": share([any(r["round1_right"]) or any(r["final_right"]) for r in rows]),
        "round1_accuracy": share([ok for r in rows for ok in r["round1_right"]]),
        "final_round_accuracy": share([ok for r in rows for ok in r["final_right"]]),
        "judge_auc": round(aggregate[0] / aggregate[1], 3) if aggregate[1] else None,
        "judge_pairs": aggregate[1],
        "judge_auc_by_scorer_kind": {k: round(v[0] / v[1], 3) if v[1] else None for k, v in sorted(per_kind.items())},
    }


def solo(adapters: Path, work: list[tuple[str, Example]], domains: list[str]) -> dict[str, dict[str, float]]:
    """Each kind of expert answering alone: the trained adapter of the question's domain (with its notes), and
    the base model, with the daemon's round-1 prompt and sampling (experts/answers.py), on the backend the
    experts serve with."""
    from experts.answers import AnswerPlan, expert_messages
    from experts.engine import Engine, Limits
    from experts.models import load_base
    from wire.llmnet.inference.v1 import inference_pb2 as inf

    engine = Engine(load_base("embedded", backend="auto"), Limits(max_prompt_tokens=512))
    for d in domains:
        engine.add_adapter(d, str(adapters / d))
    plan = AnswerPlan(ANSWER_TOKENS)
    out: dict[str, dict[str, list[bool]]] = {"trained": {}, "base": {}}
    for domain, example in work:
        question = example.messages[-1]["content"]
        for kind, adapter in (("trained", domain), ("base", "")):
            messages = expert_messages(question, engine.notes_for(adapter))
            text = engine.generate(messages, plan.sampling(inf.Query(id=0)), adapter).text
            out[kind].setdefault(domain, []).append(is_correct(text, example))
    engine.close()
    return {kind: {d: round(sum(v) / len(v), 3) for d, v in sorted(by.items())} |
            {"all": round(sum(sum(v) for v in by.values()) / sum(len(v) for v in by.values()), 3)}
            for kind, by in out.items()}


def experts_table(client: Client, labels: dict[str, str], domains: list[str],
                  rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    table = []
    for address, label in labels.items():
        e = client.expert(address)
        reps = {r.domain: r.reputation for r in e.reputation}
        answered = [ok for row in rows for kind, ok in zip(row["respondents"], row["final_right"], strict=True)
                    if kind == label]
        earned = sum(amount for row in rows for who, amount in row["payouts"] if who == address)
        table.append({"expert": label, "answered": len(answered),
                      "accuracy": round(sum(answered) / len(answered), 3) if answered else None,
                      "earned": earned, "reputation": {d: reps.get(d, 0) for d in domains}})
    return table


def load_work(specs: list[str], adapters: Path, domains: list[str], per_domain: int) -> list[tuple[str, Example]]:
    files = dict(s.split("=", 1) for s in specs) if specs else {
        d: str(adapters / "data" / f"{d}.dev.jsonl") for d in domains}
    unknown = sorted(set(files) - set(domains))
    if unknown:
        raise SystemExit(f"no adapter for {unknown}; have {domains}")
    per = {d: load_examples(Path(f))[:per_domain or None] for d, f in sorted(files.items())}
    # round robin over the domains, so a short run still sees each of them
    return [(d, per[d][i]) for i in range(max(len(v) for v in per.values())) for d in sorted(per) if i < len(per[d])]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", action="append", default=[], metavar="DOMAIN=QA.jsonl",
                   help="questions of a domain (repeatable; default: each adapter's dev split)")
    p.add_argument("--per-domain", type=int, default=0, help="at most this many questions per domain (0: all)")
    p.add_argument("--adapters", default="experts/adapters", help="trained adapters (make experts)")
    p.add_argument("--home", default="", help="keep the localnet and expert logs here (default: a temporary "
                                              "directory, removed at the end)")
    p.add_argument("--output", choices=("text", "json"), default="text")
    args = p.parse_args()
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # the set-up's chatter to stderr; the figures alone to stdout
    adapters = (ROOT / args.adapters).resolve()
    domains = sorted(d.name for d in adapters.iterdir() if (d / "manifest.json").exists()) if adapters.is_dir() else []
    if not domains:
        raise SystemExit(f"no adapters under {adapters}: run make experts")
    work = load_work(args.data, adapters, domains, args.per_domain)
    home = Path(args.home).resolve() if args.home else Path(tempfile.mkdtemp(prefix="llmnet-quality-"))
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    baseline = solo(adapters, work, domains)
    net = Localnet(home / "net", str(ROOT / "bin" / "cometbft"))
    net.create(4, base_port=27700, accounts=1 + len(EXPERTS), timeout_commit=TIMEOUT_COMMIT, params=PARAMS)
    procs: list[Any] = []
    rows: list[dict[str, Any]] = []
    try:
        net.start()
        procs = start_experts(net, adapters, domains, home, answer_tokens=ANSWER_TOKENS, base_port=50251)
        wait_ready(home)
        labels = {expert_address(net, i): label for i, (label, _) in enumerate(EXPERTS)}
        started = time.monotonic()
        with Client(net.manifest()["nodes"][0]["grpc"]) as client:
            for n, (domain, example) in enumerate(work, 1):
                result = ask(net, domain, example.messages[-1]["content"], "--no-provisional")
                row = judged_query(client, int(result["query_id"]), example, labels)
                row["domain"] = domain
                rows.append(row)
                print(f"[{n}/{len(work)}] {domain}: {'right' if row['settled_right'] else 'wrong'} "
                      f"{row['final_answer'][:70]!r} (expected {example.answer!r}; scores {row['scores']})",
                      file=sys.stderr, flush=True)
            seconds = (time.monotonic() - started) / max(1, len(rows))
            table = experts_table(client, labels, domains, rows)
    finally:
        stop_all(procs)
        net.stop()
        if not args.home:
            shutil.rmtree(home, ignore_errors=True)
    result = {**summarise(rows), "solo": baseline, "experts": table, "seconds_per_query": round(seconds, 2),
              "by_domain": {d: summarise([r for r in rows if r["domain"] == d]) for d in domains}}
    if args.output == "json":
        print(json.dumps({**result, "per_query": rows}, indent=2), file=out)
        return
    best = max(v["all"] for v in baseline.values())
    print(f"{result['queries']} queries, {result['seconds_per_query']} s each", file=out)
    for name in ("network_accuracy", "any_right", "round1_accuracy", "final_round_accuracy", "judge_auc"):
        print(f"  {name:<22} {result[name]}", file=out)
    print(f"  best expert alone      {best}  (trained {baseline['trained']}, base {baseline['base']})", file=out)
    print(f"  judge AUC by scorer    {result['judge_auc_by_scorer_kind']}", file=out)
    for row in table:
        print(f"  {row['expert']:<10} accuracy {row['accuracy']!s:<6} earned {row['earned']:>7} "
              f"reputation {row['reputation']}", file=out)


if __name__ == "__main__":
    main()
