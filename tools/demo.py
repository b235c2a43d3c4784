"""The main job: a 4-validator chain on loopback with LoRA experts answering real questions.

    python tools/demo.py [--home build/demo] [--questions 3] [--adapters experts/adapters]
                         [--domains-dir data/domains]

It first builds (or reuses) one LoRA adapter per domain, as `make experts` does; when adapters must be
trained, a first look at the network answers with the first one ready while the others wait their turn.
Two trained experts serve every domain's adapter; two weak experts answer with the untrained base model.
Every expert is registered in all three domains, each runs `llmnet-expert run`. Each query draws two
respondents and two scorers; questions come from the dev split (wording the adapters never saw). At the
end: a table of experts (reputation per domain, earnings, slashes), a PNG of reputation over queries, and
everything started is stopped.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from experts.domains import domain_names  # noqa: E402
from llmnet.client.sdk import Client  # noqa: E402
from llmnet.node.localnet import Localnet  # noqa: E402

BIN = ROOT / ".venv" / "bin"
EXPERTS = [("trained-1", True), ("trained-2", True), ("weak-1", False), ("weak-2", False)]
TIMEOUT_COMMIT = "100ms"
PARAMS = {"inference": {"scorers": 2, "commit_blocks": 400, "reveal_blocks": 100},
          "experts": {"unbonding_blocks": 8000}}
"""About 6 blocks a second (bench/latency.py: a run at 100ms settled queries in 4.1-5.3 s and 8 requesters
settled 24-37 queries a minute, depending on the draws; at 200ms, 4.7 s and 24); windows of about a minute
and 15 s, long enough for an expert with 8 queries at once on a shared 2-core machine (a window closes as
soon as every expert has acted, so their length costs nothing while all are honest); unbonding must
outlast a query's life plus the evidence age."""


def say(text: str) -> None:
    print(text, flush=True)


def start_experts(net: Localnet, adapters: Path | None, domains: list[str], home: Path,
                  experts: list[tuple[str, bool]] = EXPERTS, answer_tokens: int = 24,
                  base_port: int = 50151, capacity: int = 0) -> list[subprocess.Popen[bytes]]:
    """Register and run one `llmnet-expert run` per (label, trained) in every domain: a trained one serves
    the adapters under `adapters` (None: every expert is the base model alone), each talks to its own node."""
    manifest = net.manifest()
    node, ring = manifest["nodes"][0]["grpc"], manifest["keyring"]
    procs = []
    for i, (label, trained) in enumerate(experts):
        key = manifest["keys"][1 + i]
        port = base_port + i
        model_args = [a for d in domains for a in ("--adapter", f"{d}={adapters / d}")] \
            if trained and adapters is not None else []
        reg_args = model_args or [a for d in domains for a in ("--domain", d)]
        subprocess.run([BIN / "llmnet-expert", "register", *reg_args, "--endpoint", f"127.0.0.1:{port}",
                        "--bond", "5000000", "--capacity", str(capacity), "--key", key, "--keyring", ring,
                        "--node", node], check=True)
        log = (home / f"expert-{label}.log").open("wb")
        nodes = manifest["nodes"]
        procs.append(subprocess.Popen([BIN / "llmnet-expert", "run", *model_args, "--key", key, "--keyring", ring,
                                       "--node", nodes[i % len(nodes)]["grpc"], "--listen", f"127.0.0.1:{port}",
                                       "--state", str(home / f"expert-{label}.json"),
                                       "--answer-tokens", str(answer_tokens), "--threads", "1"],
                                      stdout=log, stderr=log))
        say(f"expert {label} ({key}) registered; running on 127.0.0.1:{port}, log {log.name}")
    return procs


def wait_ready(home: Path, timeout: float = 300, experts: list[tuple[str, bool]] = EXPERTS) -> None:
    deadline = time.monotonic() + timeout
    for label, _ in experts:
        log = home / f"expert-{label}.log"
        while "websocket_connected" not in log.read_text(errors="replace"):
            if time.monotonic() > deadline:
                raise SystemExit(f"expert {label} did not start; see {log}")
            time.sleep(1)


