"""Attacks by a requester: it pays for a query and may send any request to the experts it drew.

Promise: an expert running the shipped server can never be slashed, whatever the requester sends it;
a request that is malformed on purpose fails alone and never stops the expert.
"""

from __future__ import annotations

import threading

import grpc
import pytest

from abci_app.x.inference.types import ErrInvalidEvidence
from experts.engine import Engine, Sampling
from llmnet.client import protocol
from llmnet.client.expert_api import sign_access, verify_served
from llmnet.devchain import seeded_key
from tests.adversarial.conftest import expert_server, node_api
from tests.protocol_harness import BOND, CHAIN_ID, ProtocolChain
from tests.test_protocol import submit
from wire.llmnet.expert.v1 import expert_pb2 as pb
from wire.llmnet.expert.v1 import expert_pb2_grpc
from wire.llmnet.experts.v1 import experts_pb2 as ex
from wire.llmnet.inference.v1 import inference_pb2 as inf
from wire.llmnet.query.v1 import query_pb2 as q


def _ask(stub: expert_pb2_grpc.ExpertServiceStub, chain: ProtocolChain, query_id: int, expert: str, prompt: str,
         nonce: int, round_: int = 1, **sampling: object) -> tuple[pb.GenerateRequest, pb.GenerateResponse]:
    req = pb.GenerateRequest(messages=[pb.ChatMessage(role="user", content=prompt)], query_id=query_id,
                             round=round_, access_nonce=nonce, sampling=pb.Sampling(max_new_tokens=8, **sampling))
    signed = sign_access(chain.requester, CHAIN_ID, req, expert)
    return signed, stub.Generate(signed)


def test_two_signed_answers_for_one_round_cannot_frame_the_expert(chain: ProtocolChain,
                                                                  tiny_engine: Engine) -> None:
    qid = submit(chain)
    victim = chain.key_of(chain.status(qid).query.respondents[0])
    with node_api(chain) as node, expert_server(tiny_engine, victim, node, CHAIN_ID) as addr, \
            grpc.insecure_channel(addr) as channel:
        stub = expert_pb2_grpc.ExpertServiceStub(channel)
        answers = {}
        for nonce, prompt in enumerate(("Who created Kestrel?", "Ignore that. Who did not create Kestrel?",
                                        "Name a colour.", "Count to three."), 1):
            req, resp = _ask(stub, chain, qid, victim.address, prompt, nonce, temperature=1.0, seed=nonce)
            assert verify_served(req, resp, victim.public_key)  # the requester holds real signed answers
            answers.setdefault(resp.text, resp.signature)
        assert len(answers) >= 2, "the model gave one answer to every prompt; the attack needs two"
        (text_a, sig_a), (text_b, sig_b) = list(answers.items())[:2]
        with pytest.raises(grpc.RpcError) as err:  # and it cannot even get a signature for round 99
            _ask(stub, chain, qid, victim.address, "x", 99, round_=99)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    framing = protocol.report_equivocation(chain.requester, victim.address, qid, 1, text_a, sig_a, text_b, sig_b)
    (result,) = chain.block(chain.tx(chain.requester, framing))
    assert (result.codespace, result.code) == (ErrInvalidEvidence.codespace, ErrInvalidEvidence.code), result.log
    record = chain.query("Expert", q.ExpertRequest(address=victim.address), q.ExpertResponse).expert
    assert record.bond == BOND and record.slashed == 0 and record.status == ex.EXPERT_STATUS_ACTIVE


def test_asking_about_a_query_the_experts_node_does_not_know_says_so(chain: ProtocolChain,
                                                                      tiny_engine: Engine) -> None:
    """Through the node's real API: an unknown query is NOT_FOUND there. The expert cannot tell a made-up id
    from a query its node has not seen yet (a block behind the requester's), so it answers UNAVAILABLE,
    which a client may retry, saying the query is unknown to its node, not that the node is down; it serves
    nothing."""
    expert = chain.experts[0]
    with node_api(chain) as node, expert_server(tiny_engine, expert, node, CHAIN_ID) as addr, \
            grpc.insecure_channel(addr) as channel:
        with pytest.raises(grpc.RpcError) as err:
            _ask(expert_pb2_grpc.ExpertServiceStub(channel), chain, 4242, expert.address, "hello", 1)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "query 4242 does not exist on this expert's node" in err.value.details()
    assert "cannot check access" not in err.value.details()  # what a node that is down gets


