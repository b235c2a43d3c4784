"""How long a new node takes to join: by state sync (a snapshot) against replaying every block, same chain.

A 2-validator localnet makes --blocks blocks while txs fund --accounts new addresses (so there is state to
restore and history to replay). Then a full node joins by state sync and, after it stopped, another replays
from block 1; each is timed from its start until it reaches the height the chain had when it started. They
run one after the other, so neither competes with the other for the 2 cores.

    python bench/join.py [--blocks 600] [--accounts 5000] [--output json]
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llmnet.client.keys import Key, Keyring  # noqa: E402
from llmnet.client.txbuilder import build_tx, send_msg  # noqa: E402
from llmnet.node.config import APP_TOML, load  # noqa: E402
from llmnet.node.localnet import Localnet  # noqa: E402

SNAPSHOT_INTERVAL = 100
BATCH = 10  # CometBFT's default rpc.max_request_batch_size


def fund_accounts(net: Localnet, count: int) -> None:
    """count MsgSends from the faucet to fresh addresses, broadcast in JSON-RPC batches."""
    faucet = Keyring(net.manifest()["keyring"]).load("faucet")
    rpc = f"http://{net.manifest()['nodes'][0]['rpc']}"
    chain_id = net.manifest()["chain_id"]
    txs = [build_tx(faucet, chain_id, seq, [send_msg(faucet.address, Key.generate(f"a{seq}").address, 1_000)],
                    fee=2_000) for seq in range(count)]
    with httpx.Client(timeout=30) as http:
        for i in range(0, len(txs), BATCH):
            http.post(rpc, json=[{"jsonrpc": "2.0", "id": j, "method": "broadcast_tx_sync",
                                  "params": {"tx": base64.b64encode(tx).decode()}}
                                 for j, tx in enumerate(txs[i:i + BATCH])])


def timed_join(net: Localnet, state_sync: bool) -> tuple[float, int, int]:
    """Seconds from start until the new node reaches the chain's height at its start; its earliest block."""
    index = net.add_node(state_sync=state_sync, trust_nodes=(0,), app_settings={"snapshot_interval": 0})
    target = net.height(0) or 0
    started = time.monotonic()
    net.start_node(index)
    while (net.height(index) or 0) < target:
        time.sleep(0.1)
    seconds = time.monotonic() - started
    status = httpx.get(f"http://{net.manifest()['nodes'][index]['rpc']}/status", timeout=5).json()["result"]
    net.stop_node(index)
    return seconds, target, int(status["sync_info"]["earliest_block_height"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, default=600, help="height the chain reaches before anyone joins")
    ap.add_argument("--accounts", type=int, default=5000, help="addresses funded on the way (state size)")
    ap.add_argument("--output", choices=("text", "json"), default="text")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        net = Localnet(Path(tmp) / "net")
        net.create(2, base_port=28600, accounts=1, timeout_commit="100ms", timeout_propose="1s")
        for node in net.manifest()["nodes"]:
            home = Path(node["home"])
            text = load(home).to_toml()
            (home / APP_TOML).write_text(text.replace("snapshot_interval = 100",
                                                      f"snapshot_interval = {SNAPSHOT_INTERVAL}"))
        try:
            net.start()
            fund_accounts(net, args.accounts)
            net.wait_height(args.blocks, timeout=3600)
            sync = timed_join(net, state_sync=True)
            replay = timed_join(net, state_sync=False)
        finally:
            net.stop()
    result = {"blocks_at_join": sync[1], "accounts": args.accounts, "state_sync_seconds": round(sync[0], 1),
              "state_sync_earliest_block": sync[2], "replay_seconds": round(replay[0], 1),
              "replay_blocks": replay[1], "replay_over_state_sync": round(replay[0] / sync[0], 2)}
    if args.output == "json":
        print(json.dumps(result))
    else:
        print(f"state sync: {result['state_sync_seconds']} s to reach height {sync[1]} (restored, first block "
              f"{sync[2]}); replay from 1: {result['replay_seconds']} s to reach {replay[1]}; "
              f"replay / state sync = {result['replay_over_state_sync']}")


if __name__ == "__main__":
    main()
