"""The llama.cpp backend of the engine: the embedded GGUF served by llama.cpp's own kernels.

The quantized model stays quantized (a fraction of the float model's memory traffic per token, which is
what bounds decoding on a CPU), and a batch's rows are llama.cpp sequences decoded together. Each
sequence has a KV cache of its own (not llama.cpp's unified one): attention then reads only that
sequence's keys, in the same order whoever else is in the batch, so a batched answer is exactly the one
the request gets alone. LoRA adapters are converted from peft's format on load (experts/lora_gguf.py)
and set on the context per batch; one model in memory serves them all.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from experts.lora_gguf import write_lora_gguf

_init_lock = threading.Lock()
_initialised = False

PROMPT_SLICE = 128
"""Prompt tokens read per decode when a batch may have to step aside (experts/engine.py): about 0.8 s on one
thread of this kind of CPU, the longest urgent work then waits for a requester's long prompts."""
READ_BYTES_KEPT = 96 * 2**20
"""The last prompts' readings (KV cache and next-token log-probabilities) kept for reply_logprobs, within this
many bytes (about 23 KB a token on the embedded model: a 300-token prompt with notes is 7 MB). A query's
prompt is read again and again: a respondent generates its answer from it (alone in its batch: kept), then in
the next round weighs its answer against its peers' (experts/daemon.py); a scorer judges some answers ahead
and the new ones later (experts/scorebook.py). Restoring a reading spares decoding the prompt each time.
Bounded in bytes, not entries: anyone who may ask can send long prompts, each costing tens of megabytes."""


