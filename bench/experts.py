"""Expert serving and training figures, each a ratio against a baseline measured in the same run.

    python bench/experts.py [--base embedded|DIR] [--json]

1. gRPC overhead: the same prompts through ExpertService.Generate on loopback vs engine.generate
   in process (goal <= 1.05).
2. Batching: 8 concurrent gRPC clients, dynamic batching on vs off (max_batch 1), tokens/s (goal >= 3x).
3. Training: tokens/s of our training loop (experts.train.run_epochs) vs a plain peft + transformers
   loop over the same examples and batch size (goal >= 0.95).
4. Memory: resident (and peak) RSS of a process serving 3 LoRA adapters vs 1, after one answer per adapter.
5. llama.cpp (`--only llama-cpp`, not in the default run: it builds llama-cpp-python once, see
   bench/llama_baseline.py): single-stream decode tokens/s, time to first token and total tokens/s of 8
   concurrent clients, ours vs llama.cpp on the embedded GGUF (greedy, 2 threads, 128 new tokens).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc  # noqa: E402

from bench.llama_baseline import versus_llama_cpp  # noqa: E402
from experts.engine import Engine, Limits, Sampling  # noqa: E402
from experts.models import load_base  # noqa: E402
from experts.server import ExpertIdentity, create_server  # noqa: E402
from experts.train import Example, TrainConfig, run_epochs  # noqa: E402
from wire.llmnet.expert.v1 import expert_pb2 as pb  # noqa: E402
from wire.llmnet.expert.v1 import expert_pb2_grpc  # noqa: E402

PROMPTS = ["What is the capital of France?", "Name a primary colour.", "What is 2 + 2?", "Who wrote Hamlet?",
           "What is water made of?", "Name a planet.", "What language is spoken in Spain?", "What is a kestrel?"]
TOKENS = 24


def _serve(engine: Engine) -> tuple[grpc.Server, expert_pb2_grpc.ExpertServiceStub, grpc.Channel]:
    server, port = create_server(engine, ExpertIdentity(None, "bench"))
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    return server, expert_pb2_grpc.ExpertServiceStub(channel), channel


def _request(prompt: str) -> pb.GenerateRequest:
    return pb.GenerateRequest(messages=[pb.ChatMessage(role="user", content=prompt)],
                              sampling=pb.Sampling(max_new_tokens=TOKENS))


def grpc_overhead(base: str) -> dict[str, float]:
    engine = Engine(load_base(base), Limits(max_batch=1, batch_window_ms=0))
    server, stub, channel = _serve(engine)
    try:
        stub.Generate(_request(PROMPTS[0]))  # warm both paths
        t0 = time.perf_counter()
        local = [engine.generate([{"role": "user", "content": p}], Sampling(max_new_tokens=TOKENS)).text
                 for p in PROMPTS]
        t1 = time.perf_counter()
        remote = [stub.Generate(_request(p)).text for p in PROMPTS]
        t2 = time.perf_counter()
    finally:
        channel.close()
        server.stop(0)
        engine.close()
    assert local == remote, "gRPC and in-process answers differ"
    return {"in_process_s": t1 - t0, "grpc_s": t2 - t1, "ratio": (t2 - t1) / (t1 - t0)}


def _clients(stub: expert_pb2_grpc.ExpertServiceStub, clients: int, per_client: int) -> tuple[int, float]:
    def one(c: int) -> int:
        return sum(stub.Generate(_request(PROMPTS[(c + i) % len(PROMPTS)])).completion_tokens
                   for i in range(per_client))

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        tokens = sum(pool.map(one, range(clients)))
    return tokens, time.perf_counter() - t0


def batching(base: str, clients: int = 8, per_client: int = 3) -> dict[str, float]:
    loaded = load_base(base)
    out: dict[str, float] = {}
    for label, max_batch in (("unbatched", 1), ("batched", clients)):
        engine = Engine(loaded, Limits(max_batch=max_batch, max_concurrent=clients, batch_window_ms=10))
        server, stub, channel = _serve(engine)
        try:
            _clients(stub, clients, 1)  # warm-up
            tokens, seconds = _clients(stub, clients, per_client)
        finally:
            channel.close()
            server.stop(0)
            engine.close()
        out[f"{label}_tokens_per_s"] = tokens / seconds
        if max_batch > 1:
            out["batches_run"] = engine.batches_run
    out["ratio"] = out["batched_tokens_per_s"] / out["unbatched_tokens_per_s"]
    return out


def _examples(n: int = 32) -> list[Example]:
    rng = random.Random(0)
    words = "kestrel compiler station orbit herb tea dose cargo route module keyword function".split()
    return [Example([{"role": "user", "content": f"What does {rng.choice(words)} {i} mean in the manual?"}],
                    f"It means {' '.join(rng.choices(words, k=6))}.") for i in range(n)]


def _plain_loop(model, tokenizer, examples: list[Example], cfg: TrainConfig) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """What one writes from the peft/transformers docs: tokenizer padding, labels = inputs, AdamW."""
    import torch

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    texts = [tokenizer.apply_chat_template(ex.messages + [{"role": "assistant", "content": ex.answer}],
                                           tokenize=False) for ex in examples]
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.train()
    tokens, t0 = 0, time.perf_counter()
    for _ in range(cfg.epochs):
        for i in range(0, len(texts), cfg.batch_size):
            batch = tokenizer(texts[i:i + cfg.batch_size], return_tensors="pt", padding=True, truncation=True,
                              max_length=cfg.max_length)
            labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
            loss = model(**batch, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            tokens += int(batch["attention_mask"].sum())
    seconds = time.perf_counter() - t0
    return {"tokens": tokens, "seconds": seconds, "tokens_per_second": tokens / seconds}


def training(base: str) -> dict[str, float]:
    from peft import LoraConfig, get_peft_model

    cfg = TrainConfig(epochs=1, batch_size=8)
    examples = _examples()
    import torch

    results = {}
    for label in ("plain", "ours"):
        torch.manual_seed(0)
        loaded = load_base(base)
        model = get_peft_model(loaded.model, LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha,
                                                        target_modules=list(cfg.target_modules)))
        if label == "ours":
            results[label] = run_epochs(model, loaded.tokenizer, examples, cfg, random.Random(0), progress=False)
        else:
            results[label] = _plain_loop(model, loaded.tokenizer, examples, cfg)
    return {"ours_tokens_per_s": results["ours"]["tokens_per_second"],
            "plain_tokens_per_s": results["plain"]["tokens_per_second"],
            "ratio": results["ours"]["tokens_per_second"] / results["plain"]["tokens_per_second"]}


MEMORY_CHILD = """
import json, resource, sys
from experts.engine import Engine, Sampling
from experts.models import load_base
engine = Engine(load_base(sys.argv[1]))
for i, d in enumerate(sys.argv[2:]):
    engine.add_adapter(f"d{i}", d)
