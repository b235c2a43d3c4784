"""Does reputation work? A simulation through the real state machine (in process, no network).

N experts in 3 domains have a hidden quality q in [0.15, 0.95]. Each query draws one respondent and
three scorers by the chain's own selection; honest scorers score q*100 plus Gaussian noise; 20% of
experts are colluders that, as scorers, always give one chosen favourite 100. Per 100 queries we
report the mean hidden quality of the selected respondents next to random selection (the mean q
of the domain) and an oracle (the best q of the domain). The favourite's reputation is compared
with a run without colluders (same seed) to measure what collusion bought.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llmnet.client import protocol  # noqa: E402
from llmnet.devchain import DevChain, seeded_key, submitted_ids  # noqa: E402
from wire.llmnet.query.v1 import query_pb2 as qpb  # noqa: E402

DOMAINS = ["island-herbalism", "kestrel-lang", "orbital-logistics"]
SCALE = 1_000_000


@dataclass
class Run:
    selected: list[float] = field(default_factory=list)
    random_mean: list[float] = field(default_factory=list)
    oracle: list[float] = field(default_factory=list)
    top_third: list[bool] = field(default_factory=list)
    favourite_reputation: dict[str, list[int]] = field(default_factory=dict)
    favourite_scores: dict[str, list[int]] = field(default_factory=dict)


def simulate(seed: int, n_experts: int, queries: int, wave: int, noise: float, collusion: bool,
             params: dict[str, dict[str, object]]) -> tuple[Run, dict[str, float], dict[str, str]]:
    rng = random.Random(seed)
    experts = [seeded_key(f"sim-expert{i}") for i in range(n_experts)]
    quality = {k.address: 0.15 + 0.8 * rng.random() for k in experts}
    domain_of = {k.address: DOMAINS[i % len(DOMAINS)] for i, k in enumerate(experts)}
    members = {d: [k.address for k in experts if domain_of[k.address] == d] for d in DOMAINS}
    colluders = {a for d in DOMAINS for a in rng.sample(members[d], len(members[d]) // 5)}  # 20% of each pool
    # each domain's favourite is its median-quality expert that is not itself a colluder
    favourite = {}
    for d in DOMAINS:
        honest = sorted((a for a in members[d] if a not in colluders), key=lambda a: quality[a])
        favourite[d] = honest[len(honest) // 2]
    top = {d: set(sorted(members[d], key=lambda a: -quality[a])[: -(-len(members[d]) // 3)]) for d in DOMAINS}
    requester = seeded_key("sim-requester")
    score_rng = random.Random(seed + 1)

    with tempfile.TemporaryDirectory() as tmp:
        chain = DevChain(Path(tmp) / "sim.db", [*experts, requester], 10**15, {
            "experts": {"params": {"domains": DOMAINS, "default_capacity": 64, **params.get("experts", {})}},
            "inference": {"params": {"commit_blocks": 2, "reveal_blocks": 2,
                                     **params.get("inference", {})}},
        })
        chain.ok(*[chain.tx(k, protocol.register_expert(k, [domain_of[k.address]], "sim:0", "sim", "00" * 32,
                                                        5_000_000)) for k in experts])
        run = Run()
        for _ in range(queries // wave):
            domains = [rng.choice(DOMAINS) for _ in range(wave)]
            results = chain.ok(*[chain.tx(requester, protocol.submit_query(requester, d, "q", 10_000, 1, 1))
                                 for d in domains])
            ids = submitted_ids(results)
            chain.block()  # the draw: the block after the submits
            statuses = [chain.status(i).query for i in ids]
            for st in statuses:
                who = st.respondents[0]
                qs = [quality[a] for a in members[st.domain]]
                run.selected.append(quality[who])
                run.random_mean.append(sum(qs) / len(qs))
                run.oracle.append(max(qs))
                run.top_third.append(who in top[st.domain])
            answers = [(chain.key_of(st.respondents[0]), st.id) for st in statuses]
            chain.ok(*[chain.tx(k, protocol.commit_answer(k, chain.chain_id, i, 1, "a")) for k, i in answers])
            chain.ok(*[chain.tx(k, protocol.reveal_answer(k, chain.chain_id, i, 1, "a")) for k, i in answers])
            scores = {}
            for st in statuses:
                who = st.respondents[0]
                for s in st.scorers:
                    honest = min(100, max(0, round(quality[who] * 100 + score_rng.gauss(0, noise))))
                    colluding = collusion and s in colluders and who == favourite[st.domain]
                    scores[(s, st.id)] = 100 if colluding else honest
            chain.ok(*[chain.tx(chain.key_of(s), protocol.commit_scores(chain.key_of(s), chain.chain_id, i, [v]))
                       for (s, i), v in scores.items()])
            chain.ok(*[chain.tx(chain.key_of(s), protocol.reveal_scores(chain.key_of(s), chain.chain_id, i, [v]))
                       for (s, i), v in scores.items()])
            for st in statuses:
                if st.respondents[0] == favourite[st.domain]:
                    receipt = chain.query("Receipt", qpb.ReceiptRequest(query_id=st.id), qpb.ReceiptResponse).receipt
                    run.favourite_scores.setdefault(st.domain, []).append(receipt.scores[0])
            for d in DOMAINS:
                resp = chain.query("Expert", qpb.ExpertRequest(address=favourite[d]), qpb.ExpertResponse)
                run.favourite_reputation.setdefault(d, []).append(resp.reputation[0].reputation)
        chain.app.close()
    return run, quality, favourite


def _mean(by_domain: dict[str, list[int]]) -> float:
    values = [v for vs in by_domain.values() for v in vs]
    return sum(values) / len(values) if values else 0.0


def _late_mean(samples: list[int], wave: int) -> float:
    late = samples[500 // wave:]
    return sum(late) / len(late)


def bucket_means(values: list[float], size: int = 100) -> list[float]:
    return [sum(values[i:i + size]) / len(values[i:i + size]) for i in range(0, len(values), size)]


def first_window(flags: list[bool], size: int = 100, share: float = 0.8) -> int | None:
    for end in range(size, len(flags) + 1):
        if sum(flags[end - size:end]) >= share * size:
            return end
    return None


def plot(path: Path, run: Run) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [100 * (i + 1) for i in range(len(bucket_means(run.selected)))]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(xs, bucket_means(run.selected), label="selected by reputation", marker="o")
    ax.plot(xs, bucket_means(run.random_mean), label="random selection", linestyle="--")
    ax.plot(xs, bucket_means(run.oracle), label="oracle (best in domain)", linestyle=":")
    ax.set_xlabel("queries")
    ax.set_ylabel("mean hidden quality of respondents")
    ax.set_ylim(0, 1)
    ax.legend(loc="lower right")
    ax.set_title("LLM-Net reputation: quality of selected experts")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def report_attacks(seed: int, n: int, queries: int, wave: int, as_json: bool) -> None:
    from bench.attacks import run_all

    outcomes = run_all(seed, n, queries, wave)
    if as_json:
        print(json.dumps([{**o.__dict__, "pays": o.pays} for o in outcomes], indent=2))
        return
    print(f"{n} experts in one domain, {queries} queries (2 respondents, 3 scorers each), seed {seed}")
    print(f"{'attack':44} {'attacker':28} {'ullm/query':>11} {'honest':>9} {'reputation':>11} {'honest':>9}  pays?")
    for o in outcomes:
        print(f"{o.attack:44} {o.attacker:28} {o.ullm_per_query:>11.0f} {o.honest_ullm_per_query:>9.0f} "
              f"{o.reputation:>11} {o.honest_reputation:>9}  {'YES' if o.pays else 'no'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--experts", type=int, default=30)
    p.add_argument("--queries", type=int, default=2000)
    p.add_argument("--wave", type=int, default=20, help="queries in flight together")
    p.add_argument("--noise", type=float, default=10.0, help="honest scorers' noise, score points (sd)")
    p.add_argument("--plot", default="bench/out/reputation.png", help="PNG path ('' for none)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--gamma", type=int, default=0, help="override selection_exponent (default: genesis default)")
    p.add_argument("--floor", type=int, default=0, help="override exploration_floor")
    p.add_argument("--scorers", type=int, default=0, help="override scorers per query")
    p.add_argument("--clip", type=int, default=0, help="override clip_distance")
    p.add_argument("--attacks", action="store_true",
                   help="instead: play the economic attacks (bench/attacks.py) and report each attacker's gain")
    args = p.parse_args()
    if args.attacks:
        report_attacks(args.seed, args.experts, args.queries, args.wave, args.json)
        return
    params: dict[str, dict[str, object]] = {
        "experts": {k: v for k, v in (("selection_exponent", args.gamma), ("exploration_floor", args.floor)) if v},
        "inference": {k: v for k, v in (("scorers", args.scorers), ("clip_distance", args.clip)) if v},
    }
    run, quality, favourite = simulate(args.seed, args.experts, args.queries, args.wave, args.noise, True, params)
    clean, _, _ = simulate(args.seed, args.experts, args.queries, args.wave, args.noise, False, params)
    after = slice(500, None)
    out = {
        "selected_quality_after_500": sum(run.selected[after]) / len(run.selected[after]),
        "oracle_quality": sum(run.oracle[after]) / len(run.oracle[after]),
        "random_quality": sum(run.random_mean[after]) / len(run.random_mean[after]),
        "queries_until_top_third_80pct": first_window(run.top_third),
        "top_third_share_after_500": sum(run.top_third[after]) / len(run.top_third[after]),
        # Reputation is an EMA of aggregated scores, so its long-run level is their mean: the shift
        # colluders buy is the rise in the mean aggregated score their favourite receives (all
        # domains pooled), as a fraction of scale. The time-averaged reputation difference after
        # query 500 is reported beside it; it is noisier (few, path-dependent samples).
        "collusion_shift": (_mean(run.favourite_scores) - _mean(clean.favourite_scores)) / 100,
        "favourite_answers": sum(len(v) for v in run.favourite_scores.values()),
        "collusion_shift_reputation_avg": max(abs(_late_mean(run.favourite_reputation[d], args.wave)
                                                  - _late_mean(clean.favourite_reputation[d], args.wave))
                                              for d in DOMAINS) / SCALE,
        "selected_quality_per_100": [round(x, 3) for x in bucket_means(run.selected)],
        "seed": args.seed,
    }
    out["selected_over_oracle"] = out["selected_quality_after_500"] / out["oracle_quality"]
    if args.plot:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        plot(Path(args.plot), run)
        out["plot"] = args.plot
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"after 500 queries: selected quality {out['selected_quality_after_500']:.3f}, "
          f"oracle {out['oracle_quality']:.3f} ({out['selected_over_oracle']:.1%} of oracle), "
          f"random {out['random_quality']:.3f}")
    print(f"top third of experts supply >= 80% of answers after {out['queries_until_top_third_80pct']} queries "
          f"(share after 500: {out['top_third_share_after_500']:.1%})")
    print(f"colluders moved their favourite's reputation by {out['collusion_shift']:.2%} of scale "
          f"({out['favourite_answers']} answers; time-averaged reputation difference "
          f"{out['collusion_shift_reputation_avg']:.2%})")
    print("selected quality per 100 queries:", out["selected_quality_per_100"])


if __name__ == "__main__":
    main()
