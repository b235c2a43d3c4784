"""A peft LoRA adapter written as a llama.cpp LoRA GGUF, so the llama.cpp backend serves the adapters we train.

Our adapters are trained on the Hugging Face layout of the model. llama.cpp's own conversion of a llama
model reorders the rows of the query and key projections (rotary halves interleaved per head), so the
output side of those two adapters (lora_B) gets the same reordering; everything else maps by name.
The scale stays peft's: llama.cpp applies alpha / rank, so a rank-stabilised adapter (alpha / sqrt(rank))
is written with alpha * sqrt(rank).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

GGUF_NAMES = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
              "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}
PEFT_KEY = re.compile(r"^(?:base_model\.model\.)?model\.layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$")


class AdapterFormatError(Exception):
    """An adapter the llama.cpp backend cannot serve (the message says what and why)."""


def _rotary_rows(matrix: Any, heads: int) -> Any:
    """Rows of a query/key projection in llama.cpp's per-head order: each head's two rotary halves interleaved."""
    rows = matrix.shape[0]
    if rows % (2 * heads):
        raise AdapterFormatError(f"a projection of {rows} rows does not split into {heads} heads")
    return matrix.reshape(heads, 2, rows // heads // 2, *matrix.shape[1:]).swapaxes(1, 2).reshape(matrix.shape)


def _config(directory: Path) -> tuple[float, int]:
    """(alpha as llama.cpp applies it, rank) of a plain LoRA; anything else is refused."""
    try:
        cfg = json.loads((directory / "adapter_config.json").read_text())
        rank, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AdapterFormatError(f"{directory}: no readable peft adapter_config.json ({exc})") from None
    if cfg.get("peft_type", "LORA") != "LORA":
        raise AdapterFormatError(f"{directory}: peft_type {cfg.get('peft_type')!r} is not LORA")
    for unsupported in ("use_dora", "modules_to_save", "rank_pattern", "alpha_pattern"):
        if cfg.get(unsupported):
            raise AdapterFormatError(f"{directory}: {unsupported} is not supported by the llama.cpp backend")
    return (alpha * math.sqrt(rank) if cfg.get("use_rslora") else alpha), rank


def write_lora_gguf(directory: str | Path, out: str | Path, heads: int, kv_heads: int) -> None:
    """Write the peft adapter in directory as a llama.cpp LoRA GGUF at out, for a llama model of the
    given attention head counts."""
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    directory = Path(directory)
    alpha, rank = _config(directory)
    try:
        tensors = load_file(str(directory / "adapter_model.safetensors"))
    except Exception as exc:  # noqa: BLE001 - missing, not safetensors, or a dtype numpy lacks (bf16)
        raise AdapterFormatError(f"{directory}: no readable adapter_model.safetensors ({exc})") from None
    writer = gguf.GGUFWriter(str(out), arch="llama")
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", alpha)
    for key in sorted(tensors):
        match = PEFT_KEY.match(key)
        if match is None or match.group(2) not in GGUF_NAMES:
            raise AdapterFormatError(f"{directory}: tensor {key} is not a LoRA of a llama projection")
        layer, module, side = int(match.group(1)), match.group(2), match.group(3)
        weight = tensors[key].astype(np.float32)
        if weight.ndim != 2 or side == "A" and weight.shape[0] != rank or side == "B" and weight.shape[1] != rank:
            raise AdapterFormatError(f"{directory}: tensor {key} of shape {weight.shape} is not rank {rank}")
        if side == "B" and module in ("q_proj", "k_proj"):
            weight = _rotary_rows(weight, heads if module == "q_proj" else kv_heads)
        writer.add_tensor(f"blk.{layer}.{GGUF_NAMES[module]}.weight.lora_{side.lower()}",
                          np.ascontiguousarray(weight))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