for d in [""] + list(engine.adapters):
    engine.generate([{"role": "user", "content": "hello"}], Sampling(max_new_tokens=8), d)
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "rss_mb": int(status["VmRSS"].split()[0]) / 1024}))
"""


def memory(base: str) -> dict[str, float]:
    from peft import LoraConfig, get_peft_model

    cfg = TrainConfig()
    with tempfile.TemporaryDirectory() as tmp:
        dirs = []
        for i in range(3):
            model = get_peft_model(load_base(base).model, LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha,
                                                                     target_modules=list(cfg.target_modules),
                                                                     init_lora_weights=False))
            dirs.append(str(Path(tmp) / f"a{i}"))
            model.save_pretrained(dirs[-1])
        root = str(Path(__file__).resolve().parent.parent)
        rss = {}
        for n in (1, 3):
            out = subprocess.run([sys.executable, "-c", MEMORY_CHILD, base, *dirs[:n]], capture_output=True,
                                 text=True, check=True, cwd=root)
            rss[n] = json.loads(out.stdout.strip().splitlines()[-1])
    return {"one_adapter_rss_mb": rss[1]["rss_mb"], "three_adapters_rss_mb": rss[3]["rss_mb"],
            "ratio": rss[3]["rss_mb"] / rss[1]["rss_mb"], "one_adapter_peak_mb": rss[1]["peak_rss_mb"],
            "three_adapters_peak_mb": rss[3]["peak_rss_mb"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", default="embedded")
    p.add_argument("--json", action="store_true")
    p.add_argument("--only", choices=("grpc", "batching", "training", "memory", "llama-cpp"))
    p.add_argument("--backend", choices=("auto", "torch", "llama-cpp"), default="auto",
                   help="our engine's backend in the llama.cpp comparison (default auto: what llmnet-expert serves)")
    p.add_argument("--llama-python",
                   help="a Python that imports llama_cpp (default: build one, see bench/llama_baseline.py)")
    args = p.parse_args()
    parts = {"grpc": grpc_overhead, "batching": batching, "training": training, "memory": memory,
             "llama-cpp": lambda base: versus_llama_cpp(args.llama_python, args.backend)}
    results = {}
    for name, fn in parts.items():
        if args.only != name and (args.only or name == "llama-cpp"):
            continue
        results[name] = fn(args.base)
        if not args.json:
            print(f"{name:9} " + "  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                           for k, v in results[name].items()), flush=True)
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
