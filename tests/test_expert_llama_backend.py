"""The llama.cpp backend on the real embedded model: batched answers equal lone ones, seeds reproduce, our
LoRA adapters act in llama.cpp as they do in PyTorch, and what it cannot serve is refused clearly."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from experts import lora_gguf
from experts.engine import Engine, Limits, Sampling
from experts.lora_gguf import AdapterFormatError, write_lora_gguf
from experts.models import ModelError, load_base

PROMPTS = ["What is the capital of France?", "Name three colours of the rainbow and say why the sky is blue.",
           "Count from one to five.", "Who wrote Hamlet?"]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def llama() -> Engine:
    engine = Engine(load_base("embedded", backend="llama-cpp"),
                    Limits(max_prompt_tokens=256, max_new_tokens=48, batch_window_ms=300, threads=2))
    assert engine.backend == "llama-cpp"
    return engine


def _random_lora(out: Path, targets: list[str], scale: float = 0.3):  # type: ignore[no-untyped-def]
    """A random rank-8 adapter on the embedded model, its effect on the logits well above the two backends'
    numerical differences (activations are 8-bit in llama.cpp); and its peft model."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(load_base("embedded").model,
                           LoraConfig(r=8, lora_alpha=16, target_modules=targets, init_lora_weights=False))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.mul_(scale)
    model.save_pretrained(out)
    return out, model.eval()


