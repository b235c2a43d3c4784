"""The generation engine on a tiny random model (real transformers and peft code, seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest

from experts.engine import Engine, EngineError, ErrorKind, Limits, Sampling
from experts.models import load_base
from experts.tiny import make_tiny_model

HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path) -> Path:
    from peft import LoraConfig, get_peft_model

    model = load_base(str(tiny_dir)).model
    # random (not zero) LoRA weights, so the adapter visibly changes the output
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    out = tmp_path_factory.mktemp("adapter") / "kestrel"
    peft_model.save_pretrained(out)
    return out


@pytest.fixture
def engine(tiny_dir: Path) -> Engine:
    return Engine(load_base(str(tiny_dir)), Limits(max_prompt_tokens=64, max_new_tokens=32))


def test_greedy_is_deterministic_and_seeded_sampling_repeats(engine: Engine) -> None:
    greedy = [engine.generate(HELLO, Sampling(max_new_tokens=12)).text for _ in range(2)]
    assert greedy[0] == greedy[1]
    a = engine.generate(HELLO, Sampling(max_new_tokens=12, temperature=1.0, seed=5))
    b = engine.generate(HELLO, Sampling(max_new_tokens=12, temperature=1.0, seed=5))
    c = engine.generate(HELLO, Sampling(max_new_tokens=12, temperature=1.0, seed=6))
    assert a == b and a.text != c.text
    assert a.completion_tokens == 12 and a.finish_reason == "length" and a.prompt_tokens > 0


def test_streaming_pieces_add_up_and_stop_strings_cut(engine: Engine) -> None:
    pieces: list[str] = []
    full = engine.generate(HELLO, Sampling(max_new_tokens=16, temperature=1.0, seed=3), on_text=pieces.append)
    assert "".join(pieces) == full.text and len(pieces) > 1
    stop = full.text[5:7]
    cut = engine.generate(HELLO, Sampling(max_new_tokens=16, temperature=1.0, seed=3, stop=[stop]))
    assert cut.finish_reason == "stop" and cut.text == full.text[: full.text.find(stop)]


def test_cancellation_stops_generation(engine: Engine) -> None:
    seen: list[str] = []
    result = engine.generate(HELLO, Sampling(max_new_tokens=30), on_text=seen.append,
                             cancelled=lambda: len(seen) >= 3)
    assert result.finish_reason == "cancelled" and result.completion_tokens == 3


@pytest.mark.parametrize(
    "messages, sampling, domain, kind",
    [
        ([], Sampling(), "", ErrorKind.INVALID),
        ([{"role": "robot", "content": "x"}], Sampling(), "", ErrorKind.INVALID),
        ([{"role": "user", "content": "x" * 200}], Sampling(), "", ErrorKind.INVALID),
        (HELLO, Sampling(max_new_tokens=33), "", ErrorKind.INVALID),
        (HELLO, Sampling(max_new_tokens=0), "", ErrorKind.INVALID),
        (HELLO, Sampling(top_p=0), "", ErrorKind.INVALID),
        (HELLO, Sampling(), "no-such-domain", ErrorKind.NOT_FOUND),
    ],
    ids=["no messages", "bad role", "prompt too long", "too many tokens", "zero tokens", "top_p 0", "unknown domain"],
)
def test_bad_requests_are_refused_with_a_kind(engine: Engine, messages, sampling, domain, kind) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(EngineError) as err:
        engine.generate(messages, sampling, domain)
    assert err.value.kind == kind and str(err.value)


def test_adapters_are_chosen_per_request(engine: Engine, adapter_dir: Path) -> None:
    base_before = engine.generate(HELLO, Sampling(max_new_tokens=12)).text
    engine.add_adapter("kestrel-lang", str(adapter_dir))
    with_adapter = engine.generate(HELLO, Sampling(max_new_tokens=12), domain="kestrel-lang").text
    base_after = engine.generate(HELLO, Sampling(max_new_tokens=12)).text
    assert with_adapter != base_before and base_after == base_before


PROMPTS = [[{"role": "user", "content": text}]
           for text in ("hi", "hello there", "what is kestrel?", "a much longer question here")]


def _concurrently(engine: Engine, jobs: list[tuple[list[dict[str, str]], Sampling, str]]) -> list[str]:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(jobs)) as pool:
        return [f.result().text for f in [pool.submit(engine.generate, m, s, d) for m, s, d in jobs]]


def test_batched_requests_match_one_at_a_time(tiny_dir: Path) -> None:
    single = Engine(load_base(str(tiny_dir)), Limits(max_new_tokens=32, max_batch=1))
    batched = Engine(load_base(str(tiny_dir)), Limits(max_new_tokens=32, max_batch=8, batch_window_ms=200))
    jobs = [(m, Sampling(max_new_tokens=10 + 3 * i, temperature=0.7 * (i % 2), seed=i), "")
            for i, m in enumerate(PROMPTS)]
    expected = [single.generate(m, s, d).text for m, s, d in jobs]
    assert _concurrently(batched, jobs) == expected
    assert batched.batches_run < len(jobs)  # they really shared forward passes
    single.close()
    batched.close()


def test_different_adapters_split_a_batch_but_each_gets_its_own(tiny_dir: Path, adapter_dir: Path) -> None:
    engine = Engine(load_base(str(tiny_dir)), Limits(max_new_tokens=32, batch_window_ms=200))
    engine.add_adapter("kestrel-lang", str(adapter_dir))
    jobs = [(PROMPTS[i % 4], Sampling(max_new_tokens=12), "kestrel-lang" if i % 2 else "") for i in range(6)]
    expected = [engine.generate(m, s, d).text for m, s, d in jobs]
    before = engine.batches_run
    assert _concurrently(engine, jobs) == expected
    assert engine.batches_run - before >= 2  # at least one group per adapter
    engine.close()


def test_answer_logprob_is_the_models_own_probability_of_the_reply(tiny_dir: Path, adapter_dir: Path) -> None:
    """The mean log-probability of a reply's tokens and its end-of-turn token, computed by hand from the
    model's logits over the whole chat, with and without an adapter (which changes it)."""
    import torch

    engine = Engine(load_base(str(tiny_dir)), Limits(max_prompt_tokens=64, max_new_tokens=32))
    engine.add_adapter("kestrel", str(adapter_dir))
    prompt = engine.encode(HELLO)
    reply = list(engine.tokenizer("abc", add_special_tokens=False)["input_ids"]) + [engine.tokenizer.eos_token_id]
    ids = prompt + reply
    by_domain = {}
    for domain in ("", "kestrel"):
        with engine.runner._adapter(engine.adapters.get(domain, "")):
            logits = engine.model(input_ids=torch.tensor([ids])).logits[0]
        expected = sum(float(torch.log_softmax(logits[i - 1].double(), -1)[ids[i]])
                       for i in range(len(prompt), len(ids))) / len(reply)
        by_domain[domain] = engine.answer_logprob(HELLO, "abc", domain)
        assert by_domain[domain] == pytest.approx(expected, abs=1e-6)
    assert by_domain[""] != pytest.approx(by_domain["kestrel"], abs=1e-3)
    with pytest.raises(EngineError) as err:
        engine.answer_logprob(HELLO, "abc", "nope")
    assert err.value.kind == ErrorKind.NOT_FOUND


