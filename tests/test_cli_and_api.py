"""What users meet: the llmnet and llmnetd command lines and the node's gRPC API, on a real chain."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from llmnet.client.keys import Key, Keyring, KeyringError
from llmnet.client.sdk import Client, Sender
from llmnet.client.txbuilder import send_msg
from llmnet.node.localnet import Localnet
from tests.conftest import free_port
from wire.llmnet.query.v1 import query_pb2, query_pb2_grpc
from wire.llmnet.tx.v1 import service_pb2, service_pb2_grpc

pytestmark = pytest.mark.e2e


def cli(*args: str, tool: str = "llmnet", env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    module = "llmnet.client.cli" if tool == "llmnet" else "llmnet.node.cli"
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=120,
                          env=env)


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory, cometbft: str) -> Localnet:
    from tests.conftest import free_base_port

    network = Localnet(tmp_path_factory.mktemp("cli"), cometbft)
    network.create(1, base_port=free_base_port(1), accounts=3, timeout_commit="200ms", timeout_propose="1s")
    network.start()
    yield network  # type: ignore[misc]
    network.stop()


def opts(net: Localnet) -> list[str]:
    m = net.manifest()
    return ["--node", m["nodes"][0]["grpc"], "--keyring", m["keyring"]]


def test_send_and_query_through_the_cli(net: Localnet) -> None:
    recipient = Keyring(net.manifest()["keyring"]).record("user2")["address"]
    before = json.loads(cli(*opts(net), "query", "balance", "user2", "--output", "json").stdout)["amount"]
    out = cli(*opts(net), "tx", "send", "faucet", recipient, "777", "--output", "json", "--chain-id", "llmnet-local")
    assert out.returncode == 0, out.stderr
    sent = json.loads(out.stdout)
    assert sent["code"] == 0 and sent["height"] > 0 and sent["chain_id"] == "llmnet-local"
    after = json.loads(cli(*opts(net), "query", "balance", recipient, "--output", "json").stdout)["amount"]
    assert int(after) == int(before) + 777
    tx = json.loads(cli(*opts(net), "query", "tx", sent["tx_hash"], "--output", "json").stdout)
    assert int(tx["height"]) == sent["height"]
    transfers = [e["attributes"] for e in tx["result"]["events"] if e["type"] == "transfer"]
    assert len(transfers) == 2  # the fee to the fee collector, then the send
    assert {"key": "recipient", "value": recipient} in transfers[1]
    acct = cli(*opts(net), "query", "account", "faucet")
    assert "sequence: 1" in acct.stdout
    status = json.loads(cli(*opts(net), "status", "--output", "json").stdout)
    assert status["chain_id"] == "llmnet-local" and status["height"] >= sent["height"]


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["tx", "send", "faucet", "user1", "99999999999999999"], 1, "has"),
        (["tx", "send", "faucet", "llm1bad", "5"], 4, "neither a valid address"),
        (["tx", "send", "nobody", "user1", "5"], 4, "no key named"),
        (["tx", "send", "faucet", "user1", "0"], 1, "positive"),
        (["query", "account", "llm1qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq"], 4, "neither"),
        (["query", "tx", "abcd"], 1, "64 hex"),
        (["query", "tx", "00" * 32], 1, "not found"),
        (["--chain-id", "llmnet-main", "tx", "send", "faucet", "user1", "5"], 1,
         "is on chain 'llmnet-local', not 'llmnet-main' (--chain-id): nothing was signed"),
    ],
    ids=["insufficient funds", "bad address", "unknown key", "zero amount", "bad checksum", "short hash",
         "unknown tx", "another chain"],
)
def test_cli_errors_are_one_clear_line(net: Localnet, args: list[str], code: int, message: str) -> None:
    out = cli(*opts(net), *args)
    assert out.returncode == code, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llmnet: error:") and message in lines[0], out.stderr
    assert "Traceback" not in out.stderr


def test_unreachable_node_exit_code() -> None:
    out = cli("--node", "127.0.0.1:1", "status")
    assert out.returncode == 3 and "unreachable" in out.stderr


def test_keys_encrypted_with_passphrase(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("correct horse\n")
    ring = ["--keyring", str(tmp_path / "ring"), "--passphrase-file", str(pw)]
    made = json.loads(cli(*ring, "keys", "add", "alice", "--output", "json").stdout)
    assert made["address"].startswith("llm1")
    assert cli(*ring, "keys", "show", "alice", "--address").stdout.strip() == made["address"]
    assert "alice" in cli(*ring, "keys", "list").stdout
    assert cli(*ring, "keys", "add", "alice").returncode == 4  # exists
    stored = (tmp_path / "ring" / "alice.json").read_text()
    assert "private_key_encrypted" in stored and "plaintext" not in stored
    keyring = Keyring(tmp_path / "ring")
    assert keyring.load("alice", "correct horse").address == made["address"]
    with pytest.raises(KeyringError, match="wrong passphrase"):
        keyring.load("alice", "wrong")


def test_help_texts() -> None:
    assert "exit codes" in cli("--help").stdout
    for tool in ("llmnetd",):
        out = cli("--help", tool=tool).stdout
        assert all(word in out for word in ("init", "start", "localnet", "genesis"))
    assert "--validators" in cli("localnet", "start", "--help", tool="llmnetd").stdout


def test_llmnetd_init_and_genesis(tmp_path: Path, cometbft: str) -> None:
    home = tmp_path / "node"
    out = cli("init", "--home", str(home), "--chain-id", "my-chain", "--cometbft", cometbft, tool="llmnetd")
    assert out.returncode == 0, out.stderr
    genesis = json.loads((home / "config" / "genesis.json").read_text())
    assert genesis["chain_id"] == "my-chain" and genesis["app_state"]["bank"]["params"]["denom"] == "ullm"
    assert "proxy_app = \"tcp://127.0.0.1:26658\"" in (home / "config" / "config.toml").read_text()
    add = cli("genesis", "add-account", "llm1notvalid", "5", "--home", str(home), tool="llmnetd")
    assert add.returncode == 1 and "llmnetd: error:" in add.stderr
    again = cli("init", "--home", str(home), "--chain-id", "x", "--cometbft", cometbft, tool="llmnetd")
    assert again.returncode == 1 and "already exists" in again.stderr
    operator = Key.generate("op").address
    assert cli("genesis", "add-account", operator, str(10**8), "--home", str(home), tool="llmnetd").returncode == 0
    bonded = cli("genesis", "add-validator", operator, str(2 * 10**7), "--moniker", "me", "--home", str(home),
                 tool="llmnetd")
    assert bonded.returncode == 0, bonded.stderr
    genesis = json.loads((home / "config" / "genesis.json").read_text())
    own = json.loads((home / "config" / "priv_validator_key.json").read_text())
    assert genesis["app_state"]["validators"]["validators"] == [
        {"operator": operator, "pub_key": own["pub_key"]["value"], "moniker": "me", "bond": str(2 * 10**7)}]
    assert [(v["address"], v["power"]) for v in genesis["validators"]] == [(own["address"], "20")]
    twice = cli("genesis", "add-validator", operator, str(2 * 10**7), "--home", str(home), tool="llmnetd")
    assert twice.returncode == 1 and "already has a genesis validator" in twice.stderr


def test_llmnetd_start_explorer_flags(tmp_path: Path, cometbft: str) -> None:
    """--no-explorer turns the page off; a busy --explorer port is one clear error line, exit 1."""
    import signal
    import socket
    import time

    home = tmp_path / "node"
    assert cli("init", "--home", str(home), "--chain-id", "c", "--cometbft", cometbft, tool="llmnetd").returncode == 0
    base = [sys.executable, "-m", "llmnet.node.cli", "start", "--home", str(home), "--grpc", "127.0.0.1:0",
            "--metrics", "", "--cometbft-rpc", "http://127.0.0.1:1"]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = subprocess.run([*base, "--abci", f"tcp://127.0.0.1:{free_port()}", "--explorer",
                                f"127.0.0.1:{busy.getsockname()[1]}"], capture_output=True, text=True, timeout=60)
    assert taken.returncode == 1 and taken.stderr.count("llmnetd: error:") == 1 and "Traceback" not in taken.stderr
    proc = subprocess.Popen([*base, "--abci", f"tcp://127.0.0.1:{free_port()}", "--no-explorer"],
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        line = ""
        while "llmnetd started" not in line and time.monotonic() < deadline:
            line = proc.stderr.readline() if proc.stderr else ""
        assert "explorer=off" in line, line
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def test_a_validators_operator_earns_the_fees_of_the_blocks_it_signs(net: Localnet) -> None:
    def balance(who: str) -> int:
        return int(json.loads(cli(*opts(net), "query", "balance", who, "--output", "json").stdout)["amount"])

    before, paying = balance("validator0"), balance("faucet")
    sent = json.loads(cli(*opts(net), "tx", "send", "faucet", "user2", "1", "--output", "json").stdout)
    assert sent["code"] == 0
    net.wait_height(sent["height"] + 2, timeout=30)  # shared the block after the one that took the fee
    fee = paying - balance("faucet") - 1
    assert fee > 0 and balance("validator0") - before == fee  # the only validator: all of it


def test_validator_commands_through_the_cli(net: Localnet, tmp_path: Path) -> None:
    listed = json.loads(cli(*opts(net), "query", "validators", "--output", "json").stdout)
    assert [v["moniker"] for v in listed["validators"]] == ["node0"] and int(listed["total_power"]) == 10
    text = cli(*opts(net), "query", "validators").stdout
    assert "node0" in text and "100.0%" in text and "total power 10" in text
    edit = cli(*opts(net), "tx", "edit-validator", "validator0", "--moniker", "renamed", "--details", "hi")
    assert edit.returncode == 0, edit.stderr
    one = json.loads(cli(*opts(net), "query", "validator", "validator0", "--output", "json").stdout)
    assert one["validator"]["moniker"] == "renamed" and one["validator"]["status"] == "VALIDATOR_STATUS_ACTIVE"
    by_hex = cli(*opts(net), "query", "validator", base64_to_hex(one["validator"]["address"]))
    assert by_hex.returncode == 0 and "moniker: renamed" in by_hex.stdout
    import base64

    from nacl.signing import SigningKey

    signer = SigningKey(b"\x05" * 32)
    public = base64.b64encode(bytes(signer.verify_key)).decode()
    key_file = tmp_path / "priv_validator_key.json"
    key_file.write_text(json.dumps({
        "pub_key": {"type": "tendermint/PubKeyEd25519", "value": public},
        "priv_key": {"type": "tendermint/PrivKeyEd25519",
                     "value": base64.b64encode(bytes(signer) + bytes(signer.verify_key)).decode()}}))
    low = cli(*opts(net), "tx", "create-validator", "user1", "--pubkey", str(key_file), "--moniker", "x",
              "--bond", "5")
    assert low.returncode == 1 and "below the minimum" in low.stderr
    bad = cli(*opts(net), "tx", "create-validator", "user1", "--pubkey", "not-a-key", "--moniker", "x",
              "--bond", "5")
    assert bad.returncode == 1 and "--pubkey" in bad.stderr
    unproven = cli(*opts(net), "tx", "create-validator", "user1", "--pubkey", public, "--moniker", "x",
                   "--bond", "10000000")
    assert unproven.returncode == 1 and "--key-proof" in unproven.stderr
    forged = cli(*opts(net), "tx", "create-validator", "user1", "--pubkey", public, "--moniker", "x",
                 "--bond", "10000000", "--key-proof", base64.b64encode(b"\x01" * 64).decode())
    assert forged.returncode == 1 and "key_proof" in forged.stderr
    thief = cli(*opts(net), "tx", "unbond-validator", "user1")
    assert thief.returncode == 1 and "operates no validator" in thief.stderr
    unknown = cli(*opts(net), "query", "validator", "user2")
    assert unknown.returncode == 1 and "operates no validator" in unknown.stderr


def base64_to_hex(text: str) -> str:
    import base64

    return base64.b64decode(text).hex()


def test_grpc_health_reflection_and_error_mapping(net: Localnet) -> None:
    with grpc.insecure_channel(net.manifest()["nodes"][0]["grpc"]) as ch:
        health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""))
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(ch)
        reply = next(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        names = {s.name for s in reply.list_services_response.service}
        assert {"llmnet.tx.v1.TxService", "llmnet.query.v1.QueryService", "llmnet.node.v1.NodeService"} <= names
        query = query_pb2_grpc.QueryServiceStub(ch)
        with pytest.raises(grpc.RpcError) as bad:
            query.Balance(query_pb2.BalanceRequest(address="nonsense"))
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        fresh = Keyring(net.manifest()["keyring"]).record("user2")["address"]
        unsigned = query.Account(query_pb2.AccountRequest(address=fresh))  # funded, never signed: as in Cosmos
        assert unsigned.account.address == fresh and unsigned.account.sequence == 0
        assert not unsigned.account.public_key
        with pytest.raises(grpc.RpcError) as missing:
            query.Account(query_pb2.AccountRequest(address=Key.generate("nobody").address))  # holds nothing
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as unknown_query:
            query.QueryStatus(query_pb2.QueryStatusRequest(query_id=999_999))
        assert unknown_query.value.code() == grpc.StatusCode.NOT_FOUND  # like an unknown expert
        txs = service_pb2_grpc.TxServiceStub(ch)
        with pytest.raises(grpc.RpcError) as empty:
            txs.BroadcastTx(service_pb2.BroadcastTxRequest(tx=b""))
        assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        sim = txs.Simulate(service_pb2.SimulateRequest(tx=b"junk"))
        assert sim.result.code == 2 and sim.result.codespace == "tx"
        for path in ("/llmnet.tx.v1.TxService/BroadcastTx", "/llmnet.tx.v1.TxService/GetTx",
                     "/llmnet.node.v1.NodeService/Status"):  # bytes that are no protobuf: a clear refusal
            with pytest.raises(grpc.RpcError) as garbled:
                ch.unary_unary(path)(b"\xff\xff")
            assert garbled.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "does not decode" in \
                garbled.value.details()

    # a valid tx simulates with its gas and events, and the simulation keeps nothing
    key = Keyring(net.manifest()["keyring"]).load("user1")
    with Client(net.manifest()["nodes"][0]["grpc"]) as client:
        sender = Sender(client, key)
        raw = sender.sign([send_msg(key.address, key.address, 1)], client.sequence(key.address))
        result = client.simulate(raw).result
        assert result.code == 0 and result.gas_used > 0
        assert any(e.type == "transfer" for e in result.events)
        assert client.broadcast(raw).check.code == 0  # same sequence still valid


def test_register_expert_and_protocol_queries_through_the_cli(net: Localnet) -> None:
    reg = cli(*opts(net), "tx", "register-expert", "user1", "--domains", "kestrel-lang,orbital-logistics",
              "--endpoint", "127.0.0.1:7001", "--base-model", "smollm2-135m-instruct",
              "--adapter-sha256", "0f" * 32, "--bond", "2000000", "--output", "json")
    assert reg.returncode == 0, reg.stderr
    assert json.loads(reg.stdout)["code"] == 0
    expert = json.loads(cli(*opts(net), "query", "expert", "user1", "--output", "json").stdout)
    assert expert["expert"]["status"] == "EXPERT_STATUS_ACTIVE" and expert["expert"]["bond"] == "2000000"
    assert {r["domain"] for r in expert["reputation"]} == {"kestrel-lang", "orbital-logistics"}
    ranked = cli(*opts(net), "query", "experts", "kestrel-lang")
    assert "EXPERT_STATUS_ACTIVE" in ranked.stdout
    again = cli(*opts(net), "tx", "register-expert", "user1", "--domains", "kestrel-lang", "--endpoint", "h:1",
                "--base-model", "m", "--adapter-sha256", "0f" * 32, "--bond", "2000000")
    assert again.returncode == 1 and "already registered" in (again.stdout + again.stderr)
    missing = cli(*opts(net), "query", "status", "999")
    assert missing.returncode == 1 and "no query 999" in missing.stderr
    jail = cli(*opts(net), "tx", "unjail", "user1")
    assert jail.returncode == 1 and "not jailed" in (jail.stdout + jail.stderr)


def _rpc(net: Localnet, method: str, **params: str) -> dict:  # type: ignore[type-arg]
    url = f"http://{net.manifest()['nodes'][0]['rpc']}/{method}"
    return httpx.get(url, params=params, timeout=10).json()


def test_every_message_is_found_by_tx_search_over_cometbft_rpc(net: Localnet) -> None:
    """Cosmos conventions where users look for them: `message.sender`, `message.action` and `message.module`
    find any tx (bank, experts), and the fee carries its denom."""
    ring = Keyring(net.manifest()["keyring"])
    sender = ring.record("user2")["address"]
    sent = json.loads(cli(*opts(net), "tx", "send", "user2", sender, "5", "--output", "json").stdout)
    reg = cli(*opts(net), "tx", "register-expert", "user2", "--domains", "kestrel-lang", "--endpoint", "h:2",
              "--base-model", "m", "--adapter-sha256", "0e" * 32, "--bond", "2000000", "--output", "json")
    assert reg.returncode == 0, reg.stderr
    found = _rpc(net, "tx_search", query=f"\"message.sender='{sender}'\"", per_page="100")["result"]
    by_hash = {t["hash"]: t for t in found["txs"]}
    assert sent["tx_hash"].upper() in by_hash and json.loads(reg.stdout)["tx_hash"].upper() in by_hash
    for tx in by_hash.values():
        events = {(e["type"], a["key"]): a["value"] for e in tx["tx_result"]["events"] for a in e["attributes"]}
        assert events[("message", "sender")] == sender
        assert events[("message", "action")].startswith("/llmnet.") and events[("message", "module")] in (
            "bank", "experts")
        assert events[("tx", "fee")].endswith("ullm") and events[("tx", "fee")][:-4].isdigit()
    actions = _rpc(net, "tx_search", query="\"message.action='/llmnet.experts.v1.MsgRegisterExpert'\"")
    assert int(actions["result"]["total_count"]) >= 1
    by_module = _rpc(net, "tx_search", query=f"\"message.module='bank' AND message.sender='{sender}'\"")
    assert [t["hash"] for t in by_module["result"]["txs"]] == [sent["tx_hash"].upper()]


def test_an_empty_tx_is_a_decode_error(net: Localnet) -> None:
    reply = _rpc(net, "broadcast_tx_sync", tx="0x")
    result = reply.get("result") or {}
    assert (result.get("code"), result.get("codespace")) == (2, "tx"), reply
    assert "empty tx" in result.get("log", "")


def test_prometheus_series_stay_bounded_and_carry_the_status(net: Localnet) -> None:
    node = net.manifest()["nodes"][0]
    with grpc.insecure_channel(node["grpc"]) as ch:
        for n in range(20):  # invented method names must not become series of their own
            with pytest.raises(grpc.RpcError) as err:
                ch.unary_unary(f"/evil.Service/Method{n}")(b"")
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        query = query_pb2_grpc.QueryServiceStub(ch)
        with pytest.raises(grpc.RpcError):
            query.Account(query_pb2.AccountRequest(address=Key.generate("nobody2").address))
        query.Supply(query_pb2.SupplyRequest())
    text = httpx.get(f"http://{node['metrics']}/metrics", timeout=10).text
    samples = [s for f in text_string_to_metric_families(text) if f.name == "llmnet_grpc_requests"
               for s in f.samples if s.name.endswith("_total")]
    methods = {s.labels["method"] for s in samples}
    assert "unknown" in methods and not any("evil" in m for m in methods)
    assert all(m == "unknown" or m.startswith(("/llmnet.", "/grpc.")) for m in methods)
    codes = {(s.labels["method"], s.labels["code"]) for s in samples}
    assert ("unknown", "UNIMPLEMENTED") in codes
    assert ("/llmnet.query.v1.QueryService/Account", "NOT_FOUND") in codes
    assert ("/llmnet.query.v1.QueryService/Supply", "OK") in codes
    comet = httpx.get(f"http://{node['cometbft_metrics']}/metrics", timeout=10).text  # CometBFT's own
    heights = [s.value for f in text_string_to_metric_families(comet) if f.name == "cometbft_consensus_height"
               for s in f.samples]
    assert heights and heights[0] > 1
