#!/usr/bin/env bash
# The main job as it stands: a 4-validator localnet on loopback, a signed transfer through the node's
# gRPC API, the result read back, and everything stopped again.
set -euo pipefail
cd "$(dirname "$0")/.."
HOME_DIR=${DEMO_HOME:-build/demo}
BIN=.venv/bin
rm -rf "$HOME_DIR"
trap '$BIN/llmnetd localnet stop --home "$HOME_DIR" >/dev/null' EXIT
$BIN/llmnetd localnet start --home "$HOME_DIR" --validators 4
NODE=$(python3 -c "import json;print(json.load(open('$HOME_DIR/localnet.json'))['nodes'][1]['grpc'])")
CLI=("$BIN/llmnet" --node "$NODE" --keyring "$HOME_DIR/keyring")
echo; echo "== status"; "${CLI[@]}" status
echo; echo "== user1 before"; "${CLI[@]}" query balance user1
echo; echo "== faucet sends 1000ullm to user1 through node1's gRPC API"; "${CLI[@]}" tx send faucet user1 1000
echo; echo "== user1 after"; "${CLI[@]}" query balance user1
echo; echo "== every validator's view"; $BIN/llmnetd localnet status --home "$HOME_DIR"
