"""How well each way of judging separates right answers from wrong ones: AUC on a labelled judging set.

    python bench/judging.py [--adapters experts/adapters] [--per-domain N] [--output json]

The judging set: for every question of each domain's dev split (wording the adapters never saw), the
answers a network would see — the trained adapter's greedy answer, the base model's, and two samples
of the trained adapter (temperature 0.8, as different trained experts might say it) — each labelled right or
wrong by the accept rules (whole words, as `llmnet-expert eval`). A judging method scores every answer;
its AUC is the probability that a right answer out-scores a wrong one to the same question (ties half).

Methods, for a scorer holding the domain's adapter unless named "base":
- f1_reference: word-overlap F1 with the scorer's own greedy answer (how experts judged before);
- f1_reference_base: the same, by a base-model scorer;
- adapter_logprob: the mean log-probability per token of the answer under the adapter;
- lift: adapter_logprob minus the same under the base model (what the adapter knows that the base does not);
- judge_score: the 0-100 score experts commit (experts/judge.py: adapter_logprob, floored by lift).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.network_quality import pair_auc  # noqa: E402
from experts.answers import expert_messages  # noqa: E402
from experts.engine import Engine, Limits, Sampling  # noqa: E402
from experts.judge import likelihood_score  # noqa: E402
from experts.models import load_base  # noqa: E402
from experts.train import is_correct, load_examples  # noqa: E402

TOKENS = 24
WORD = re.compile(r"\w+")


def overlap_f1(answer: str, reference: str) -> float:
    """Bag-of-words F1 (lower-cased word tokens, SQuAD style): how experts judged before experts/judge.py."""
    a, r = WORD.findall(answer.lower()), WORD.findall(reference.lower())
    common = sum((Counter(a) & Counter(r)).values())
    if not a or not r or not common:
        return 0.0
    precision, recall = common / len(a), common / len(r)
    return 2 * precision * recall / (precision + recall)
METHODS = ("f1_reference", "f1_reference_base", "adapter_logprob", "lift", "judge_score")


def candidates(engine: Engine, question: str, domain: str) -> list[str]:
    """The trained expert's greedy answer (with its notes), the base model's, two samples of the trained one."""
    plain, noted = expert_messages(question), expert_messages(question, engine.notes_for(domain))
    greedy = [engine.generate(m, Sampling(max_new_tokens=TOKENS), d).text for m, d in ((noted, domain), (plain, ""))]
    sampled = [engine.generate(noted, Sampling(max_new_tokens=TOKENS, temperature=0.8, seed=s), domain).text
               for s in (1, 2)]
    return greedy + sampled


def judged(engine: Engine, question: str, domain: str, answers: list[str]) -> dict[str, list[float]]:
    """Every method's scores of answers (as candidates() made them: the first two are the trained and the
    base model's greedy answers, which are also the two scorers' own references)."""
    reference, base_reference = answers[0], answers[1]
    # as experts/daemon.py judges: the adapter with its notes, the base model without
    adapter = engine.answer_logprobs(expert_messages(question, engine.notes_for(domain)), answers, domain)
    base = engine.answer_logprobs(expert_messages(question), answers, "")
    return {"f1_reference": [overlap_f1(a, reference) for a in answers],
            "f1_reference_base": [overlap_f1(a, base_reference) for a in answers],
            "adapter_logprob": adapter, "lift": [x - y for x, y in zip(adapter, base, strict=True)],
            "judge_score": [likelihood_score(x, y) for x, y in zip(adapter, base, strict=True)]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--adapters", default="experts/adapters")
    p.add_argument("--per-domain", type=int, default=0, help="at most this many dev questions per domain (0: all)")
    p.add_argument("--output", choices=("text", "json"), default="text")
    args = p.parse_args()
    adapters = (ROOT / args.adapters).resolve()
    domains = sorted(d.name for d in adapters.iterdir() if (d / "manifest.json").exists())
    engine = Engine(load_base("embedded", backend="auto"), Limits(max_prompt_tokens=512))
    for d in domains:
        engine.add_adapter(d, str(adapters / d))
    totals = {m: [0.0, 0] for m in METHODS}
    rows: list[dict[str, Any]] = []
    for d in domains:
        for example in load_examples(adapters / "data" / f"{d}.dev.jsonl")[:args.per_domain or None]:
            question = example.messages[-1]["content"]
            answers = candidates(engine, question, d)
            right = [is_correct(a, example) for a in answers]
            scores = judged(engine, question, d, answers)
            for m in METHODS:
                wins, pairs = pair_auc([s for s, ok in zip(scores[m], right, strict=True) if ok],
                                       [s for s, ok in zip(scores[m], right, strict=True) if not ok])
                totals[m][0] += wins
                totals[m][1] += pairs
            rows.append({"domain": d, "question": question, "answers": answers, "right": right, "scores": scores})
            print(f"{d}: {sum(right)}/{len(right)} right", file=sys.stderr, flush=True)
    result = {"answers": sum(len(r["answers"]) for r in rows), "right": sum(sum(r["right"]) for r in rows),
              "pairs": totals[METHODS[0]][1],
              "auc": {m: round(w / n, 3) if n else None for m, (w, n) in totals.items()}}
    if args.output == "json":
        print(json.dumps({**result, "per_question": rows}, indent=2))
        return
    print(f"{result['answers']} answers ({result['right']} right), {result['pairs']} right/wrong pairs")
    for m, auc in result["auc"].items():
        print(f"  {m:<18} AUC {auc}")


if __name__ == "__main__":
    main()