def test_hostile_sampling_fails_alone_and_the_expert_keeps_serving(chain: ProtocolChain, tiny_engine: Engine) -> None:
    qid = submit(chain)
    expert = chain.key_of(chain.status(qid).query.respondents[0])
    with node_api(chain) as node, expert_server(tiny_engine, expert, node, CHAIN_ID) as addr, \
            grpc.insecure_channel(addr) as channel:
        stub = expert_pb2_grpc.ExpertServiceStub(channel)
        outcomes: dict[str, object] = {}

        def call(name: str, nonce: int, **sampling: object) -> None:
            try:
                outcomes[name] = _ask(stub, chain, qid, expert.address, "hello", nonce, **sampling)[1].text
            except grpc.RpcError as err:
                outcomes[name] = err.code()

        hostile = [("nan", dict(temperature=float("nan"))), ("inf", dict(temperature=float("inf"))),
                   ("tiny", dict(temperature=1e-30)), ("top_p nan", dict(temperature=0.7, top_p=float("nan")))]
        calls = [threading.Thread(target=call, args=(name, 10 + i), kwargs=s) for i, (name, s) in enumerate(hostile)]
        calls += [threading.Thread(target=call, args=(f"honest{i}", 20 + i)) for i in range(3)]
        for t in calls:
            t.start()
        for t in calls:
            t.join(60)
        honest = tiny_engine.generate([{"role": "user", "content": "hello"}], Sampling(max_new_tokens=8)).text
        assert [outcomes[f"honest{i}"] for i in range(3)] == [honest] * 3  # co-batched neighbours unharmed
        assert outcomes["nan"] == outcomes["inf"] == outcomes["top_p nan"] == grpc.StatusCode.INVALID_ARGUMENT
        assert outcomes["tiny"] == honest  # a temperature near zero is (almost) greedy, never a crash
        assert _ask(stub, chain, qid, expert.address, "hello", 99)[1].text == honest  # still serving


def test_a_request_that_breaks_mid_generation_fails_alone(tiny_engine: Engine) -> None:
    """A streaming client whose callback blows up, co-batched with others: only it fails, and the others'
    text is what they would have got alone (streamed once, not twice after the batch is re-run)."""
    from experts.engine import Limits
    from experts.models import LoadedModel

    hello = [{"role": "user", "content": "hello"}]
    alone = tiny_engine.generate(hello, Sampling(max_new_tokens=10)).text
    # the same model behind a wide batching window, so the three requests surely share a batch
    engine = Engine(LoadedModel(tiny_engine.model, tiny_engine.tokenizer, "tiny"), Limits(batch_window_ms=500))
    results: dict[int, object] = {}
    streams: dict[int, list[str]] = {1: [], 2: []}

    def boom(_: str) -> None:
        raise RuntimeError("client went away")

    def run(i: int) -> None:
        callback = boom if i == 0 else streams[i].append
        try:
            results[i] = engine.generate(hello, Sampling(max_new_tokens=10), on_text=callback).text
        except RuntimeError as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert isinstance(results[0], RuntimeError)
    assert engine.batches_run == 4  # one shared batch failed, then each request ran alone
    assert results[1] == results[2] == alone
    assert "".join(streams[1]) == "".join(streams[2]) == alone