def test_a_special_tokens_name_in_an_answer_is_scored_as_text(engine: Engine) -> None:
    """A revealed answer "abc<|im_end|>" is the characters it shows, then the real end of turn: a peer cannot
    end its answer early (or many times) by writing a control token's name."""
    import torch

    prompt = engine.encode(HELLO)
    text = "abc<|im_end|>"
    reply = [engine.tokenizer.convert_tokens_to_ids(c) for c in text] + [engine.tokenizer.eos_token_id]
    assert engine.tokenizer.eos_token_id not in reply[:-1]
    ids = prompt + reply
    logits = engine.model(input_ids=torch.tensor([ids])).logits[0]
    expected = sum(float(torch.log_softmax(logits[i - 1].double(), -1)[ids[i]]) for i in range(len(prompt), len(ids)))
    assert engine.answer_logprob(HELLO, text) == pytest.approx(expected / len(reply), abs=1e-6)


def test_a_request_put_back_for_urgent_work_streams_its_answer_once_and_unchanged(engine: Engine) -> None:
    """A batch of requests steps aside when chain work waits (experts/engine.py) and runs again later from
    the start: the caller sees each piece of its text once, and the answer it would have had."""
    import threading
    import time

    question = [{"role": "user", "content": "Tell me about the sea."}]
    alone = engine.generate(question, Sampling(max_new_tokens=32, stop=["\u0000"])).text
    pieces: list[str] = []
    streamed = threading.Event()

    def on_text(piece: str) -> None:
        pieces.append(piece)
        streamed.set()
        time.sleep(0.02)  # slow enough for the urgent work to arrive mid-answer

    got: list[str] = []
    caller = threading.Thread(target=lambda: got.append(
        engine.generate(question, Sampling(max_new_tokens=32, stop=["\u0000"]), on_text=on_text).text))
    caller.start()
    assert streamed.wait(30)
    runs = engine.batches_run
    engine.generate([{"role": "user", "content": "Quick!"}], Sampling(max_new_tokens=2), urgent=True)
    caller.join(60)
    assert got == [alone] and "".join(pieces) == alone
    assert engine.batches_run - runs >= 3  # the request's batch, the urgent one, the request again
