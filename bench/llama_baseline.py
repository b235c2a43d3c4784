"""llama.cpp as the baseline of our expert engine: the same embedded GGUF, the same prompt, greedy, 2 threads.

llama.cpp runs through `llama-cpp-python` (PyPI), installed by this benchmark into a virtualenv of its own
(build/bench-llama-cpp, or --llama-python), never by `make install`: the product does not depend on it.
Building it compiles llama.cpp, several minutes on 2 cores, once.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VERSION = "0.3.36"
VENV = ROOT / "build" / "bench-llama-cpp"
PROMPT = "Write a long story about a lighthouse keeper who finds a map."
NEW_TOKENS, CLIENTS, THREADS = 128, 8, 2

MEASURE = r'''
import json, sys, time
import llama_cpp.llama_cpp as C
from llama_cpp import Llama
gguf, prompt = sys.argv[1], sys.argv[2]
new_tokens, clients, threads, extra_bufts = (int(a) for a in sys.argv[3:7])
_defaults = C.llama_model_default_params

def _params():
    # the engine's setting (experts.llama_runner.use_extra_buffer_types): Llama() has no argument for it
    params = _defaults()
    if "use_extra_bufts" not in {f[0] for f in type(params)._fields_}:
        raise SystemExit("this llama-cpp-python has no use_extra_bufts model parameter")
    params.use_extra_bufts = bool(extra_bufts)
    return params

C.llama_model_default_params = _params
llm = Llama(model_path=gguf, n_ctx=1024, n_threads=threads, n_threads_batch=threads, verbose=False, seed=0)

def one():
    # (seconds to the first token, seconds to the last, tokens)
    llm.reset()  # no reuse of the previous call's prompt: our engine computes every prompt afresh too
    t0, first, n = time.perf_counter(), None, 0
    for _ in llm.create_completion(prompt, max_tokens=new_tokens, temperature=0.0, top_k=1, stream=True):
        first = first or time.perf_counter() - t0
        n += 1
    return first, time.perf_counter() - t0, n

one()
first, total, n = one()
# llama_cpp.Llama serves one sequence at a time, and runs 3x slower when called from another Python thread
# than the main one: its best for 8 clients is their requests one after the other, on the main thread
t0 = time.perf_counter()
done = [one()[2] for _ in range(clients)]
print(json.dumps({"ttft_s": first, "decode_tok_s": (n - 1) / (total - first), "tokens": n,
                  "concurrent_tok_s": sum(done) / (time.perf_counter() - t0)}))
'''


def ensure_python(python: str | None) -> str:
    """An interpreter that imports llama_cpp: the one given, or this benchmark's own virtualenv (made once)."""
    if python:
        return python
    exe = VENV / "bin" / "python"
    if subprocess.run([exe, "-c", "import llama_cpp"], capture_output=True).returncode if exe.exists() else True:
        print(f"building llama-cpp-python {VERSION} into {VENV} (compiles llama.cpp; minutes, once)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
        subprocess.run([exe, "-m", "pip", "install", "--quiet", f"llama-cpp-python=={VERSION}"], check=True)
    return str(exe)


def llama_figures(python: str, gguf: Path, prompt: str) -> dict[str, float]:
    from experts.llama_runner import use_extra_buffer_types

    out = subprocess.run([python, "-c", MEASURE, str(gguf), prompt, str(NEW_TOKENS), str(CLIENTS), str(THREADS),
                          str(int(use_extra_buffer_types()))],
                         capture_output=True, text=True, check=True)
    figures: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return figures


def engine_figures(prompt_messages: list[dict[str, str]], backend: str) -> dict[str, float]:
    """The same measures of our engine, in process, on the embedded model."""
    import torch

    from experts.engine import Engine, Limits, Sampling
    from experts.models import load_base

    torch.set_num_threads(THREADS)
    engine = Engine(load_base("embedded", backend=backend),
                    Limits(max_new_tokens=NEW_TOKENS, max_batch=CLIENTS, max_prompt_tokens=512, threads=THREADS))
    sampling = Sampling(max_new_tokens=NEW_TOKENS)
    # as in a serving expert: the sentence model has ranked a question's notes, a scorer's thread has read
    # answers (each once started OpenMP threads of its own, which slowed every decode 1.7x: llama_runner.py)
    from experts.meaning import shared_embed

    embed = shared_embed()
    if embed is not None:
        embed(["Which notes bear on this question?"])
    scorer = threading.Thread(target=engine.answer_logprobs, args=(prompt_messages, ["Paris"]))
    scorer.start()
    scorer.join()

    def one() -> tuple[float, float, int]:
        t0, first = time.perf_counter(), []
        result = engine.generate(prompt_messages, sampling, on_text=lambda _: first.append(time.perf_counter() - t0))
        return first[0], time.perf_counter() - t0, result.completion_tokens

    one()
    first, total, n = one()
    done: list[int] = []
    t0 = time.perf_counter()
    workers = [threading.Thread(target=lambda: done.append(one()[2])) for _ in range(CLIENTS)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return {"ttft_s": first, "decode_tok_s": (n - 1) / (total - first), "tokens": n,
            "concurrent_tok_s": sum(done) / (time.perf_counter() - t0)}


def versus_llama_cpp(python: str | None = None, backend: str = "auto") -> dict[str, Any]:
    from experts.models import embedded_gguf, load_base

    messages = [{"role": "user", "content": PROMPT}]
    tokenizer = load_base("embedded").tokenizer
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ours = engine_figures(messages, backend)
    theirs = llama_figures(ensure_python(python), embedded_gguf(), prompt)
    return {"engine": ours, "llama_cpp": theirs,
            "single_stream_ratio": ours["decode_tok_s"] / theirs["decode_tok_s"],
            "ttft_ratio": ours["ttft_s"] / theirs["ttft_s"],
            "concurrent_ratio": ours["concurrent_tok_s"] / theirs["concurrent_tok_s"]}
