"""llmnetd: run an LLM-Net node.

Exit codes: 0 success; 1 the node stopped on a fatal error or a command failed; 2 bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path

from llmnet.node import genesis
from llmnet.node.config import ConfigError, NodeConfig, find_cometbft, load
from llmnet.node.init import init_home
from llmnet.node.join import init_join_by_hand, init_join_home, parse_rpc_urls, plan_join
from llmnet.node.localnet import Localnet, LocalnetError
from llmnet.process import raise_open_files_limit

DEFAULT_HOME = "~/.llmnet/node"


def _add_init(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    init = sub.add_parser(
        "init", help="create a node home: CometBFT files, genesis app_state, app.toml",
        description="Create a node home for a new chain, or with --join for a full node joining a running chain "
                    "by state sync (it restores a recent snapshot from peers instead of replaying every block).")
    init.add_argument("--home", default=DEFAULT_HOME, help=f"node home directory (default {DEFAULT_HOME})")
    init.add_argument("--chain-id", help="chain id written into genesis.json (required without --join)")
    init.add_argument("--moniker", default="llmnet-node", help="node name shown to peers")
    init.add_argument("--cometbft", help="path to the cometbft binary (default: ./bin/cometbft, then PATH)")
    init.add_argument("--join", action="store_true",
                      help="a full node that joins a running chain by state sync; with --trust-rpc everything is "
                           "filled in, without it the config.toml keys left to fill are printed")
    init.add_argument("--trust-rpc", metavar="URL[,URL...]",
                      help="with --join: CometBFT RPC servers you trust, e.g. http://host:26657; the genesis, a "
                           "recent block's height and hash, and the peers come from them")
    init.add_argument("--peers", metavar="ID@HOST:PORT[,...]",
                      help="with --join: p2p.persistent_peers to use instead of the --trust-rpc nodes themselves")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="llmnetd",
        description="Run an LLM-Net node: the Python ABCI app behind CometBFT.",
        epilog="Exit codes: 0 ok, 1 failure (including a fatal app error), 2 bad usage.",
    )
    sub = p.add_subparsers(dest="cmd", required=True)

    _add_init(sub)

    start = sub.add_parser(
        "start", help="run the app: ABCI server, gRPC API and metrics (run `cometbft start` beside it)",
        description="Run the app process. CometBFT runs as its own process "
                    "(`cometbft start --home HOME`) and connects to the ABCI address.")
    start.add_argument("--home", default=DEFAULT_HOME, help=f"node home directory (default {DEFAULT_HOME})")
    start.add_argument("--abci", dest="abci_address", help="ABCI listen address, tcp://host:port or unix://path")
    start.add_argument("--grpc", dest="grpc_address", help="gRPC API listen address host:port (default 127.0.0.1:9090)")
    start.add_argument("--metrics", dest="metrics_address", help="Prometheus listen address host:port ('' = off)")
    start.add_argument("--explorer", dest="explorer_address",
                       help="web explorer listen address host:port (default 127.0.0.1:26680)")
    start.add_argument("--no-explorer", action="store_true", help="do not serve the web explorer")
    start.add_argument("--cometbft-rpc", dest="cometbft_rpc", help="CometBFT RPC URL the API forwards to")
    start.add_argument("--log-level", dest="log_level", help="debug, info, warning or error")

    gen = sub.add_parser("genesis", help="edit genesis.json before the chain starts")
    gsub = gen.add_subparsers(dest="gcmd", required=True)
    add = gsub.add_parser("add-account", help="fund an address in genesis")
    add.add_argument("address", help="bech32 address (llm1...)")
    add.add_argument("amount", type=int, help="amount in the native denom's smallest unit")
    add.add_argument("--home", default=DEFAULT_HOME)
    val = gsub.add_parser("add-validator", help="bond a validator from the first block (fund its operator first)",
                          description="Adds a validator to genesis: its operator's genesis balance pays --bond, and "
                                      "genesis.json's validator list is rewritten to the bonded set, which the app "
                                      "hands CometBFT at InitChain. Collect every validator's entry the same way.")
    val.add_argument("operator", help="the operator's bech32 address (llm1...), funded with add-account")
    val.add_argument("bond", type=int, help="tokens to bond (at least validators.params.min_bond)")
    val.add_argument("--pubkey", help="base64 ed25519 consensus key (default: this home's priv_validator_key.json)")
    val.add_argument("--moniker", default="llmnet-node", help="the validator's public name")
    val.add_argument("--home", default=DEFAULT_HOME)

    ln = sub.add_parser("localnet", help="run an N-validator network on loopback (development and tests)")
    lsub = ln.add_subparsers(dest="lcmd", required=True)
    ls = lsub.add_parser("start", help="create the network if DIR has none, then start every node")
    ls.add_argument("--home", required=True, help="directory for the network's nodes, logs and keyring")
    ls.add_argument("--validators", type=int, default=4, help="number of validators (default 4)")
    ls.add_argument("--chain-id", default="llmnet-local")
    ls.add_argument("--base-port", type=int, default=26600, help="node i uses base+10i .. base+10i+4")
    ls.add_argument("--accounts", type=int, default=10, help="funded test keys to create (default 10)")
    ls.add_argument("--timeout-commit", default="500ms", help="CometBFT consensus.timeout_commit")
    ls.add_argument("--empty-blocks-interval", default="", metavar="DURATION",
                    help="make blocks only for txs, and an empty one at least this often (e.g. 1s): an idle network "
                         "uses no CPU, but windows counted in blocks last longer in seconds (default: a block "
                         "every timeout_commit)")
    ls.add_argument("--cometbft", help="path to the cometbft binary")
    for name, text in (("stop", "stop every process of the network"), ("status", "show each node's state")):
        sp = lsub.add_parser(name, help=text)
        sp.add_argument("--home", required=True)
        sp.add_argument("--output", choices=("text", "json"), default="text")
    return p


def _localnet(args: argparse.Namespace) -> int:
    net = Localnet(args.home, getattr(args, "cometbft", None))
    if args.lcmd == "start":
        if not net.exists():
            net.create(args.validators, args.chain_id, args.base_port, args.accounts, args.timeout_commit,
                       empty_blocks_interval=args.empty_blocks_interval)
        net.start()
        print(f"localnet running: {net.home / 'localnet.json'}")
        for row in net.status():
            print(f"  node{row['node']}: rpc {row['rpc']} grpc {row['grpc']} explorer {row['explorer']} "
                  f"height {row['height']}")
        return 0
    if args.lcmd == "stop":
        net.stop()
        print("localnet stopped" if args.output == "text" else json.dumps({"stopped": True}))
        return 0
    rows = net.status()
    if args.output == "json":
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            state = "up" if row["app_running"] and row["cometbft_running"] else "down"
            print(f"node{row['node']}: {state:4} height {row['height']} app_hash {row['app_hash']}")
    return 0


def _init_join(args: argparse.Namespace) -> int:
    home = Path(args.home).expanduser().resolve()
    cometbft = find_cometbft(args.cometbft)
    if not args.trust_rpc:
        print(init_join_by_hand(home, cometbft, args.chain_id or "replace-with-the-chains-genesis", args.moniker))
        return 0
    peers = [p.strip() for p in args.peers.split(",") if p.strip()] if args.peers else None
    plan = plan_join(parse_rpc_urls(args.trust_rpc), peers)
    if args.chain_id and args.chain_id != plan.chain_id:
        raise ConfigError(f"--chain-id {args.chain_id} but the --trust-rpc servers are on {plan.chain_id}")
    init_join_home(home, cometbft, plan, moniker=args.moniker)
    print(f"initialized {home} to join {plan.chain_id} by state sync: trusting block {plan.trust_height} "
          f"({plan.trust_hash}) from {', '.join(dict.fromkeys(plan.rpc_servers))}; peers {', '.join(plan.peers)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.cmd == "init" and not args.join and (args.trust_rpc or args.peers or not args.chain_id):
        parser.error("init needs --chain-id (--trust-rpc and --peers go with --join)")
    try:
        if args.cmd == "init" and args.join:
            return _init_join(args)
        if args.cmd == "init":
            cfg = init_home(Path(args.home).expanduser().resolve(), args.chain_id, find_cometbft(args.cometbft),
                            moniker=args.moniker)
            print(f"initialized {cfg.home} for chain {args.chain_id}")
            return 0
        if args.cmd == "start":
            cfg = load(args.home, abci_address=args.abci_address, grpc_address=args.grpc_address,
                       metrics_address=args.metrics_address, cometbft_rpc=args.cometbft_rpc,
                       explorer_address="" if args.no_explorer else args.explorer_address,
                       log_level=args.log_level)
            logging.basicConfig(level=cfg.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
            raise_open_files_limit()
            return asyncio.run(_run(cfg))
        if args.cmd == "genesis":
            home = Path(args.home).expanduser().resolve()
            doc = genesis.read(home)
            if args.gcmd == "add-validator":
                own = home / "config" / "priv_validator_key.json"
                key = args.pubkey or json.loads(own.read_text())["pub_key"]["value"]
                genesis.add_validator(doc, args.operator, key, args.moniker, args.bond)
                genesis.write(home, doc)
                print(f"bonded {args.bond} of {args.operator} behind {key} in {home / genesis.GENESIS}")
                return 0
            genesis.add_balance(doc, args.address, args.amount)
            genesis.write(home, doc)
            print(f"funded {args.address} with {args.amount} in {home / genesis.GENESIS}")
            return 0
        return _localnet(args)
    except (ConfigError, LocalnetError, ValueError, OSError) as exc:  # OSError: a port in use, a missing file
        print(f"llmnetd: error: {exc}", file=sys.stderr)
        return 1


async def _run(cfg: NodeConfig) -> int:
    from llmnet.node.run import run  # noqa: PLC0415 - keeps `llmnetd --help` fast

    return await run(cfg)


if __name__ == "__main__":
    sys.exit(main())
