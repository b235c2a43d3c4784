"""`llmnet ask --domain auto` routing accuracy on every training question of the shipped domains.

    python bench/domain_auto.py [--domains-dir data/domains] [--json]

Baseline in the same run: the same embedding model matching each question against the bare domain
names instead of their descriptions. Also prints the time to load the model and to route one question.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llmnet.client.route import Embedder, choose, load_descriptions  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def accuracy(questions: list[tuple[str, str]], domains: list[str], descriptions: dict[str, str],
             embed: Embedder) -> float:
    return sum(choose(q, domains, descriptions, embed).domain == d for q, d in questions) / len(questions)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--domains-dir", default=str(ROOT / "data" / "domains"))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    root = Path(args.domains_dir)
    domains = sorted(p.name for p in root.iterdir() if (p / "qa_train.jsonl").exists())
    questions = [(json.loads(line)["question"], d) for d in domains
                 for line in (root / d / "qa_train.jsonl").read_text().splitlines() if line.strip()]
    started = time.perf_counter()
    embed = Embedder()
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    described = accuracy(questions, domains, load_descriptions(), embed)
    per_question_ms = (time.perf_counter() - started) / len(questions) * 1000
    names_only = accuracy(questions, domains, {}, embed)
    result = {"questions": len(questions), "accuracy_descriptions": round(described, 4),
              "accuracy_names_only": round(names_only, 4), "model_load_s": round(load_s, 2),
              "ms_per_question": round(per_question_ms, 1)}
    if args.json:
        print(json.dumps(result))
        return
    print(f"{len(questions)} questions over {len(domains)} domains")
    print(f"  with descriptions: {described:.1%}   names only (baseline): {names_only:.1%}")
    print(f"  model load {load_s:.1f} s, {per_question_ms:.0f} ms per question (2 cores, CPU)")


if __name__ == "__main__":
    main()
