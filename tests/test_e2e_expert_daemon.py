"""`llmnet-expert train | register | run` against a real 2-validator chain (tiny models, real processes).

Three daemons on one domain: the query draws two respondents and one scorer. One respondent is
SIGKILLed right after it broadcast its round-1 commitment and restarted on the same state file: it
must reveal exactly what it committed, and nobody may double-submit. While that expert is down the
query is open, which is when the other respondent's gRPC access check is exercised against the chain.

The daemons are given both nodes, node 1 first: when node 1 is SIGKILLed they move to node 0, and so
does an `llmnet ask` given both. Each validator holds half the power, so the chain halts while either
is down and resumes when it is back: the clients ride the restart out, they do not need it to go on.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from abci_app.x.inference.types import answer_commitment
from experts.tiny import make_tiny_model
from llmnet.client import protocol
from llmnet.client.ask import drawn, submit
from llmnet.client.expert_api import sign_access
from llmnet.client.sdk import Client, ClientError
from llmnet.node.localnet import Localnet
from tests.conftest import free_port
from tests.e2e import keys
from wire.llmnet.expert.v1 import expert_pb2 as pb
from wire.llmnet.expert.v1 import expert_pb2_grpc
from wire.llmnet.inference.v1 import inference_pb2 as inf

pytestmark = pytest.mark.e2e
DOMAIN = "kestrel-lang"
EXPERT = [sys.executable, "-m", "experts.cli"]


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory, cometbft: str) -> Iterator[Localnet]:
    from tests.conftest import free_base_port

    network = Localnet(tmp_path_factory.mktemp("daemon"), cometbft)
    network.create(2, base_port=free_base_port(2), accounts=5, timeout_commit="200ms", timeout_propose="1s",
                   params={"inference": {"scorers": 1, "commit_blocks": 150, "reveal_blocks": 150},
                           "experts": {"unbonding_blocks": 2000}})
    try:
        network.start()
        yield network
    finally:
        network.stop()


class Daemon:
    def __init__(self, name: str, argv: list[str], log: Path) -> None:
        self.name, self.argv, self.log = name, argv, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=out)

    def events(self) -> list[dict[str, object]]:
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        return [json.loads(line) for line in lines if line.startswith("{")]

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


def _wait(what: str, check, timeout: float = 180) -> object:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


@dataclass
class Experts:
    net: Localnet
    node: str
    """Node 0's gRPC address, where the tests look: the daemons try node 1 first."""
    daemons: list[Daemon]
    ports: list[int]
    tmp: Path


@pytest.fixture(scope="module")
def experts(net: Localnet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Experts]:
    """train a tiny adapter, register three experts with it, and start their `run` daemons."""
    tmp_path = tmp_path_factory.mktemp("experts")
    manifest = net.manifest()
    node = manifest["nodes"][0]["grpc"]
    ring = manifest["keyring"]
    model = make_tiny_model(tmp_path / "tiny")
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is item {i}?", "answer": f"thing {i}"}) + "\n"
                            for i in range(12)))
    adapter = tmp_path / "adapter"
    trained = subprocess.run([*EXPERT, "train", "--base", str(model), "--data", str(data), "--out", str(adapter),
                              "--epochs", "1", "--rank", "2"], capture_output=True, text=True, timeout=300)
    assert trained.returncode == 0, trained.stderr
    names = manifest["keys"][1:4]
    ports = [free_port() for _ in names]
    for name, port in zip(names, ports, strict=True):
        reg = subprocess.run([*EXPERT, "register", "--adapter", f"{DOMAIN}={adapter}", "--endpoint",
                              f"127.0.0.1:{port}", "--bond", "5000000", "--key", name, "--keyring", ring,
                              "--node", node], capture_output=True, text=True, timeout=120)
        assert reg.returncode == 0 and "registered" in reg.stdout, reg.stderr
    daemons = [Daemon(name, [*EXPERT, "run", "--base", str(model), "--adapter", f"{DOMAIN}={adapter}",
                             "--listen", f"127.0.0.1:{port}", "--key", name, "--keyring", ring,
                             "--node", manifest["nodes"][1]["grpc"], "--node", node,
                             "--state", str(tmp_path / f"{name}.json"), "--answer-tokens", "12"],
                      tmp_path / f"{name}.log") for name, port in zip(names, ports, strict=True)]
    for d in daemons:
        d.start()
    try:
        for d in daemons:
            _wait(f"{d.name} to watch blocks", lambda d=d: any(e["event"] == "websocket_connected"
                                                               for e in d.events()), timeout=120)
        yield Experts(net, node, daemons, ports, tmp_path)
    finally:
        codes = [d.stop() for d in daemons]
    assert codes == [0, 0, 0]  # SIGTERM stops every daemon cleanly