def ask(net: Localnet, domain: str, question: str, *options: str) -> dict[str, object]:
    """`llmnet ask` from the faucet through node 1, its JSON result (options: more `llmnet ask` flags)."""
    manifest = net.manifest()
    out = subprocess.run([BIN / "llmnet", "ask", question, "--domain", domain, "--from", "faucet", "--keyring",
                          manifest["keyring"], "--node", manifest["nodes"][1]["grpc"], "--output", "json", *options],
                         capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise SystemExit(f"llmnet ask failed: {out.stderr.strip()}")
    result: dict[str, object] = json.loads(out.stdout)
    return result


def table(client: Client, labels: dict[str, str], domains: list[str]) -> list[dict[str, object]]:
    rows = []
    for address, label in labels.items():
        e = client.expert(address)
        reps = {r.domain: r.reputation for r in e.reputation}
        rows.append({"expert": label, "address": address, "earned": e.expert.earned, "slashed": e.expert.slashed,
                     **{d: reps.get(d, 0) for d in domains},
                     "history": [(p.query_id, p.domain, p.reputation) for p in
                                 client.reputation_history(address).points]})
    return rows


def plot_reputation(rows: list[dict[str, object]], domains: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(domains), figsize=(5 * len(domains), 4), sharey=True, squeeze=False)
    for ax, domain in zip(axes[0], domains, strict=True):
        for row in rows:
            history = row["history"]
            assert isinstance(history, list)
            points = [(0, 0.5)] + [(q, r / 1e6) for q, d, r in history if d == domain]
            ax.plot([q for q, _ in points], [r for _, r in points], marker="o", label=str(row["expert"]),
                    linestyle="-" if "trained" in str(row["expert"]) else "--")
        ax.set_title(domain)
        ax.set_xlabel("query id")
    axes[0][0].set_ylabel("reputation")
    axes[0][-1].legend()
    fig.suptitle("LLM-Net demo: reputation after each query that involved the expert")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--home", default="build/demo")
    p.add_argument("--adapters", default="experts/adapters")
    p.add_argument("--domains-dir", default="data/domains",
                   help="domain folders the adapters are built from, as make experts does ('' to use --adapters "
                        "as they are)")
    p.add_argument("--questions", type=int, default=3, help="questions per domain (default 3)")
    p.add_argument("--plot", default="build/demo/reputation.png")
    args = p.parse_args()
    started = time.monotonic()
    home, adapters = ROOT / args.home, ROOT / args.adapters
    if args.domains_dir:
        build_adapters(ROOT / args.domains_dir, adapters, home.with_name(home.name + "-first-look"), args.questions,
                       started)
        domains = domain_names(ROOT / args.domains_dir)  # not an adapter left over from a domain since removed
    else:
        domains = ready_domains(adapters)
    if not domains:
        raise SystemExit(f"no adapters under {adapters}: run make experts")
    run_network(home, adapters, domains, args.questions, started, plot=ROOT / args.plot)


def build_adapters(domains_dir: Path, adapters: Path, first_look_home: Path, questions: int, started: float) -> None:
    """Build (or reuse) every domain's adapter, as make experts does. When some must be trained, the network
    first answers with the adapters already there, training one first if none is, so that a fresh clone's
    first answer comes after one domain's training rather than all of them."""
    build = [str(BIN / "llmnet-expert"), "build-domains", "--domains-dir", str(domains_dir), "--out", str(adapters)]
    left = _build(build, "--stale").splitlines()
    if left:
        ready = [d for d in domain_names(domains_dir) if d not in left]
        if not ready:
            say(f"training {left[0]}'s adapter first ({len(left)} to train): a first look at the network follows")
            _build(build, f"--only={left[0]}")
            ready = [left[0]]
        say(f"\nfirst look: the network answering {', '.join(ready)} while "
            f"{', '.join(d for d in left if d not in ready)} still need training")
        try:
            run_network(first_look_home, adapters, ready, questions, started)
        except (SystemExit, Exception) as err:  # noqa: BLE001 - a first look that fails must not cost the demo
            say(f"the first look failed ({err}); see {first_look_home}")
        say("training the remaining adapters; the whole demo follows\n")
    _build(build)


def _build(command: list[str], *extra: str) -> str:
    """Run build-domains (its progress shows as it goes); its standard output when it is a listing."""
    listing = bool(extra) and extra[0] == "--stale"
    done = subprocess.run([*command, *extra], stdout=subprocess.PIPE if listing else None, text=True)
    if done.returncode != 0:
        raise SystemExit(f"building the adapters failed (exit {done.returncode}): {' '.join([*command, *extra])}")
    return done.stdout or ""


def ready_domains(adapters: Path) -> list[str]:
    return sorted(d.name for d in adapters.iterdir() if (d / "manifest.json").exists()) if adapters.exists() else []


def run_network(home: Path, adapters: Path, domains: list[str], questions: int, started: float,
                plot: Path | None = None) -> None:
    """A localnet and the four experts in `domains`; `questions` dev questions a domain through llmnet ask;
    with `plot`, the experts' table and their reputation plot. Everything started is stopped."""
    shutil.rmtree(home, ignore_errors=True)
    net = Localnet(home, str(ROOT / "bin" / "cometbft"))
    net.create(4, base_port=26600, accounts=6, timeout_commit=TIMEOUT_COMMIT, params=PARAMS)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        net.start()
        say(f"4-validator localnet up (home {home}); watch it live at {net.manifest()['nodes'][0]['explorer']}")
        procs = start_experts(net, adapters, domains, home)
        wait_ready(home)
        say(f"experts ready ({time.monotonic() - started:.0f}s since the start)\n")
        labels = {expert_address(net, i): label for i, (label, _) in enumerate(EXPERTS)}
        for d in domains:
            dev = [json.loads(line) for line in (adapters / "data" / f"{d}.dev.jsonl").read_text().splitlines()]
            for row in dev[:questions]:
                t0 = time.monotonic()
                result = ask(net, d, row["question"])
                answers = result["answers"]
                assert isinstance(answers, list)
                say(f"[{d}] Q: {row['question']}  (expected: {row['answer']})")
                for a in answers:
                    who = labels.get(a["respondent"], a["respondent"])
                    say(f"   {'*' if a['final'] else ' '} {who:<10} score {a['score']:>3} paid {a['paid']:>6}: "
                        f"{str(a['text'])[:90]!r}")
                say(f"   settled in {time.monotonic() - t0:.0f}s at height {result['settled_height']} "
                    f"({time.monotonic() - started:.0f}s since the start)\n")
        if plot is not None:
            with Client(net.manifest()["nodes"][0]["grpc"]) as client:
                rows = table(client, labels, domains)
            say(f"{'expert':<10} {'earned':>8} {'slashed':>8} " + " ".join(f"{d[:18]:>18}" for d in domains))
            for row in rows:
                say(f"{row['expert']!s:<10} {row['earned']:>8} {row['slashed']:>8} "
                    + " ".join(f"{row[d]:>18}" for d in domains))
            plot_reputation(rows, domains, plot)
            say(f"\nreputation plot: {plot.relative_to(ROOT) if plot.is_relative_to(ROOT) else plot}; "
                f"total {time.monotonic() - started:.0f}s")
    finally:
        stop_all(procs)
        net.stop()
        say("stopped the localnet and the experts")


def stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every process, then wait for each (killing one that does not stop within 30 s)."""
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def expert_address(net: Localnet, i: int) -> str:
    from llmnet.client.keys import Keyring

    return str(Keyring(net.manifest()["keyring"]).record(net.manifest()["keys"][1 + i])["address"])


if __name__ == "__main__":
    main()