def use_extra_buffer_types(cpuinfo: str | None = None) -> bool:
    """Whether to let llama.cpp re-lay weights for its special kernels ("extra buffer types"). Not on a CPU with
    AMX (Intel Xeon since Sapphire Rapids, common in clouds): there that means llama.cpp's AMX kernel, which
    crashed the process (SIGSEGV in ggml_backend_amx_mul_mat) at the first decode of the embedded Q4_1 model.
    Elsewhere they stay on (CPU_REPACK can re-lay the Q8_0 embedding, which is also the output layer)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    flags = {word for line in cpuinfo.splitlines() if line.startswith("flags") for word in line.split()}
    return "amx_tile" not in flags


def set_extra_buffer_types(params: Any, on: bool) -> None:
    """ctypes accepts any attribute on a Structure: a llama-cpp-python without the field would ignore it."""
    if "use_extra_bufts" not in {name for name, *_ in type(params)._fields_}:
        raise RuntimeError("this llama-cpp-python has no use_extra_bufts model parameter; install the pinned one")
    params.use_extra_bufts = on


def _torch_single_threaded() -> None:
    """torch, which only embeds questions in a process serving with llama.cpp (experts/meaning.py), on one thread:
    its own OpenMP team would count against the cores too (LlamaRunner._decoder) and slow every decode far more
    than a second thread speeds an embedding up (25 ms on one thread, 32 ms on two). Done before torch first
    computes, since a team once started lingers (the runner is made before any adapter's notes are embedded)."""
    import torch

    torch.set_num_threads(1)


def available() -> bool:
    """Whether llama-cpp-python is installed (make install builds it)."""
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def _library() -> Any:
    global _initialised
    import llama_cpp
    from llama_cpp import _logger

    with _init_lock:
        if not _initialised:
            _logger.set_verbose(False)  # llama.cpp's load chatter off; its errors still reach stderr
            llama_cpp.llama_backend_init()
            _initialised = True
    return llama_cpp


class LlamaSession:
    """One batch of prompts being generated from: row i is llama.cpp sequence i."""

    def __init__(self, runner: LlamaRunner, adapter: str, prompts: list[list[int]]) -> None:
        self.runner, self.adapter, self.prompts = runner, adapter, prompts
        self.lengths = [len(p) for p in prompts]

    def forward(self, tokens: list[int | None] | None,
                interrupted: Callable[[], bool] | None = None) -> list[Any] | None:
        """Logits of each row's next token: first (tokens None) after the prompts, then after feeding
        tokens[i] to row i (rows given None are finished: not decoded, their logits None). With interrupted,
        the prompts are read in slices of PROMPT_SLICE tokens, and None is returned (the batch left half
        read) as soon as interrupted() says so between two of them."""
        if tokens is None:
            feed = [(row, 0, prompt) for row, prompt in enumerate(self.prompts)]
        else:
            feed = [(row, self.lengths[row], [t]) for row, t in enumerate(tokens) if t is not None]
            for row, _, _ in feed:
                self.lengths[row] += 1
        outputs = self.runner.decode(feed, interrupted)
        if outputs is None:
            return None
        if tokens is None and len(self.prompts) == 1:
            # a lone prompt is read exactly as reply_logprobs reads it (one decode, logits at its end), so its
            # scores are the same whichever reading they start from; a batch's kernels may round otherwise
            first = self.runner._log_softmax(outputs[0].numpy().astype("float64"))
            self.runner._keep(self.adapter, self.prompts[0], first)
        return [outputs.get(row) for row in range(len(self.prompts))]


class LlamaRunner:
    name = "llama-cpp"

    def __init__(self, gguf: str | Path, sequences: int, sequence_tokens: int, threads: int = 0) -> None:
        lib = self.lib = _library()
        _torch_single_threaded()
        self.sequences, self.sequence_tokens = sequences, sequence_tokens
        params = lib.llama_model_default_params()
        set_extra_buffer_types(params, use_extra_buffer_types())
        self.model = lib.llama_model_load_from_file(str(gguf).encode(), params)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {gguf}")
        self.vocab = lib.llama_model_get_vocab(self.model)
        self.n_vocab = lib.llama_vocab_n_tokens(self.vocab)
        self.heads, self.kv_heads = lib.llama_model_n_head(self.model), lib.llama_model_n_head_kv(self.model)
        cp = lib.llama_context_default_params()
        cp.n_seq_max = sequences
        cp.n_ctx = sequences * -(-sequence_tokens // 256) * 256  # llama.cpp sizes contexts in steps of 256
        cp.n_batch = cp.n_ctx  # every prompt of a batch in one decode call (llama.cpp splits it in ubatches)
        cp.n_ubatch = min(512, cp.n_ctx)
        cp.kv_unified = False
        cp.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_DISABLED  # the faster of the two on these CPUs
        cp.n_threads = cp.n_threads_batch = threads or os.cpu_count() or 1
        cp.no_perf = True
        self.ctx = lib.llama_init_from_model(self.model, cp)
        if not self.ctx:
            raise RuntimeError(f"llama.cpp could not make a context of {cp.n_ctx} tokens")
        if lib.llama_n_ctx_seq(self.ctx) < sequence_tokens:
            raise RuntimeError(f"llama.cpp gave sequences of {lib.llama_n_ctx_seq(self.ctx)} tokens, "
                               f"not {sequence_tokens}")
        self.memory = lib.llama_get_memory(self.ctx)
        self._decoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama-decode")
        """Every llama_decode runs on this one thread. llama.cpp's CPU kernels run on OpenMP, whose runtime keeps
        a team of threads for each thread that ever starts one; once the process holds more such threads than
        cores (the engine's worker generating, a scorer's thread reading answers, torch's own team), every
        team's threads stop spinning between the kernels of a step and sleep instead: each decode took 1.7x as
        long (bench/experts.py, `threads` in the README)."""
        self.batch = lib.llama_batch_init(cp.n_batch, 0, 1)
        self.adapters: dict[str, Any] = {}
        self._read: OrderedDict[tuple[str, tuple[int, ...]], tuple[Any, Any]] = OrderedDict()
        """(adapter, prompt) -> (sequence 0's state after reading prompt, log-probabilities of the next token)."""
        self._read_bytes = 0

    def add_adapter(self, name: str, path: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            converted = Path(tmp) / "lora.gguf"
            write_lora_gguf(path, converted, self.heads, self.kv_heads)
            adapter = self.lib.llama_adapter_lora_init(self.model, str(converted).encode())
        if not adapter:
            raise RuntimeError(f"llama.cpp refused the adapter in {path}")
        self.adapters[name] = adapter
        for key in [k for k in self._read if k[0] == name]:  # read with the weights this name had before
            self._forget_read(key)

    def eos_ids(self, tokenizer_eos: int | None) -> set[int]:
        ids = {tokenizer_eos, self.lib.llama_vocab_eos(self.vocab), self.lib.llama_vocab_eot(self.vocab)}
        return {i for i in ids if i is not None and i >= 0}

    def _use(self, adapter: str, prompts: list[list[int]]) -> None:
        """Set adapter (a name given to add_adapter, or "" for the base model) and empty every sequence."""
        if len(prompts) > self.sequences:
            raise ValueError(f"a batch of {len(prompts)} exceeds the context's {self.sequences} sequences")
        if any(len(p) >= self.sequence_tokens for p in prompts):
            raise ValueError(f"a prompt does not fit a sequence of {self.sequence_tokens} tokens")
        lib = self.lib
        if adapter:
            chosen = (lib.llama_adapter_lora_p_ctypes * 1)(self.adapters[adapter])
            status = lib.llama_set_adapters_lora(self.ctx, chosen, 1, (ctypes.c_float * 1)(1.0))
        else:
            status = lib.llama_set_adapters_lora(self.ctx, None, 0, None)
        if status != 0:
            raise RuntimeError(f"llama.cpp could not set adapter {adapter!r} (status {status})")
        lib.llama_memory_clear(self.memory, False)  # cells marked free are never read: zeroing them cost 50 ms

    @contextlib.contextmanager
    def session(self, adapter: str, prompts: list[list[int]]) -> Iterator[LlamaSession]:
        """A batch run with adapter (a name given to add_adapter, or "" for the base model)."""
        self._use(adapter, prompts)
        yield LlamaSession(self, adapter, prompts)

    def reply_logprobs(self, adapter: str, prompt: list[int], replies: list[list[int]]) -> list[list[float]]:
        """For each reply, log P(token | prompt and the reply before it) of each of its tokens. The prompt is
        decoded once; each reply is decoded after it, then dropped from the cache for the next."""
        if any(len(prompt) + len(r) > self.sequence_tokens for r in replies):
            raise ValueError(f"a prompt and reply exceed a sequence of {self.sequence_tokens} tokens")
        self._use(adapter, [prompt])
        first = self._read_prompt(adapter, prompt)
        out = []
        for reply in replies:
            rows = self._decode_one(reply, len(prompt), list(range(len(reply) - 1)))
            out.append([float(first[reply[0]])] +
                       [float(self._log_softmax(row)[token]) for row, token in zip(rows, reply[1:], strict=True)])
            self.lib.llama_memory_seq_rm(self.memory, 0, len(prompt), -1)
        return out

    def _read_prompt(self, adapter: str, prompt: list[int]) -> Any:
        """Decode prompt into the emptied sequence 0, or restore a reading kept from before (the same cells and
        values: replies then score exactly as after a fresh reading); the next token's log-probabilities."""
        key = (adapter, tuple(prompt))
        kept = self._read.get(key)
        if kept is not None:
            state, first = kept
            if self.lib.llama_state_seq_set_data(self.ctx, state, len(state), 0) > 0:
                self._read.move_to_end(key)
                return first
            self.lib.llama_memory_clear(self.memory, True)  # a failed restore may leave part of it: read afresh
            self._forget_read(key)
        first = self._log_softmax(self._decode_one(prompt, 0, [len(prompt) - 1])[0])
        self._keep(adapter, prompt, first)
        return first

    def _keep(self, adapter: str, prompt: list[int], first: Any) -> None:
        """Keep sequence 0's state, just after reading prompt with adapter, for _read_prompt."""
        size = self.lib.llama_state_seq_get_size(self.ctx, 0)
        if size + first.nbytes > READ_BYTES_KEPT // 4:
            return  # one long prompt would push out several others
        try:
            state = (ctypes.c_uint8 * size)()
        except MemoryError:
            return  # only a saving: the answer being generated must not fail for it
        if self.lib.llama_state_seq_get_data(self.ctx, state, size, 0) != size:
            return
        key = (adapter, tuple(prompt))
        self._forget_read(key)
        self._read[key] = (state, first)
        self._read_bytes += size + first.nbytes
        while self._read_bytes > READ_BYTES_KEPT:
            self._forget_read(next(iter(self._read)))

    def _forget_read(self, key: tuple[str, tuple[int, ...]]) -> None:
        kept = self._read.pop(key, None)
        if kept is not None:
            self._read_bytes -= len(kept[0]) + kept[1].nbytes

    def _decode_one(self, tokens: list[int], start: int, wanted: list[int]) -> list[Any]:
        """Decode tokens into sequence 0 from position start; the logits after each token index in wanted."""
        want = set(wanted)
        self._run_batch([(token, start + n, 0, n in want) for n, token in enumerate(tokens)])
        return [self._logits(n).astype("float64") for n in wanted]

    def _run_batch(self, entries: list[tuple[int, int, int, bool]]) -> None:
        """One llama_decode of (token, position, sequence, logits wanted) entries."""
        if not entries:
            return
        b = self.batch
        for n, (token, pos, seq, want) in enumerate(entries):
            b.token[n], b.pos[n], b.n_seq_id[n], b.seq_id[n][0], b.logits[n] = token, pos, 1, seq, want
        b.n_tokens = len(entries)
        status = self._decoder.submit(self.lib.llama_decode, self.ctx, b).result()
        if status != 0:
            raise RuntimeError(f"llama_decode failed with status {status}")

    def _logits(self, index: int) -> Any:
        """A copy of the logits after batch entry index (llama.cpp reuses its buffer at the next decode)."""
        import numpy as np

        return np.ctypeslib.as_array(self.lib.llama_get_logits_ith(self.ctx, index), shape=(self.n_vocab,)).copy()

    @staticmethod
    def _log_softmax(row: Any) -> Any:
        import numpy as np

        top = row.max()
        return row - top - np.log(np.exp(row - top).sum())

    def decode(self, feed: list[tuple[int, int, list[int]]],
               interrupted: Callable[[], bool] | None = None) -> dict[int, Any] | None:
        """Decode feed's (row, position of the first token, tokens); the logits after each row's last token.
        With interrupted: in slices of PROMPT_SLICE entries, None as soon as interrupted() holds between two
        (every token's result is its own whatever else shares its decode: slicing changes no logit)."""
        import torch

        entries, last = [], {}
        for row, start, tokens in feed:
            if start + len(tokens) > self.sequence_tokens:
                raise ValueError(f"sequence {row} outgrew its {self.sequence_tokens} tokens")
            entries += [(token, start + i, row, i == len(tokens) - 1) for i, token in enumerate(tokens)]
            last[row] = len(entries) - 1
        step = PROMPT_SLICE if interrupted is not None else max(1, len(entries))
        out = {}
        for begin in range(0, len(entries), step):
            if begin and interrupted is not None and interrupted():
                return None
            self._run_batch(entries[begin:begin + step])
            out.update({row: torch.from_numpy(self._logits(index - begin)) for row, index in last.items()
                        if begin <= index < begin + step})
        return out