def test_llmnet_ask_follows_a_query_to_its_receipt(experts: Experts) -> None:
    manifest = experts.net.manifest()
    ask = subprocess.run([sys.executable, "-m", "llmnet.client.cli", "ask", "Who created Kestrel?", "--domain",
                          "auto", "--from", manifest["keys"][0], "--keyring", manifest["keyring"], "--node",
                          experts.node, "--output", "json"], capture_output=True, text=True, timeout=300)
    assert ask.returncode == 0, ask.stderr
    result = json.loads(ask.stdout)
    assert result["domain"] == DOMAIN and len(result["domain_similarities"]) == 3  # picked among the chain's domains
    assert f"domain auto: {DOMAIN}" in ask.stderr
    assert result["final_answer"] and len(result["answers"]) == 2
    assert sum(a["final"] for a in result["answers"]) == 1
    assert "respondents" in ask.stderr and "settled" in ask.stderr  # progress lines, not a TTY
    with Client(experts.node) as client:
        receipt = client.receipt(result["query_id"]).receipt
    assert receipt.final_answer == result["final_answer"]
    assert sum(p["amount"] for p in result["payouts"]) <= 100_000
    recent = subprocess.run([sys.executable, "-m", "llmnet.client.cli", "query", "recent", "--limit", "5", "--node",
                             experts.node, "--output", "json"], capture_output=True, text=True, timeout=60)
    assert recent.returncode == 0, recent.stderr
    newest = json.loads(recent.stdout)["queries"][0]
    assert int(newest["id"]) == result["query_id"] and newest["phase"] == "PHASE_SETTLED"
    nobody = subprocess.run([sys.executable, "-m", "llmnet.client.cli", "ask", "Q?", "--domain", "no-such-domain",
                             "--from", manifest["keys"][0], "--keyring", manifest["keyring"], "--node",
                             experts.node], capture_output=True, text=True, timeout=120)
    assert nobody.returncode == 1 and nobody.stderr.startswith("llmnet: error:") and len(
        nobody.stderr.strip().splitlines()) == 1


