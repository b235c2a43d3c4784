"""The PyTorch backend of the engine: a transformers model, LoRA adapters through peft.

A batch is left-padded with an attention mask and advanced with the model's KV cache. It serves any
local Hugging Face model (the tests' tiny ones included) and is the model training works on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


def _cache_argument(model: Any) -> str:
    """The forward argument that carries the KV cache: `cache` in recent transformers, which deprecated
    `past_key_values` (to go in 5.40); older releases know only `past_key_values`."""
    import inspect

    from experts.models import causal_lm

    return "cache" if "cache" in inspect.signature(type(causal_lm(model)).forward).parameters else "past_key_values"


class TorchSession:
    """One batch of prompts being generated from, row i for prompt i."""

    def __init__(self, model: Any, prompts: list[list[int]], pad_id: int) -> None:
        import torch

        self.model, self.pad_id = model, pad_id
        self.cache_argument = _cache_argument(model)
        width = max(len(p) for p in prompts)
        self.input_ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
        self.mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        self.positions = (self.mask.cumsum(-1) - 1).clamp(min=0)
        self.past: Any = None

    def forward(self, tokens: list[int | None] | None, interrupted: Any = None) -> list[Any]:
        """Logits of each row's next token: first (tokens None) after the prompts, then after feeding
        tokens[i] to row i (None: the row is finished and gets padding). The prompts are read in one pass
        (interrupted, which the llama.cpp backend checks between slices of them, is not asked)."""
        import torch

        if tokens is not None:
            self.input_ids = torch.tensor([[self.pad_id if t is None else t] for t in tokens])
            self.mask = torch.cat([self.mask, torch.ones((len(tokens), 1), dtype=self.mask.dtype)], dim=1)
            self.positions = self.positions[:, -1:] + 1
        result = self.model(input_ids=self.input_ids, attention_mask=self.mask, position_ids=self.positions,
                            use_cache=True, **{self.cache_argument: self.past})
        self.past = result.cache if "cache" in result else result.past_key_values
        return [result.logits[i, -1] for i in range(result.logits.shape[0])]


class TorchRunner:
    name = "torch"

    def __init__(self, model: Any, pad_id: int) -> None:
        self.model = model
        self.pad_id = pad_id
        self._peft = False

    def add_adapter(self, name: str, path: str) -> None:
        from peft import PeftModel

        if not self._peft:
            self.model = PeftModel.from_pretrained(self.model, path, adapter_name=name)
            self._peft = True
        else:
            self.model.load_adapter(path, adapter_name=name)
        self.model.eval()

    def eos_ids(self, tokenizer_eos: int | None) -> set[int]:
        ids = {tokenizer_eos}
        configured = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        if isinstance(configured, int):
            ids.add(configured)
        elif configured:
            ids.update(configured)
        return {i for i in ids if i is not None}

    @contextlib.contextmanager
    def _adapter(self, adapter: str) -> Iterator[None]:
        import torch

        if not self._peft:
            chosen: Any = contextlib.nullcontext()
        elif not adapter:
            chosen = self.model.disable_adapter()
        else:
            self.model.set_adapter(adapter)
            chosen = contextlib.nullcontext()
        with torch.no_grad(), chosen:
            yield

    @contextlib.contextmanager
    def session(self, adapter: str, prompts: list[list[int]]) -> Iterator[TorchSession]:
        """A batch run with adapter (a name given to add_adapter, or "" for the base model)."""
        with self._adapter(adapter):
            yield TorchSession(self.model, prompts, self.pad_id)

    def reply_logprobs(self, adapter: str, prompt: list[int], replies: list[list[int]]) -> list[list[float]]:
        """For each reply, log P(token | prompt and the reply before it) of each of its tokens."""
        import torch

        out = []
        for reply in replies:
            ids = prompt + reply
            with self._adapter(adapter):
                logits = self.model(input_ids=torch.tensor([ids])).logits[0, len(prompt) - 1:-1]
            picked = torch.log_softmax(logits.double(), dim=-1).gather(1, torch.tensor(reply)[:, None])
            out.append([float(x) for x in picked[:, 0]])
        return out