@pytest.fixture(scope="module")
def lora(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    return _random_lora(tmp_path_factory.mktemp("lora"), TARGETS)


def test_batched_answers_equal_lone_answers(llama: Engine) -> None:
    sampling = Sampling(max_new_tokens=32)
    alone = [llama.generate(_ask(p), sampling).text for p in PROMPTS]
    runs = llama.batches_run
    together: dict[int, str] = {}

    def ask(i: int) -> None:
        together[i] = llama.generate(_ask(PROMPTS[i]), sampling).text

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert llama.batches_run - runs < len(PROMPTS)  # they did share forward passes
    assert [together[i] for i in range(len(PROMPTS))] == alone
    assert "Shakespeare" in alone[3]


def test_a_prompt_read_again_scores_replies_exactly_as_a_fresh_reading(llama: Engine, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A scorer reads one prompt for the answers it judges ahead and again for the new ones: the second time
    it restores the first reading instead of decoding the prompt again, and scores come out the same."""
    runner = llama.runner
    question = _ask("Who created the Kestrel programming language?")
    before = llama.answer_logprobs(question, ["Marta Vensel", "a long and winding story"])
    llama.generate(_ask("Count from one to five."), Sampling(max_new_tokens=4))  # other work in between
    llama.answer_logprobs(_ask("Who wrote Hamlet?"), ["Shakespeare"])
    prompt_reads = []
    decode_one = runner._decode_one
    monkeypatch.setattr(runner, "_decode_one", lambda tokens, start, wanted: (
        prompt_reads.append(start == 0), decode_one(tokens, start, wanted))[1])
    again = llama.answer_logprobs(question, ["a long and winding story", "Pip", "Marta Vensel"])
    assert prompt_reads and not any(prompt_reads)  # the replies alone were decoded
    assert again[0] == before[1] and again[2] == before[0]
    runner._read.clear()
    assert llama.answer_logprobs(question, ["a long and winding story", "Pip", "Marta Vensel"]) == again
    assert any(prompt_reads)
    runner._read.clear()
    prompt_reads.clear()
    llama.generate(question, Sampling(max_new_tokens=4))  # a respondent's answer reads the prompt too
    assert llama.answer_logprobs(question, ["Marta Vensel", "Pip"]) == [again[2], again[1]]
    assert not any(prompt_reads)


def test_every_decode_runs_on_one_thread_whichever_thread_asks(llama: Engine, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """llama.cpp's OpenMP runtime keeps a team per thread that ever decodes; with more teams (torch's too) than
    cores their threads sleep between kernels, and every decode took 1.7x as long: the engine's worker, a
    scorer's thread and the main thread all decode on the runner's one thread, and torch stays single-threaded."""
    import torch

    runner = llama.runner
    deciders: set[int] = set()
    decode = runner.lib.llama_decode
    monkeypatch.setattr(runner.lib, "llama_decode", lambda ctx, batch: (
        deciders.add(threading.get_ident()), decode(ctx, batch))[1])
    llama.generate(_ask("Who wrote Macbeth?"), Sampling(max_new_tokens=4))  # on the engine's worker
    llama.answer_logprobs(_ask("Who wrote Othello?"), ["Shakespeare"])  # on this thread's call
    scorer = threading.Thread(target=llama.answer_logprobs, args=(_ask("Who wrote Emma?"), ["Austen"]))
    scorer.start()
    scorer.join(60)
    assert len(deciders) == 1 and threading.get_ident() not in deciders
    assert torch.get_num_threads() == 1


def test_a_prompt_reads_the_same_whatever_the_cache_held_before(llama: Engine) -> None:
    """A new batch marks the cache's cells free without zeroing them (that cost 50 ms a batch): what an
    earlier, longer prompt left in them must not reach the next prompt's logits."""
    ids = llama.encode(_ask("Count from one to five."))

    def logits() -> object:
        with llama._model_lock, llama.runner.session("", [ids]) as session:
            return session.forward(None)[0].numpy().copy()

    fresh = logits()
    llama.generate(_ask(" ".join(PROMPTS) * 3), Sampling(max_new_tokens=40))  # fills more cells than ids
    assert (logits() == fresh).all()


def test_a_prompt_read_in_slices_gives_the_logits_of_one_reading(llama: Engine, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A batch of requests reads its prompts in slices it can step aside between (experts/engine.py); its
    answers must be the ones a single reading gives, so a request put back and run again answers the same."""
    from experts import llama_runner

    monkeypatch.setattr(llama_runner, "PROMPT_SLICE", 40)  # slices that cut through both prompts
    ids = llama.encode(_ask(" ".join(PROMPTS) * 4))
    assert len(ids) > 3 * llama_runner.PROMPT_SLICE

    def read(interrupted: object) -> object:
        with llama._model_lock, llama.runner.session("", [ids, ids[:50]]) as session:
            return [row.numpy().copy() for row in session.forward(None, interrupted=interrupted)]

    whole, sliced = read(None), read(lambda: False)
    assert all((a == b).all() for a, b in zip(whole, sliced, strict=True))
    with llama._model_lock, llama.runner.session("", [ids]) as session:
        assert session.forward(None, interrupted=lambda: True) is None  # stepped aside after the first slice


def test_kept_readings_stay_within_their_bytes(llama: Engine, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from experts import llama_runner

    runner = llama.runner
    runner._read.clear()
    runner._read_bytes = 0
    llama.answer_logprobs(_ask("Who wrote Hamlet?"), [])  # an empty answer list still reads, and keeps, the prompt
    (state, first), = runner._read.values()
    one = len(state) + first.nbytes
    monkeypatch.setattr(llama_runner, "READ_BYTES_KEPT", 4 * one + one // 2)  # room for four
    asked = ["Who wrote Macbeth?", "Who wrote Othello?", "Who wrote Lear?", "Who wrote Emma?"]
    for text in asked:
        llama.answer_logprobs(_ask(text), ["Shakespeare"])
    assert len(runner._read) == 4 and runner._read_bytes == sum(len(s) + f.nbytes for s, f in runner._read.values())
    assert list(runner._read) == [("", tuple(llama.encode(_ask(text)))) for text in asked]  # the oldest went first
    monkeypatch.setattr(llama_runner, "READ_BYTES_KEPT", 2 * one)
    llama.answer_logprobs(_ask("Who wrote Persuasion?"), [])
    assert len(runner._read) == 4  # more than a quarter of the budget: not kept, nothing pushed out for it


def test_a_seed_reproduces_its_sample(llama: Engine) -> None:
    def sample(seed: int) -> str:
        return llama.generate(_ask("Tell me a short story."), Sampling(max_new_tokens=24, temperature=1.0,
                                                                       seed=seed)).text

    first = sample(7)
    assert sample(7) == first
    assert len({first, sample(8), sample(9)}) > 1


def _logits(engine: Engine, adapter: str, ids: list[int]):  # type: ignore[no-untyped-def]
    with engine.runner.session(adapter, [ids]) as session:
        return session.forward(None)[0]


def _effect_correlation(llama_engine: Engine, model, ids: list[int]) -> float:  # type: ignore[no-untyped-def]
    """Correlation between what the adapter does to the next-token logits in llama.cpp and in PyTorch."""
    import torch

    with torch.no_grad():
        torch_with = model(input_ids=torch.tensor([ids])).logits[0, -1]
        with model.disable_adapter():
            torch_without = model(input_ids=torch.tensor([ids])).logits[0, -1]
    name = llama_engine.adapters["lora"]
    llama_effect = _logits(llama_engine, name, ids) - _logits(llama_engine, "", ids)
    return float(torch.corrcoef(torch.stack([torch_with - torch_without, llama_effect]))[0, 1])


def _served(directory: Path) -> Engine:
    engine = Engine(load_base("embedded", backend="llama-cpp"), Limits(max_batch=2, max_prompt_tokens=128))
    engine.add_adapter("lora", str(directory))
    return engine


def test_a_peft_adapter_acts_in_llama_cpp_as_in_pytorch(lora, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    directory, model = lora
    engine = _served(directory)
    ids = list(engine.encode(_ask(PROMPTS[1])))
    assert _effect_correlation(engine, model, ids) > 0.9
    # the query and key projections alone, whose rows llama.cpp orders its own way: right only when reordered
    qk_directory, qk_model = _random_lora(tmp_path / "qk", ["q_proj", "k_proj"], scale=1.0)
    assert _effect_correlation(_served(qk_directory), qk_model, ids) > 0.9
    monkeypatch.setattr(lora_gguf, "_rotary_rows", lambda matrix, heads: matrix)
    assert _effect_correlation(_served(qk_directory), qk_model, ids) < 0.5


def test_base_model_logits_agree_with_pytorch(llama: Engine) -> None:
    import torch

    ids = list(llama.encode(_ask(PROMPTS[3])))  # a clear favourite first token, not a near tie
    with torch.no_grad():
        reference = load_base("embedded").model(input_ids=torch.tensor([ids])).logits[0, -1]
    ours = _logits(llama, "", ids)
    assert int(ours.argmax()) == int(reference.argmax())
    assert float(torch.corrcoef(torch.stack([reference, ours]))[0, 1]) > 0.99


def test_unsupported_adapters_are_refused_with_a_reason(lora, tmp_path: Path) -> None:
    directory, _ = lora
    dora = tmp_path / "dora"
    dora.mkdir()
    config = json.loads((directory / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    (dora / "adapter_model.safetensors").write_bytes((directory / "adapter_model.safetensors").read_bytes())
    with pytest.raises(AdapterFormatError, match="use_dora"):
        write_lora_gguf(dora, tmp_path / "out.gguf", 9, 3)

    import numpy as np
    from safetensors.numpy import save_file

    embed = tmp_path / "embed"
    embed.mkdir()
    (embed / "adapter_config.json").write_text(json.dumps(config))
    save_file({"base_model.model.model.embed_tokens.lora_A.weight": np.zeros((8, 4), np.float32)},
              str(embed / "adapter_model.safetensors"))
    with pytest.raises(AdapterFormatError, match="embed_tokens"):
        write_lora_gguf(embed, tmp_path / "out.gguf", 9, 3)

    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterFormatError, match="adapter_config.json"):
        write_lora_gguf(tmp_path / "empty", tmp_path / "out.gguf", 9, 3)
    (tmp_path / "empty" / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterFormatError, match="adapter_model.safetensors"):
        write_lora_gguf(tmp_path / "empty", tmp_path / "out.gguf", 9, 3)


def test_the_llama_backend_only_takes_the_embedded_model(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="embedded"):
        load_base(str(tmp_path), backend="llama-cpp")
    out = subprocess.run([sys.executable, "-m", "experts.cli", "eval", "--data", __file__, "--base", str(tmp_path),
                          "--backend", "llama-cpp"], capture_output=True, text=True)
    assert out.returncode == 1 and "serves the embedded GGUF model" in out.stderr


def test_llmnet_expert_serve_answers_with_llama_cpp_by_default(lora) -> None:
    """What an operator runs: `llmnet-expert serve` on the embedded model picks llama.cpp by itself and
    serves the base model and a peft adapter over gRPC."""
    import grpc

    from wire.llmnet.expert.v1 import expert_pb2 as pb
    from wire.llmnet.expert.v1 import expert_pb2_grpc

    directory, _ = lora
    proc = subprocess.Popen([sys.executable, "-m", "experts.cli", "serve", "--open", "--listen", "127.0.0.1:0",
                             "--adapter", f"demo={directory}", "--threads", "2", "--max-prompt-tokens", "256"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()
        assert "(llama-cpp)" in banner, banner + (proc.stderr.read() if proc.poll() is not None else "")
        port = banner.split(" on ")[1].split()[0]
        with grpc.insecure_channel(port) as channel:
            stub = expert_pb2_grpc.ExpertServiceStub(channel)
            for domain in ("", "demo"):
                reply = stub.Generate(pb.GenerateRequest(
                    messages=[pb.ChatMessage(role="user", content=PROMPTS[3])],
                    sampling=pb.Sampling(max_new_tokens=12), domain=domain), timeout=120)
                assert reply.completion_tokens > 0 and reply.text
    finally:
        proc.terminate()
        proc.communicate(timeout=60)  # reads the pipes: a child blocked on a full one could not exit


def test_answer_logprob_agrees_with_pytorch_and_prefers_a_fitting_reply(llama: Engine) -> None:
    torch_engine = Engine(load_base("embedded"))
    question = _ask(PROMPTS[3])
    fitting, unfitting = "Hamlet was written by William Shakespeare.", "Seven blue turtles in a teapot."
    ours = {a: llama.answer_logprob(question, a) for a in (fitting, unfitting)}
    assert ours[fitting] > ours[unfitting] + 1
    for answer, value in ours.items():
        assert value == pytest.approx(torch_engine.answer_logprob(question, answer), abs=0.3)


def test_scoring_several_answers_at_once_equals_scoring_each_alone(llama: Engine) -> None:
    """The prompt is decoded once and each reply after it, dropped again for the next: no reply may see
    another's tokens."""
    question = _ask(PROMPTS[3])
    answers = ["William Shakespeare.", "Seven blue turtles in a teapot.", "Hamlet was written by Shakespeare."]
    together = llama.answer_logprobs(question, answers)
    assert together == pytest.approx([llama.answer_logprob(question, a) for a in answers], abs=1e-6)
    assert len(set(together)) == 3


def test_extra_buffer_types_are_off_on_a_cpu_with_amx_and_the_setting_cannot_be_lost() -> None:
    """On this kind of machine (AMX) llama.cpp's AMX kernel crashed the process at the first decode."""
    import ctypes

    from experts.llama_runner import set_extra_buffer_types, use_extra_buffer_types

    amx = "processor\t: 0\nflags\t\t: fpu avx2 avx512f amx_bf16 amx_tile amx_int8\n"
    assert use_extra_buffer_types(amx) is False
    assert use_extra_buffer_types(amx.replace(" amx_bf16 amx_tile amx_int8", "")) is True
    assert use_extra_buffer_types("") is True

    class Old(ctypes.Structure):  # a llama-cpp-python from before the field existed
        _fields_ = [("n_gpu_layers", ctypes.c_int32)]

    class New(ctypes.Structure):
        _fields_ = [("n_gpu_layers", ctypes.c_int32), ("use_extra_bufts", ctypes.c_bool)]

    with pytest.raises(RuntimeError, match="use_extra_bufts"):
        set_extra_buffer_types(Old(), False)
    params = New(use_extra_bufts=True)
    set_extra_buffer_types(params, False)
    assert params.use_extra_bufts is False