def test_ask_shows_each_drawn_experts_answer_first_and_the_settled_one_after(experts: Experts) -> None:
    """The provisional answers reach the user while the chain is still working on the query: each is printed
    before the settled answer, at a height below the settlement's, and is the very answer its expert
    committed in round 1 (signed by it and checked against its on-chain key on the way)."""
    manifest = experts.net.manifest()
    ask = subprocess.Popen([sys.executable, "-m", "llmnet.client.cli", "ask", "What is item 7?", "--domain", DOMAIN,
                            "--from", manifest["keys"][0], "--keyring", manifest["keyring"], "--node", experts.node],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert ask.stdout is not None and ask.stderr is not None
    provisional: dict[str, tuple[str, int]] = {}
    with Client(experts.node) as client:
        lines = []
        for line in ask.stdout:  # read as ask prints, to know the chain's height at that moment
            lines.append(line)
            if line.startswith("provisional answer from "):
                expert, text = line[len("provisional answer from "):].split(" ", 1)[0], line.split("): ", 1)[1]
                provisional[expert] = (text.strip(), client.status().height)
        assert ask.wait(timeout=240) == 0, ask.stderr.read()
        answer_at = next(i for i, line in enumerate(lines) if line.startswith("answer: "))
        assert all(i < answer_at for i, line in enumerate(lines) if line.startswith("provisional"))
        query_id = int(next(line for line in lines if line.startswith("query ")).split()[1])
        status, receipt = client.query_status(query_id), client.receipt(query_id).receipt
    assert sorted(provisional) == sorted(receipt.respondents)  # one from each drawn expert
    committed = {a.respondent: a.answer for a in status.answers if a.round == 1}
    for expert, (text, height) in provisional.items():
        assert text == repr(committed[expert])  # what it then committed in round 1, not some other generation
        assert height < receipt.settled_height  # shown before the query settled


def _gateway(experts: Experts, key: str, port: int) -> subprocess.Popen[str]:
    manifest = experts.net.manifest()
    proc = subprocess.Popen([sys.executable, "-m", "llmnet.client.cli", "gateway", "--listen", f"127.0.0.1:{port}",
                             "--from", key, "--keyring", manifest["keyring"], "--node", experts.node,
                             "--max-fee", "1000000", "--rounds", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    line = proc.stderr.readline()  # the gateway says where it serves once it does
    assert f"serving http://127.0.0.1:{port}/v1" in line, line + proc.stderr.read()
    return proc


def test_the_openai_client_asks_through_the_gateway(experts: Experts) -> None:
    """`llmnet gateway` with the real `openai` package: models, a completion, a stream, and errors."""
    import openai

    manifest = experts.net.manifest()
    port = free_port()
    gateway = _gateway(experts, manifest["keys"][4], port)
    try:
        api = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="local", max_retries=0, timeout=300)
        with Client(experts.node) as client:
            domains = sorted(client.params().experts.domains)
            assert [m.id for m in api.models.list()] == ["auto", *domains]
            reply = api.chat.completions.create(model=DOMAIN, messages=[{"role": "user", "content": "What is item 3?"}])
            ext = reply.model_extra["llmnet"]  # type: ignore[index]
            receipt = client.receipt(ext["query_id"]).receipt
            assert reply.choices[0].message.content == receipt.final_answer and receipt.final_answer
            assert reply.choices[0].finish_reason == "stop" and reply.model == DOMAIN
            assert ext["scores"] == list(receipt.scores) and ext["settled_height"] == receipt.settled_height
            stream = api.chat.completions.create(model=DOMAIN, stream=True, extra_body={"llmnet": {"k": 2}},
                                                 messages=[{"role": "user", "content": "What is item 5?"}])
            chunks = list(stream)
            extras = [c.model_extra.get("llmnet") or {} for c in chunks]  # type: ignore[union-attr]
            text = "".join(c.choices[0].delta.content or "" for c in chunks)
            query_id = extras[0]["query_id"]
            assert text == client.receipt(query_id).receipt.final_answer
            assert chunks[-1].choices[0].finish_reason == "stop" and extras[-1]["query_id"] == query_id
            progress = [e["progress"] for e in extras if "progress" in e]
            assert len(progress) >= 3 and progress[-1].endswith("settled")  # submitted, phases, settled
            # the drawn experts' round-1 answers streamed first, in the extension (content is the settled answer)
            early = [e["provisional"] for e in extras if "provisional" in e]
            whole = {p["expert"]: p["text"] for p in early if "text" in p}
            assert sorted(whole) == sorted(client.receipt(query_id).receipt.respondents)
            for expert, answer in whole.items():
                streamed = "".join(p["text_delta"] for p in early if p.get("expert") == expert and "text_delta" in p)
                assert (streamed.strip() or "(no answer)") == answer  # what the daemon commits for an empty one
            last_provisional = max(i for i, e in enumerate(extras) if "provisional" in e)
            assert last_provisional < next(i for i, c in enumerate(chunks) if c.choices[0].delta.content)
            with pytest.raises(openai.NotFoundError):
                api.chat.completions.create(model="no-such-domain", messages=[{"role": "user", "content": "Q?"}])
            with pytest.raises(openai.BadRequestError):
                api.chat.completions.create(model=DOMAIN, messages=[], extra_body={"llmnet": {"k": 0}})
    finally:
        gateway.terminate()
        assert gateway.wait(30) == 0


def test_a_gateway_whose_key_cannot_pay_answers_402(experts: Experts) -> None:
    import openai

    from llmnet.client.keys import Key, Keyring

    ring = Keyring(experts.net.manifest()["keyring"])
    if "pauper" not in ring.names():
        ring.add(Key.generate("pauper"), passphrase=None, unsafe_plaintext=True)
    port = free_port()
    gateway = _gateway(experts, "pauper", port)
    try:
        api = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="local", max_retries=0)
        with pytest.raises(openai.APIStatusError) as err:
            api.chat.completions.create(model=DOMAIN, messages=[{"role": "user", "content": "What is item 1?"}])
        assert err.value.status_code == 402 and "cannot pay" in str(err.value)
    finally:
        gateway.terminate()
        gateway.wait(30)


def test_daemons_answer_score_and_survive_a_kill(experts: Experts) -> None:
    net, daemons, ports, tmp_path = experts.net, experts.daemons, experts.ports, experts.tmp
    node = experts.node
    requester, *expert_keys = keys(net)[:4]
    client = Client(node)
    try:
        query_id = submit(client, requester, DOMAIN, "Who created Kestrel?", 1_000_000, 2, 2)  # raises if rejected
        query = drawn(client, query_id).query
        by_address = dict(zip([k.address for k in expert_keys], daemons, strict=True))
        victim, other = by_address[query.respondents[0]], by_address[query.respondents[1]]
        scorer = by_address[query.scorers[0]]

        step = f"commit:{query_id}:1"
        _wait("the victim's round-1 commit", lambda: any(e.get("step") == step for e in victim.events()))
        victim.kill()

        # the query is open now (it waits for the victim's reveal): access is checked against the chain
        other_port = ports[daemons.index(other)]
        other_address = query.respondents[1]
        with grpc.insecure_channel(f"127.0.0.1:{other_port}") as ch:
            stub = expert_pb2_grpc.ExpertServiceStub(ch)
            msgs = [pb.ChatMessage(role="user", content="Who created Kestrel?")]
            chain_id = client.status().chain_id
            req = pb.GenerateRequest(messages=msgs, query_id=query_id, access_nonce=1,
                                     sampling=pb.Sampling(max_new_tokens=5))
            ok = stub.Generate(sign_access(requester, chain_id, req, other_address))
            assert ok.expert == other_address and ok.signature
            stranger = expert_keys[0]
            with pytest.raises(grpc.RpcError) as denied:
                stub.Generate(sign_access(stranger, chain_id, req, other_address))
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED

        assert client.query_status(query_id).query.phase != inf.PHASE_SETTLED
        victim.start()  # same state file: it must reveal what it committed
        _wait("settlement", lambda: client.query_status(query_id).query.phase == inf.PHASE_SETTLED, timeout=240)

        status = client.query_status(query_id)
        receipt = client.receipt(query_id).receipt
        assert not receipt.missed and receipt.final_answer
        assert len([a for a in status.answers if a.revealed]) == 4  # 2 respondents x 2 rounds
        victim_round1 = next(a for a in status.answers if a.respondent == query.respondents[0] and a.round == 1)
        victim_key = expert_keys[daemons.index(victim)]
        assert victim_round1.revealed and victim_round1.commitment == answer_commitment(
            client.status().chain_id, query_id, 1, victim_key.address, victim_round1.answer,
            protocol.salt_for(victim_key, client.status().chain_id, "answer", query_id, 1))
        _wait("the victim to forget the settled query", lambda: any(
            e["event"] == "settled" and e.get("query_id") == query_id for e in victim.events()), timeout=60)
        assert query_id not in json.loads((tmp_path / f"{victim.name}.json").read_text())["open"]
        scores = status.scores[0]
        assert scores.scorer == query.scorers[0] and scores.revealed and len(scores.scores) == 2
        assert any(e["event"] == "judged" for e in scorer.events())
        round2 = [e for e in other.events()
                  if e["event"] == "answered" and e.get("round") == 2 and e.get("query_id") == query_id]
        assert round2 and round2[0]["peers"] == 1  # collaborative: saw the victim's round-1 answer
        for d in daemons:  # never a refused (e.g. duplicate or out-of-sequence) transaction
            assert not [e for e in d.events() if e["event"] == "tx_refused"], d.name
        victim_steps = [e["step"] for e in victim.events() if e["event"] == "tx_sent"]
        # committed once; the reveal (which the chain shows matches the commitment, above) went out once: by
        # the restarted daemon, or, when the phase moved on within the moment before the kill, by the first
        # process just before it died (then its log line may be lost with it, never the tx sent twice)
        assert victim_steps.count(step) == 1 and victim_steps.count(f"reveal:{query_id}:1") <= 1
    finally:
        client.close()


def _ask(experts: Experts, question: str, nodes: list[str]) -> subprocess.Popen[str]:
    manifest = experts.net.manifest()
    return subprocess.Popen([sys.executable, "-m", "llmnet.client.cli", "ask", question, "--domain", DOMAIN, "--rounds",
                             "1", "--from", manifest["keys"][0], "--keyring", manifest["keyring"], "--output", "json",
                             *[flag for node in nodes for flag in ("--node", node)]],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _submitted(ask: subprocess.Popen[str]) -> tuple[int, list[str]]:
    """Read ask's progress lines until it names its query (it is on chain from then on)."""
    assert ask.stderr is not None
    seen = []
    for line in ask.stderr:
        seen.append(line)
        if line.startswith("submitted query"):
            return int(line.split()[-1]), seen
    pytest.fail(f"ask ended before its query was submitted: {''.join(seen)}")


def _settled(ask: subprocess.Popen[str], seen: list[str], query_id: int) -> tuple[dict[str, object], str]:
    assert ask.stdout is not None and ask.stderr is not None
    code = ask.wait(timeout=240)
    out, err = ask.stdout.read(), "".join(seen) + ask.stderr.read()
    assert code == 0, err
    result = json.loads(out)
    assert result["query_id"] == query_id and result["final_answer"] and len(result["answers"]) == 2
    return result, err


def _steps_of(events: list[dict[str, object]], query_id: int) -> list[str]:
    return [str(e["step"]) for e in events if e["event"] == "tx_sent" and str(e["step"]).split(":")[1] == str(query_id)]


def test_ask_and_daemons_move_to_the_second_node_when_the_first_is_killed(experts: Experts) -> None:
    """Both clients are given node 1 first. It is SIGKILLed while the query is open and restarted: ask
    follows the query through node 0 to its settlement, and every daemon moves to node 0 and does its part
    of the query through it."""
    net, daemons = experts.net, experts.daemons
    first, second = net.manifest()["nodes"][1]["grpc"], experts.node
    before = [len(d.events()) for d in daemons]
    ask = _ask(experts, "What is item 7?", [first, second])
    query_id, seen = _submitted(ask)
    net.signal_node(1, signal.SIGKILL)
    killed = time.monotonic()
    _wait("every daemon to move to node 0", lambda: all(
        any(e["event"] == "node_failover" and e["to_node"] == second for e in d.events()[n:])
        for d, n in zip(daemons, before, strict=True)), timeout=60)
    net.start_node(1)  # the chain needs both validators: it halted meanwhile
    down = time.monotonic() - killed
    result, err = _settled(ask, seen, query_id)
    print(f"ask: node 1 down {down:.1f}s, settled {time.monotonic() - killed:.1f}s after the kill")
    assert f"following through {second}" in err and "unreachable" in err
    with Client(second) as client:
        assert not client.receipt(query_id).receipt.missed
    for d, n in zip(daemons, before, strict=True):
        events = d.events()[n:]
        moved = next(i for i, e in enumerate(events) if e["event"] == "node_failover" and e["to_node"] == second)
        assert events[moved]["from_node"] == first
        assert _steps_of(events[moved:], query_id), f"{d.name} did nothing for query {query_id} through node 0"
        assert not [e for e in events if e["event"] == "tx_refused"], d.name
    net.wait_height(int(result["settled_height"]), nodes=[1], timeout=60)  # node 1 is back in step


def _settled_query(node: str) -> int:
    with Client(node) as client:
        for query_id in range(1, 20):
            try:
                client.receipt(query_id)
                return query_id
            except ClientError:
                continue
    pytest.fail("no settled query on the chain")


def test_receipt_verifies_and_any_tampering_is_caught(experts: Experts) -> None:
    import copy

    from llmnet.client.verify import VerifyError, fetch, validators_hash, verify

    manifest = experts.net.manifest()
    query_id = _settled_query(experts.node)
    out = subprocess.run([sys.executable, "-m", "llmnet.client.cli", "receipt", "verify", str(query_id), "--node",
                          experts.node, "--output", "json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["verified"] and report["signed_power"] * 3 > report["total_power"] * 2 and len(report["checks"]) == 5
    assert report["validators_pinned"] is False  # a program reading the JSON can tell a pinned check from this
    rpc = "http://" + manifest["nodes"][0]["rpc"]
    evidence = fetch(rpc, query_id)
    pinned = verify(evidence, manifest["chain_id"], validators_hash(evidence.validators))
    assert pinned.validators_pinned and not verify(evidence, manifest["chain_id"]).validators_pinned
    chain_id = manifest["chain_id"]
    verify(evidence, chain_id)  # the untouched evidence passes in process too
    with pytest.raises(VerifyError):
        verify(evidence, "another-chain")  # a receipt of another chain is not this chain's

    def tampered(change) -> str:  # type: ignore[no-untyped-def]
        ev = copy.deepcopy(evidence)
        change(ev)
        with pytest.raises(VerifyError) as err:
            verify(ev, chain_id)
        return str(err.value)

    final = inf.Receipt.FromString(evidence.value).final_answer.encode()
    answer = evidence.value.rindex(final)  # a byte of the final answer inside the proven receipt

    def flip_value(ev) -> None:  # type: ignore[no-untyped-def]
        ev.value = ev.value[:answer] + bytes([ev.value[answer] ^ 1]) + ev.value[answer + 1:]

    def flip_proof(ev) -> None:  # type: ignore[no-untyped-def]
        data = bytearray(ev.proof_ops[0].data)
        data[-1] ^= 1
        ev.proof_ops[0].data = bytes(data)

    def flip_app_hash(ev) -> None:  # type: ignore[no-untyped-def]
        h = ev.header["app_hash"]
        ev.header["app_hash"] = ("0" if h[0] != "0" else "1") + h[1:]

    def flip_signature(ev) -> None:  # type: ignore[no-untyped-def]
        import base64

        sig = bytearray(base64.b64decode(ev.commit["signatures"][0]["signature"]))
        sig[0] ^= 1
        ev.commit["signatures"][0]["signature"] = base64.b64encode(bytes(sig)).decode()

    assert "leaf hash does not match" in tampered(flip_value)
    assert "proof" in tampered(flip_proof).lower()
    assert "does not hash to the block id" in tampered(flip_app_hash)
    assert "voting power signed" in tampered(flip_signature)  # a bad signature counts for nothing
    unknown = subprocess.run([sys.executable, "-m", "llmnet.client.cli", "receipt", "verify", "999", "--node",
                              experts.node], capture_output=True, text=True, timeout=120)
    assert unknown.returncode == 1 and "NOT VERIFIED" in unknown.stdout


def test_ask_and_daemons_ride_out_every_node_killed_and_restarted(experts: Experts) -> None:
    """The whole chain SIGKILLed and restarted while a query is open: an ask given one node keeps retrying
    (backing off) until the node is back and prints the settled answer; the daemons notice, survive and
    finish the query."""
    net, node = experts.net, experts.node
    before = [len(d.events()) for d in experts.daemons]
    ask = _ask(experts, "What is item 3?", [node])
    query_id, seen = _submitted(ask)
    for i in range(2):
        net.signal_node(i, signal.SIGKILL)
    killed = time.monotonic()
    _wait("the daemons to notice the node is gone", lambda: all(
        any(e["event"] in ("node_unreachable", "websocket_down") for e in d.events()[n:])
        for d, n in zip(experts.daemons, before, strict=True)), timeout=60)
    net.start()
    down = time.monotonic() - killed
    result, err = _settled(ask, seen, query_id)
    print(f"ask: every node down {down:.1f}s, settled {time.monotonic() - killed:.1f}s after the kill")
    assert "unreachable" in err  # it saw the node go, and did not give up
    with Client(node) as client:
        assert not client.receipt(query_id).receipt.missed
    for d in experts.daemons:
        assert d.proc is not None and d.proc.poll() is None, f"{d.name} died"


def test_explorer_page_shows_a_query_settling_live(experts: Experts) -> None:
    """The page served by `llmnetd start`, in real headless Chromium, updates itself as a query settles."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.browser import chromium, missing

    assert missing() is None, missing()
    url = experts.net.manifest()["nodes"][0]["explorer"]
    with Client(experts.node) as client, chromium() as browser:
        query_id = submit(client, keys(experts.net)[0], DOMAIN, "What is item 5?", 1_000_000, 2, 1)
        browser.get(url)
        card = f'article.query[data-query-id="{query_id}"]'
        WebDriverWait(browser, 30).until(lambda b: b.find_elements(By.CSS_SELECTOR, card))
        assert "What is item 5?" in browser.find_element(By.CSS_SELECTOR, card).text
        # No reload from here on: the page must pick the settlement up by itself.
        WebDriverWait(browser, 240, poll_frequency=1).until(
            lambda b: b.find_element(By.CSS_SELECTOR, card).get_attribute("data-phase") == "settled")
        receipt = client.receipt(query_id).receipt
        shown = browser.find_element(By.CSS_SELECTOR, f"{card} .final-answer").text
        expected = " ".join(receipt.final_answer.split()) if receipt.final_index >= 0 else "(no answer was revealed)"
        assert shown == expected
        scores = [td.text for td in browser.find_elements(By.CSS_SELECTOR, f"{card} tbody td:nth-child(3)")]
        assert scores == [str(s) for s in receipt.scores]
        height = int(browser.find_element(By.ID, "height").text)
        assert height >= receipt.settled_height
        assert browser.find_element(By.ID, "live").get_attribute("class") == "live"
        shown_experts = {tr.get_attribute("data-expert") for tr in browser.find_elements(
            By.CSS_SELECTOR, f'#experts table[data-domain="{DOMAIN}"] tbody tr')}
        assert shown_experts == {r.expert.address for r in client.experts(DOMAIN).experts}
        assert browser.find_elements(By.CSS_SELECTOR, "#blocks tbody tr")
        lines = browser.find_elements(By.CSS_SELECTOR, "#reputation-chart polyline.series")
        assert {line.get_attribute("data-expert") for line in lines} == shown_experts
        _search_box_finds_what_it_is_given(browser, client, experts, query_id)
        _blocks_page_older_and_back(browser)
        _cards_hold_their_content(browser, experts.tmp)  # with the search panel open too


def _search(browser, text: str, shown: str) -> str:  # type: ignore[no-untyped-def]
    """Type text into the search box, press Enter, and return the text of what appears as `shown`."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    box = browser.find_element(By.ID, "search")
    box.clear()
    box.send_keys(text, Keys.ENTER)
    found = WebDriverWait(browser, 30).until(lambda b: b.find_elements(By.CSS_SELECTOR, f"#search-result {shown}"))
    return str(found[0].text)


def _search_box_finds_what_it_is_given(browser, client: Client, experts: Experts,  # type: ignore[no-untyped-def]
                                       query_id: int) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from llmnet.client.sdk import Sender
    from llmnet.client.txbuilder import send_msg

    shown = _search(browser, f" {query_id} ", f'[data-kind="query"] article.query[data-query-id="{query_id}"]')
    assert "What is item 5?" in shown and "settled" in shown
    # An expert's address in the experts table opens its account, expert record included.
    link = browser.find_element(By.CSS_SELECTOR, f'#experts table[data-domain="{DOMAIN}"] a[data-search]')
    address = link.get_attribute("data-search")
    link.click()
    account = f'#search-result article[data-kind="account"][data-address="{address}"]'
    shown = WebDriverWait(browser, 30).until(lambda b: b.find_elements(By.CSS_SELECTOR, account))[0].text
    record = client.expert(address)
    assert record.expert.endpoint in shown and f"reputation in {DOMAIN}" in shown and "active" in shown
    assert "not an address" in _search(browser, "llm1nope", '[data-kind="error"]')
    assert "no query 4242" in _search(browser, "4242", '[data-kind="error"]')
    payer, payee = keys(experts.net)[4], keys(experts.net)[0]
    sent = Sender(client, payer).send([send_msg(payer.address, payee.address, 3)], memo="found by the explorer")
    client.wait_tx(sent.tx_hash, timeout=60)
    shown = _search(browser, sent.tx_hash.lower(), f'article[data-kind="tx"][data-hash="{sent.tx_hash}"]')
    assert "llmnet.bank.v1.MsgSend" in shown and "found by the explorer" in shown and payee.address in shown


_HEIGHTS = "return [...document.querySelectorAll('#blocks tbody tr')].map((tr) => Number(tr.dataset.height));"


def _blocks_page_older_and_back(browser) -> None:  # type: ignore[no-untyped-def]
    """Older shows the blocks just below the page, and stays there as the chain grows; newer comes back."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 30)
    pager = '.pager[data-panel="blocks"]'

    def where() -> str:
        return str(browser.find_element(By.CSS_SELECTOR, f"{pager} .where").text)

    newest = browser.execute_script(_HEIGHTS)
    browser.find_element(By.CSS_SELECTOR, f'{pager} [data-go="older"]').click()
    wait.until(lambda b: not where().startswith("newest"))
    # Below the page shown at the click (a refresh may have moved the head page up since `newest` was read).
    older = browser.execute_script(_HEIGHTS)
    assert len(older) == len(newest) and older == list(range(older[0], older[0] - len(older), -1))
    assert older[0] < newest[0]
    height = int(browser.find_element(By.ID, "height").text)
    wait.until(lambda b: int(b.find_element(By.ID, "height").text) >= height + 3)  # a few refreshes later
    assert browser.execute_script(_HEIGHTS) == older
    browser.find_element(By.CSS_SELECTOR, f'{pager} [data-go="newer"]').click()
    above = list(range(older[0] + len(older), older[0], -1))  # the page it came from
    wait.until(lambda b: b.execute_script(_HEIGHTS) == above)
    for _ in range(10):  # and on up, until the page follows the chain's head again
        if where().startswith("newest"):
            break
        shown = browser.execute_script(_HEIGHTS)
        browser.find_element(By.CSS_SELECTOR, f'{pager} [data-go="newer"]').click()
        wait.until(lambda b, shown=shown: b.execute_script(_HEIGHTS) != shown)
    else:
        raise AssertionError("newer never reached the newest blocks")
    assert browser.execute_script(_HEIGHTS)[0] > above[0]


def _cards_hold_their_content(browser, shots: Path) -> None:  # type: ignore[no-untyped-def]
    """At common desktop widths (and a narrow one) no card's content runs out of it, e.g. under its neighbour."""
    from tests.browser import overflowing, page_scrolls_sideways

    for width in (1400, 1920, 600):
        browser.set_window_size(width, 1600)
        browser.save_screenshot(str(shots / f"explorer-{width}.png"))
        assert overflowing(browser) == [], f"at {width} px, see {shots}/explorer-{width}.png"
        assert not page_scrolls_sideways(browser), width
