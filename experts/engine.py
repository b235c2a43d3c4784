"""Generation: one base model in memory, LoRA adapters chosen per request.

The token loop is our own (with the KV cache), so one code path gives streaming, stop strings,
seeded sampling, limits and cancellation. Requests run one at a time on the model.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from experts.models import LoadedModel


class EngineError(Exception):
    """A request the engine refuses; `kind` says which gRPC status it maps to."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind  # "invalid", "not_found", "exhausted"


@dataclass(frozen=True)
class Limits:
    max_prompt_tokens: int = 2048
    max_new_tokens: int = 256
    max_concurrent: int = 4


@dataclass
class Sampling:
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop", "length" or "cancelled"


ROLES = ("system", "user", "assistant")


class Engine:
    def __init__(self, loaded: LoadedModel, limits: Limits = Limits()) -> None:
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.model_id = loaded.model_id
        self.limits = limits
        self.adapters: dict[str, str] = {}  # domain -> adapter name inside the peft model
        self._lock = threading.Lock()

    def add_adapter(self, domain: str, path: str) -> None:
        from peft import PeftModel

        name = "llmnet_" + domain.replace("-", "_")  # never a torch attribute like "eval"
        if not self.adapters:
            self.model = PeftModel.from_pretrained(self.model, path, adapter_name=name)
        else:
            self.model.load_adapter(path, adapter_name=name)
        self.model.eval()
        self.adapters[domain] = name

    def _encode(self, messages: list[dict[str, str]]) -> Any:
        if not messages:
            raise EngineError("invalid", "messages must not be empty")
        for m in messages:
            if m.get("role") not in ROLES:
                raise EngineError("invalid", f"message role must be one of {ROLES}, got {m.get('role')!r}")
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True,
                                                 return_tensors="pt")["input_ids"]
        if ids.shape[1] > self.limits.max_prompt_tokens:
            limit = self.limits.max_prompt_tokens
            raise EngineError("invalid", f"prompt is {ids.shape[1]} tokens, the limit is {limit}")
        return ids

    def generate(self, messages: list[dict[str, str]], sampling: Sampling, domain: str = "",
                 on_text: Callable[[str], None] | None = None, cancelled: Callable[[], bool] | None = None
                 ) -> Generation:
        """Raises EngineError for bad requests; calls on_text with each new piece of text."""
        if domain and domain not in self.adapters:
            raise EngineError("not_found", f"no adapter for domain {domain!r}; have {sorted(self.adapters)}")
        if sampling.max_new_tokens < 1 or sampling.max_new_tokens > self.limits.max_new_tokens:
            raise EngineError("invalid", f"max_new_tokens must be 1..{self.limits.max_new_tokens}")
        if sampling.temperature < 0 or not 0 < sampling.top_p <= 1:
            raise EngineError("invalid", "temperature must be >= 0 and top_p in (0, 1]")
        ids = self._encode(messages)
        with self._lock:
            return self._run(ids, sampling, domain, on_text, cancelled or (lambda: False))

    def _run(self, ids: Any, sampling: Sampling, domain: str, on_text: Callable[[str], None] | None,
             cancelled: Callable[[], bool]) -> Generation:
        import torch

        generator = torch.Generator().manual_seed(sampling.seed)
        eos = self._eos_ids()
        out: list[int] = []
        text, reason, past, step_ids = "", "length", None, ids
        context = self._adapter_context(domain)
        with torch.no_grad(), context:
            for _ in range(sampling.max_new_tokens):
                if cancelled():
                    reason = "cancelled"
                    break
                result = self.model(input_ids=step_ids, past_key_values=past, use_cache=True)
                past = result.past_key_values
                token = _pick(result.logits[0, -1], sampling, generator)
                if token in eos:
                    reason = "stop"
                    break
                out.append(token)
                full = self.tokenizer.decode(out, skip_special_tokens=True)
                hit = min((full.find(s) for s in sampling.stop if s and s in full), default=-1)
                if hit >= 0:
                    full, reason = full[:hit], "stop"
                if on_text is not None and len(full) > len(text):
                    on_text(full[len(text):])
                text = full
                if reason == "stop":
                    break
                step_ids = torch.tensor([[token]])
        return Generation(text, int(ids.shape[1]), len(out), reason)

    def _eos_ids(self) -> set[int]:
        ids = {self.tokenizer.eos_token_id}
        configured = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        if isinstance(configured, int):
            ids.add(configured)
        elif configured:
            ids.update(configured)
        return {i for i in ids if i is not None}

    def _adapter_context(self, domain: str) -> Any:
        import contextlib

        if not self.adapters:
            return contextlib.nullcontext()
        if not domain:
            return self.model.disable_adapter()
        self.model.set_adapter(self.adapters[domain])
        return contextlib.nullcontext()


def _pick(logits: Any, sampling: Sampling, generator: Any) -> int:
    import torch

    if sampling.temperature == 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / sampling.temperature, dim=-1)
    if sampling.top_p < 1:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < sampling.top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
        probs = probs / probs.sum()
    return int(torch.multinomial(probs, 1, generator=generator))