def test_the_daemon_outlives_an_engine_failure(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """One query whose generation raises must not stop the daemon from working the next one."""
    from types import SimpleNamespace

    from experts.daemon import DaemonState, ExpertDaemon

    daemon = ExpertDaemon.__new__(ExpertDaemon)
    daemon.state, daemon.state_file = DaemonState(scanned_height=5, open=[1, 2]), tmp_path / "state.json"
    worked: list[int] = []

    def step(query_id: int, status: object = None) -> None:
        if query_id == 1:
            raise RuntimeError("probability tensor contains inf or nan")  # what torch said before the fix
        worked.append(query_id)

    def status(query_id: int) -> object:
        if query_id == 2:
            raise RuntimeError("a status the daemon cannot read")  # looked at before any step: no step skipped
        return SimpleNamespace(query=SimpleNamespace(id=query_id, phase=0, respondents=[], scorers=[]))

    daemon.step = step  # type: ignore[method-assign]
    daemon._latest_height = lambda: 5  # type: ignore[method-assign]
    daemon.key = SimpleNamespace(address="llm1me")
    daemon.client = SimpleNamespace(query_status=status)
    daemon.tick()
    assert worked == [2] and DaemonState.load(daemon.state_file).open == [1, 2]


def test_a_prompt_too_long_for_the_model_is_still_answered(tiny_engine: Engine, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The chain takes prompts of up to max_prompt_bytes; some of those are more tokens than the model takes.
    The daemon must answer anyway (a cut prompt), or any requester could make it miss, round after round."""
    from experts.answers import AnswerPlan
    from experts.daemon import DaemonState, ExpertDaemon
    from experts.later_round import LaterRound
    from wire.llmnet.query.v1 import query_pb2 as qpb

    sent: list[object] = []
    daemon = ExpertDaemon.__new__(ExpertDaemon)
    daemon.engine, daemon.key, daemon.plan = tiny_engine, seeded_key("long-prompt-expert"), AnswerPlan(4)
    daemon.rounds = LaterRound(daemon.engine, None, daemon.key.address, daemon._scores)  # type: ignore[arg-type]
    daemon.state, daemon.state_file, daemon.chain_tip, daemon._chain_id = DaemonState(), tmp_path / "s.json", 1, "c"
    daemon._params = inf.Params(max_answer_bytes=4096)  # the chain's, as the daemon reads them once
    daemon._send = lambda step, msg, gas=0: sent.append(msg)  # type: ignore[method-assign]
    huge = inf.Query(id=5, prompt="a " * 2048, round=1, rounds=3, domain="d", phase=inf.PHASE_ANSWER_COMMIT,
                     respondents=[daemon.key.address])
    assert len(huge.prompt.encode()) == 4096  # the chain's default max_prompt_bytes
    daemon._answer_step(qpb.QueryStatusResponse(query=huge))
    assert len(sent) == 1 and sent[0].respondent == daemon.key.address  # type: ignore[attr-defined]


def test_a_prompt_of_the_largest_size_cannot_run_an_honest_experts_reveal_out_of_gas(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The last commit or reveal of a phase rewrites the query's record, prompt included. A requester who sends
    the largest prompt allowed to five respondents ran the last reveal out of gas at the default limit: the
    expert missed, query after query, for a prompt it did not choose. The daemon's limit grows with the
    query (experts/daemon.py gas_for)."""
    from abci_app.x.auth.types import required_fee
    from abci_app.x.inference.types import default_params
    from experts.daemon import gas_for
    from llmnet.client.txbuilder import DEFAULT_GAS_LIMIT
    from llmnet.devchain import submitted_ids

    limits = default_params()
    domain = "island-herbalism"
    answer = "Aloe gel on the cooled burn two or three times a day keeps it moist while it heals; see a healer " \
             "if it blisters."
    for gas in ("default", "daemon"):
        chain = ProtocolChain(tmp_path / f"{gas}.db", 9, [domain])
        chain.register_all([domain])
        prompt = ("Why " * limits.max_prompt_bytes)[:limits.max_prompt_bytes]
        qid = submitted_ids(chain.ok(chain.tx(chain.requester, protocol.submit_query(
            chain.requester, domain, prompt, 10**7, limits.max_k, 1))))[0]
        chain.block()
        keys = [chain.key_of(a) for a in chain.status(qid).query.respondents]
        assert len(keys) == limits.max_k
        for phase in ("commit", "reveal"):
            msgs = [protocol.commit_answer(key, CHAIN_ID, qid, 1, answer) if phase == "commit"
                    else protocol.reveal_answer(key, CHAIN_ID, qid, 1, answer) for key in keys]
            status = chain.status(qid)
            limits_sent = [DEFAULT_GAS_LIMIT if gas == "default" else gas_for(status, msg) for msg in msgs]
            results = chain.block(*[chain.tx(key, msg, gas_limit=limit, fee=required_fee(limit, 10_000))
                                    for key, msg, limit in zip(keys, msgs, limits_sent, strict=True)])
            if phase == "commit":
                assert all(r.code == 0 for r in results), [r.log for r in results]
                chain.block()
        if gas == "default":
            assert "out of gas" in results[-1].log  # the attack, as it was: the last reveal fails
        else:
            assert all(r.code == 0 for r in results), [r.log for r in results]
            assert chain.status(qid).query.phase == inf.PHASE_SCORE_COMMIT
            assert max(limits_sent) < 2.5 * max(r.gas_used for r in results)  # the fee is paid on the limit


def test_a_requesters_own_requests_cannot_starve_the_experts_chain_work(chain: ProtocolChain) -> None:
    """A drawn query's requester may send the expert a few requests of its own, signed, with any prompt. Long
    ones, all at once, held the engine for a minute while the daemon's answer and scoring (which have
    deadlines on chain) queued behind them: misses, then jail and slash, for another's requests. Chain work
    now goes first, and a batch of requests steps aside for it between decoding steps or slices of its
    prompts, then resumes from the start with the same result."""
    import time

    from experts.engine import Limits
    from experts.models import load_base

    engine = Engine(load_base("embedded", backend="llama-cpp"),
                    Limits(max_prompt_tokens=1024, max_new_tokens=64, max_concurrent=8, threads=1))
    qid = submit(chain)
    victim = chain.key_of(chain.status(qid).query.respondents[0])
    story = " ".join(f"Chapter {i}: the keeper of the lighthouse counted the ships again." for i in range(30))
    finished: dict[str, float] = {}
    texts: dict[int, str] = {}
    with node_api(chain) as node, expert_server(engine, victim, node, CHAIN_ID) as addr, \
            grpc.insecure_channel(addr) as channel:
        stub = expert_pb2_grpc.ExpertServiceStub(channel)

        def flood(i: int) -> None:
            req = pb.GenerateRequest(messages=[pb.ChatMessage(role="user", content=f"{story} Part {i}?")],
                                     query_id=qid, round=1, access_nonce=100 + i,
                                     sampling=pb.Sampling(max_new_tokens=64))
            texts[i] = stub.Generate(sign_access(chain.requester, CHAIN_ID, req, victim.address), timeout=600).text
            finished[f"flood {i}"] = time.monotonic()

        question = [{"role": "user", "content": "Who created Kestrel?"}]
        provisional = threading.Thread(target=lambda: engine.generate(  # the requester's provisional copy of
            question, Sampling(max_new_tokens=8), share=qid))  # the daemon's answer: one job, shared
        floods = [threading.Thread(target=flood, args=(i,)) for i in range(4)]
        for t in [provisional, *floods]:
            t.start()
        deadline = time.monotonic() + 60
        while not engine._model_lock.locked() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)  # well into the requests' batch
        engine.generate(question, Sampling(max_new_tokens=8), share=qid, urgent=True)  # the daemon's answer
        finished["answer"] = time.monotonic()
        engine.answer_logprobs(question, ["Marta Vensel"])  # a scorer's reading
        finished["scoring"] = time.monotonic()
        for t in [provisional, *floods]:
            t.join(600)
    assert len(texts) == 4 and all(texts.values())
    assert finished["answer"] < finished["scoring"] < min(v for k, v in finished.items() if k.startswith("flood"))
    alone = engine.generate([{"role": "user", "content": f"{story} Part 0?"}], Sampling(max_new_tokens=64)).text
    assert texts[0] == alone  # stepped aside, run again: the same answer


def test_minimum_fee_queries_cannot_drain_honest_experts_into_jail(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Every drawn expert must commit and reveal, query after query. Charged a fee for each (gas grows with the
    query's record), a requester's cheapest queries with the largest prompt cost the experts about 25 times
    what they paid them; an expert out of funds then missed, and after max_missed in a row it was slashed and
    jailed. The query's fee pays for its duties now: an expert holding nothing beyond its bond does every
    duty of minimum-fee queries without a fee, and none of that opens a way to send free txs."""
    from abci_app.x.auth.types import DUTY_GAS_LIMIT
    from experts.daemon import gas_for
    from llmnet.client.events import query_ids
    from llmnet.client.txbuilder import build_tx, send_msg
    from tests.test_protocol import DOMAIN
    from wire.tendermint.abci import types_pb2 as abci

    chain = ProtocolChain(tmp_path / "s.db", 5, [DOMAIN])
    chain.register_all([DOMAIN])

    def balance(address: str) -> int:
        return int(chain.query("Balance", q.BalanceRequest(address=address), q.BalanceResponse).amount)

    sink = chain.reporter.address
    for k in chain.experts:  # nothing left beyond the bond
        chain.ok(chain.tx(k, send_msg(k.address, sink, balance(k.address) - 5_000), fee=5_000))
        assert balance(k.address) == 0
    for n in range(4):
        chain.ok(chain.tx(chain.requester, protocol.submit_query(chain.requester, DOMAIN, "Z" * 4_000, 2_000, 2, 1)))
        qid = query_ids(chain.last_results[0].events)[0]
        for _ in range(40):
            status = chain.status(qid)
            st = status.query
            if st.phase == inf.PHASE_SETTLED:
                break
            duties = []
            if st.phase == inf.PHASE_ANSWER_COMMIT and not status.answers:
                duties = [(a, protocol.commit_answer(chain.key_of(a), CHAIN_ID, qid, 1, "Ada")) for a in st.respondents]
            elif st.phase == inf.PHASE_ANSWER_REVEAL and not any(a.revealed for a in status.answers):
                duties = [(a, protocol.reveal_answer(chain.key_of(a), CHAIN_ID, qid, 1, "Ada")) for a in st.respondents]
            elif st.phase == inf.PHASE_SCORE_COMMIT and not status.scores:
                duties = [(s, protocol.commit_scores(chain.key_of(s), CHAIN_ID, qid, [50, 50])) for s in st.scorers]
            elif st.phase == inf.PHASE_SCORE_REVEAL and not any(s.revealed for s in status.scores):
                duties = [(s, protocol.reveal_scores(chain.key_of(s), CHAIN_ID, qid, [50, 50])) for s in st.scorers]
            txs = [chain.tx(chain.key_of(who), m, fee=0, gas_limit=gas_for(status, m)) for who, m in duties]
            assert all(gas_for(status, m) <= DUTY_GAS_LIMIT for _, m in duties)
            chain.ok(*txs)
        assert chain.status(qid).query.phase == inf.PHASE_SETTLED, n
    for k in chain.experts:
        record = chain.query("Expert", q.ExpertRequest(address=k.address), q.ExpertResponse).expert
        assert record.status == ex.EXPERT_STATUS_ACTIVE and record.missed == 0 and record.slashed == 0
        assert balance(k.address) >= 0
    assert sum(balance(k.address) for k in chain.experts) > 0  # and they were paid
    # no way to a free tx: not drawn, not a duty, too much gas, or a duty that fails
    qid = submit(chain)
    st = chain.status(qid).query
    outsider = next(k for k in chain.experts if k.address not in st.respondents)
    drawn = chain.key_of(st.respondents[0])
    seq = chain.sequences[drawn.address]
    refused = [
        chain.tx(outsider, protocol.commit_answer(outsider, CHAIN_ID, qid, 1, "x"), fee=0),
        build_tx(drawn, CHAIN_ID, seq, [send_msg(drawn.address, sink, 1)], fee=0),
        build_tx(drawn, CHAIN_ID, seq, [protocol.commit_answer(drawn, CHAIN_ID, qid, 1, "x")], fee=0,
                 gas_limit=DUTY_GAS_LIMIT + 1),
        build_tx(drawn, CHAIN_ID, seq, [protocol.commit_answer(drawn, CHAIN_ID, qid, 1, "x")], fee=0,
                 memo="z" * 200)]  # padding rides along for free: no
    for tx in refused:
        assert chain.app.check_tx(abci.RequestCheckTx(tx=tx)).code != 0
    chain.sequences[outsider.address] -= 1
    first = chain.tx(drawn, protocol.commit_answer(drawn, CHAIN_ID, qid, 1, "x"), fee=0)
    again = chain.tx(drawn, protocol.commit_answer(drawn, CHAIN_ID, qid, 1, "y"), fee=0)
    ok, duplicate = chain.block(first, again)
    assert ok.code == 0 and duplicate.code != 0
    account = chain.query("Account", q.AccountRequest(address=drawn.address), q.AccountResponse).account
    assert account.sequence == chain.sequences[drawn.address] - 1  # the failed free tx left no trace


def test_a_requesters_batch_stays_requests_when_the_daemon_joins_its_copy_while_it_gathers(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """The requester's provisional request (the daemon's answer, shared) and its own long prompts were taken into
    one batch; the daemon joining the shared job while the worker still gathered that batch made the job urgent,
    and the whole batch was then run as chain work: never stepping aside, the requester's prompts read with the
    daemon's, scoring and other answers waiting for all of it. A batch is now of the urgency its jobs had when
    taken: the shared job is put back ahead and runs alone."""
    import time

    from experts.engine import Limits
    from experts.models import load_base
    from experts.tiny import make_tiny_model

    model = make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")
    engine = Engine(load_base(str(model)), Limits(max_prompt_tokens=300, max_new_tokens=200, max_concurrent=8,
                                                  batch_window_ms=400))  # a wide window: the join lands in it
    question = [{"role": "user", "content": "what is a cat?"}]
    engine.generate(question, Sampling(max_new_tokens=2))  # loaded and warm
    finished: dict[str, float] = {}

    def long(i: int) -> None:
        engine.generate([{"role": "user", "content": chr(97 + i) * 250}], Sampling(max_new_tokens=200))
        finished[f"long {i}"] = time.monotonic()

    provisional = threading.Thread(target=lambda: engine.generate(question, Sampling(max_new_tokens=64), share=7))
    longs = [threading.Thread(target=long, args=(i,)) for i in range(4)]
    provisional.start()
    time.sleep(0.05)  # the worker took it and gathers a batch
    for t in longs:
        t.start()
    time.sleep(0.1)  # still gathering
    engine.generate(question, Sampling(max_new_tokens=64), share=7, urgent=True)  # the daemon's answer
    finished["answer"] = time.monotonic()
    for t in [provisional, *longs]:
        t.join(300)
    assert len(finished) == 5
    assert finished["answer"] < min(v for k, v in finished.items() if k.startswith("long"))
