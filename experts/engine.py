"""Generation: one base model in memory, LoRA adapters chosen per request, dynamic batching.

The token loop is our own (with the KV cache), so one code path gives streaming, stop strings,
seeded sampling, limits and cancellation. Requests go to one worker thread that owns the model:
requests arriving within `batch_window_ms` of each other and naming the same adapter share each
forward pass; different adapters run as separate batches. The forward passes are a backend's: llama.cpp
on the quantized embedded model (experts/llama_runner.py) or PyTorch on any local model
(experts/torch_runner.py); the loop, sampling and sharing above them are the same.

Identical work is done once: a request given a `share` scope (the chain query it serves) joins a
generation already running, or takes a result kept from one just finished, for exactly the same prompt,
adapter and sampling in that scope. The daemon committing a query's answer and the server handing the
same answer to the query's requester early thus cost one generation. Results are deterministic given
prompt, adapter and sampling, so a shared result is the one the caller would have computed; the scope
keeps one requester from learning by timing what another asked.

Chain work comes first: a generation marked `urgent` (the daemon's answers, which have deadlines on chain)
and every answer_logprobs call (scoring) go ahead of the requests the server takes, and a batch of such
requests steps aside, between two decoding steps or two slices of its prompts, when urgent work waits: its
requests are put back and run again later (the same tokens: runs are deterministic; text already streamed is
not sent twice). Otherwise a drawn query's requester, allowed a few requests of its own, could keep the
engine busy for a minute with long prompts and make the expert miss its commit windows: an honest expert
slashed for another's requests.
"""

from __future__ import annotations

import functools
import itertools
import math
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from experts.meaning import served_notes
from experts.models import LoadedModel
from experts.notes import Notes


class ErrorKind(Enum):
    """Why the engine refused a request; the server maps each to one gRPC status."""

    INVALID = "invalid"
    NOT_FOUND = "not_found"
    EXHAUSTED = "exhausted"


class EngineError(Exception):
    """A request the engine refuses; `kind` says why."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Limits:
    max_prompt_tokens: int = 2048
    max_new_tokens: int = 256
    max_concurrent: int = 4
    max_batch: int = 8  # 1 turns batching off
    batch_window_ms: float = 20.0
    threads: int = 0  # llama.cpp's threads (0: one per core); the torch backend follows torch.set_num_threads


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
YIELDED = "yielded"
"""A job's state in a batch that stepped aside for urgent work: put back, never a finish reason."""
KEPT_RESULTS = 128
"""Finished shared generations kept for late joiners (a few per open query)."""


@dataclass
class _Watcher:
    on_text: Callable[[str], None] | None
    cancelled: Callable[[], bool]
    delivered: int = 0
    """Characters of the answer already handed to on_text (a re-run does not repeat them)."""

    def pieces_of(self, full: str) -> str:
        piece = full[self.delivered:]
        self.delivered = max(self.delivered, len(full))
        return piece


@dataclass
class _Job:
    ids: list[int]
    sampling: Sampling
    domain: str
    watchers: list[_Watcher]
    done: threading.Event = field(default_factory=threading.Event)
    text: str = ""
    """The text emitted so far."""
    result: Generation | None = None
    error: BaseException | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    urgent: bool = False
    """Chain work (a caller with a deadline): runs before the others; put back only to leave a batch of
    requests it was joined in, and then ahead of them."""
    order: int = 0
    """Arrival order among jobs of one urgency (kept when a job is put back)."""
    queued: bool = False
    """In the queue and not yet taken by the worker (guarded by the engine's queue lock)."""

    def emit(self, full: str) -> None:
        with self.lock:
            self.text = full
            sends = [(w.on_text, w.pieces_of(full)) for w in self.watchers if w.on_text is not None]
        for on_text, piece in sends:
            if piece:
                on_text(piece)

    def join(self, watcher: _Watcher) -> None:
        """Add a caller to a running job: it gets the text so far at once, then every new piece."""
        with self.lock:
            self.watchers.append(watcher)
            piece = watcher.pieces_of(self.text)
            if watcher.on_text is not None and piece:
                watcher.on_text(piece)

    def cancelled(self) -> bool:
        """Stop only once every caller has gone: the others still want the answer."""
        with self.lock:
            watchers = list(self.watchers)
        return all(w.cancelled() for w in watchers)


def _share_key(scope: Hashable, ids: list[int], sampling: Sampling, domain: str) -> tuple[object, ...]:
    seed = sampling.seed if sampling.temperature > 0 else 0  # greedy ignores the seed
    return (scope, domain, tuple(ids), sampling.max_new_tokens, sampling.temperature, sampling.top_p, seed,
            tuple(sampling.stop))


class Engine:
    def __init__(self, loaded: LoadedModel, limits: Limits = Limits()) -> None:
        self.tokenizer = loaded.tokenizer
        self.model_id = loaded.model_id
        self.limits = limits
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else \
            self.tokenizer.eos_token_id
        self.runner = _runner(loaded, limits, self.pad_id)
        self.backend = self.runner.name
        self.adapters: dict[str, str] = {}  # domain -> adapter name inside the runner
        self._notes: dict[str, Notes] = {}  # domain -> the notes beside its adapter (experts/notes.py)
        self._model_lock = threading.Lock()
        self._jobs: queue.PriorityQueue[tuple[int, int, _Job | None]] = queue.PriorityQueue()
        """(0 urgent / 1 not / 2 stop, arrival order, job); an entry whose job is no longer queued is stale."""
        self._queue_lock = threading.Lock()
        self._urgent_waiting = 0
        """Urgent jobs queued plus answer_logprobs calls waiting for the model: a batch of requests yields."""
        self._arrivals = itertools.count()
        self._stopping = False
        self._worker: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.batches_run = 0  # forward-pass groups, for metrics and tests
        self._share_lock = threading.Lock()
        self._running: dict[tuple[object, ...], _Job] = {}
        self._kept: OrderedDict[tuple[object, ...], Generation] = OrderedDict()

    @property
    def model(self) -> Any:
        """The PyTorch model (with its adapters) behind a torch engine."""
        return self.runner.model

    def add_adapter(self, domain: str, path: str) -> None:
        """Load the adapter in directory path for domain, with the notes beside it if it has any."""
        name = "llmnet_" + domain.replace("-", "_")  # never a torch attribute like "eval"
        notes = served_notes(Path(path))  # a bad file fails before any change
        with self._model_lock:
            self.runner.add_adapter(name, path)
        self.adapters[domain] = name
        if notes is None:
            self._notes.pop(domain, None)
        else:
            self._notes[domain] = notes

    def notes_for(self, domain: str) -> Notes | None:
        """The notes of the adapter that answers domain's questions (adapter_for), if it has any."""
        return self._notes.get(self.adapter_for(domain))

    def adapter_for(self, domain: str) -> str:
        """The adapter to answer a question of domain with: the domain's own if loaded, else "" (the
        base model). An expert may register for a domain it has no adapter for."""
        return domain if domain in self.adapters else ""

    def queue_depth(self) -> int:
        return self._jobs.qsize()

    def encode(self, messages: list[dict[str, str]]) -> list[int]:
        if not messages:
            raise EngineError(ErrorKind.INVALID, "messages must not be empty")
        for m in messages:
            if m.get("role") not in ROLES:
                raise EngineError(ErrorKind.INVALID, f"message role must be one of {ROLES}, got {m.get('role')!r}")
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
        if len(ids) > self.limits.max_prompt_tokens:
            raise EngineError(ErrorKind.INVALID,
                              f"prompt is {len(ids)} tokens, the limit is {self.limits.max_prompt_tokens}")
        return list(ids)

    def fits(self, messages: list[dict[str, str]]) -> bool:
        try:
            self.encode(messages)
            return True
        except EngineError:
            return False

    def fit(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        """messages, the last one's content shortened in its middle until the prompt fits max_prompt_tokens.
        The daemon answers what the chain gave it, however long: a prompt it cannot take would make it
        miss its assignment, and anyone could send one."""
        if self.fits(messages):
            return messages
        content = messages[-1]["content"]
        lo, hi = 0, len(content)  # the longest kept length that fits is in [lo, hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            try:
                self.encode([*messages[:-1], {**messages[-1], "content": _middle_cut(content, mid)}])
                lo = mid
            except EngineError:
                hi = mid
        return [*messages[:-1], {**messages[-1], "content": _middle_cut(content, lo)}]

    def answer_logprobs(self, messages: list[dict[str, str]], answers: list[str], domain: str = "") -> list[float]:
        """The mean log-probability per token the model (with domain's adapter, "" for none) gives each answer,
        closed by its end-of-turn token, as the reply to messages. The prompt is computed once for all (the
        llama.cpp backend keeps the last few prompts' readings for later calls).
        Answers are read as plain text (a special token's name in them is text, not that token) and cut to
        max_new_tokens."""
        if domain and domain not in self.adapters:
            raise EngineError(ErrorKind.NOT_FOUND, f"no adapter for domain {domain!r}; have {sorted(self.adapters)}")
        prompt = self.encode(messages)
        replies = [list(self.tokenizer(a, add_special_tokens=False, split_special_tokens=True)["input_ids"])
                   [:self.limits.max_new_tokens - 1] + [self.tokenizer.eos_token_id] for a in answers]
        self._count_urgent(1)  # scoring is chain work: a batch of requests steps aside for it
        try:
            self._model_lock.acquire()
        finally:
            self._count_urgent(-1)
        try:
            per_token = self.runner.reply_logprobs(self.adapters.get(domain, ""), prompt, replies)
        finally:
            self._model_lock.release()
        return [sum(lp) / len(lp) for lp in per_token]

    def _count_urgent(self, change: int) -> None:
        with self._queue_lock:
            self._urgent_waiting += change

    def answer_logprob(self, messages: list[dict[str, str]], answer: str, domain: str = "") -> float:
        return self.answer_logprobs(messages, [answer], domain)[0]

    def _check(self, sampling: Sampling, domain: str) -> None:
        if domain and domain not in self.adapters:
            raise EngineError(ErrorKind.NOT_FOUND, f"no adapter for domain {domain!r}; have {sorted(self.adapters)}")
        if sampling.max_new_tokens < 1 or sampling.max_new_tokens > self.limits.max_new_tokens:
            raise EngineError(ErrorKind.INVALID, f"max_new_tokens must be 1..{self.limits.max_new_tokens}")
        if not (math.isfinite(sampling.temperature) and sampling.temperature >= 0
                and math.isfinite(sampling.top_p) and 0 < sampling.top_p <= 1):
            raise EngineError(ErrorKind.INVALID, "temperature must be a finite number >= 0 and top_p in (0, 1]")

    def generate(self, messages: list[dict[str, str]], sampling: Sampling, domain: str = "",
                 on_text: Callable[[str], None] | None = None, cancelled: Callable[[], bool] | None = None,
                 share: Hashable | None = None, urgent: bool = False) -> Generation:
        """Raises EngineError for bad requests; calls on_text with each new piece of text. With `share`,
        identical requests in that scope run once (see the module's doc). `urgent`: chain work, which goes
        first and makes a running batch of other requests step aside."""
        self._check(sampling, domain)
        ids = self.encode(messages)
        watcher = _Watcher(on_text, cancelled or (lambda: False))
        key = _share_key(share, ids, sampling, domain) if share is not None else None
        while True:
            result = self._once(ids, sampling, domain, watcher, key, urgent)
            # a shared job stops when all the callers it had went away; one who joined as it stopped
            # still wants its answer: run it again (its text so far is not handed over twice)
            if result.finish_reason != "cancelled" or watcher.cancelled():
                return result

    def _once(self, ids: list[int], sampling: Sampling, domain: str, watcher: _Watcher,
              key: tuple[object, ...] | None, urgent: bool) -> Generation:
        with self._share_lock:
            kept = self._kept.get(key) if key is not None else None
            job = self._running.get(key) if key is not None else None
            if kept is None and job is not None:
                job.join(watcher)
                if urgent:
                    self._make_urgent(job)
            elif kept is None:
                job = _Job(ids, sampling, domain, [watcher], urgent=urgent, order=next(self._arrivals))
                if key is not None:
                    self._running[key] = job
                self._ensure_worker()
                self._enqueue(job)
        if kept is not None:
            piece = watcher.pieces_of(kept.text)
            if watcher.on_text is not None and piece:
                watcher.on_text(piece)
            return kept
        assert job is not None
        job.done.wait()
        if key is not None:
            self._finished(key, job)
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job.result

    def _finished(self, key: tuple[object, ...], job: _Job) -> None:
        """Keep a shared job's result for late joiners (a cancelled or failed one is not an answer)."""
        with self._share_lock:
            if self._running.get(key) is job:
                del self._running[key]
                if job.result is not None and job.result.finish_reason != "cancelled":
                    self._kept[key] = job.result
                    while len(self._kept) > KEPT_RESULTS:
                        self._kept.popitem(last=False)

    def _enqueue(self, job: _Job) -> None:
        with self._queue_lock:
            job.queued = True
            self._urgent_waiting += job.urgent
        self._jobs.put((0 if job.urgent else 1, job.order, job))

    def _make_urgent(self, job: _Job) -> None:
        """An urgent caller joined job: a queued job moves ahead (its old entry goes stale); a running one makes
        its batch of requests step aside (_steps_aside), and is put back ahead of them to run alone."""
        with self._queue_lock:
            if job.urgent:
                return
            job.urgent = True
            if not job.queued:
                return
            self._urgent_waiting += 1
        self._jobs.put((0, job.order, job))

    def _take(self, timeout: float | None = None) -> _Job | None:
        """The next queued job, urgent first (None for the stop entry); raises queue.Empty after timeout."""
        while True:
            _, _, job = self._jobs.get(timeout=timeout)
            if job is None:
                return None
            with self._queue_lock:
                if not job.queued:
                    continue  # a stale entry of a job made urgent
                job.queued = False
                self._urgent_waiting -= job.urgent
                return job

    def _steps_aside(self, running: list[_Job]) -> bool:
        """Whether a batch of requests (it began with no urgent job) steps aside now: urgent work waits, or
        an urgent caller joined one of its jobs (a requester's provisional request is the daemon's answer)
        while others share the batch: that job is put back ahead of the rest and runs alone."""
        if self._stopping:
            return False  # close() is draining the queue: put-back jobs would never run
        if any(j.urgent for j in running):
            return len(running) > 1
        return self._urgent_waiting > 0

    def _ensure_worker(self) -> None:
        """Start the worker, or start it again should it ever have died: requests never wait on a dead thread."""
        with self._start_lock:
            if self._worker is None or not self._worker.is_alive():
                self._stopping = False
                self._worker = threading.Thread(target=self._work, name="engine", daemon=True)
                self._worker.start()

    def close(self) -> None:
        """Stop the worker thread (requests already queued are answered first)."""
        with self._start_lock:
            if self._worker is not None:
                self._jobs.put((2, next(self._arrivals), None))
                self._worker.join()
                self._worker = None

    def _work(self) -> None:
        while True:
            first = self._take()
            if first is None:
                return
            batch, urgent = [first], first.urgent  # as taken: a job made urgent later does not change its batch
            window_end = time.monotonic() + self.limits.batch_window_ms / 1000
            stopping = False
            while len(batch) < self.limits.max_batch:
                try:
                    job = self._take(timeout=max(0.0, window_end - time.monotonic()))
                except queue.Empty:
                    break
                if job is None:
                    stopping = self._stopping = True
                    break
                if job.urgent != urgent:  # a batch is of one urgency: chain work never reads others' prompts
                    self._enqueue(job)
                    break
                batch.append(job)
            groups: dict[str, list[_Job]] = {}
            for job in batch:
                groups.setdefault(job.domain, []).append(job)
            for domain in sorted(groups):
                self._run_isolated(groups[domain], domain, requests=not urgent)
            if stopping:
                return

    def _run_isolated(self, jobs: list[_Job], domain: str, requests: bool) -> None:
        """Run a batch; if it fails as a whole, run its jobs one by one, so only the request that broke it
        fails. Every job ends with a result or its own error, and its caller is woken either way."""
        put_back: list[_Job] = []
        try:
            with self._model_lock:
                put_back = self._run(jobs, domain, requests)
        except Exception as exc:  # noqa: BLE001 - handed back to the waiting caller(s)
            if len(jobs) > 1:
                for job in jobs:
                    self._run_isolated([job], domain, requests)
                return
            jobs[0].error = exc
        except BaseException as exc:  # the thread is going down: no caller may wait forever
            for job in jobs:
                job.error = exc
                job.done.set()
            raise
        finally:
            self.batches_run += 1
        for job in jobs:
            if not any(job is back for back in put_back):
                job.done.set()
        for job in put_back:
            self._enqueue(job)

    def _run(self, jobs: list[_Job], domain: str, requests: bool) -> list[_Job]:
        """Generate for a batch; returns the jobs it stepped aside from for urgent work (not finished). requests:
        the batch began as requests (no job urgent when taken), so it steps aside for urgent work, including an
        urgent caller joining one of its jobs (that job then runs alone, ahead of the rest); an urgent batch
        never does. Decided when the jobs were taken: a requester's job made urgent while the batch was being
        gathered must not turn the requester's other prompts into chain work."""
        import torch

        generators = [torch.Generator().manual_seed(j.sampling.seed) for j in jobs]
        eos = self.runner.eos_ids(self.tokenizer.eos_token_id)
        outs: list[list[int]] = [[] for _ in jobs]
        texts = [""] * len(jobs)
        reasons: list[str | None] = [None] * len(jobs)
        fed: list[int | None] | None = None  # the tokens of the last step (None before the first)
        with self.runner.session(self.adapters.get(domain, ""), [j.ids for j in jobs]) as session:
            for step in range(max(j.sampling.max_new_tokens for j in jobs)):
                for i, j in enumerate(jobs):
                    if reasons[i] is None and (step >= j.sampling.max_new_tokens or j.cancelled()):
                        reasons[i] = "length" if step >= j.sampling.max_new_tokens else "cancelled"
                if all(r is not None for r in reasons):
                    break
                running = [j for i, j in enumerate(jobs) if reasons[i] is None]
                if requests and self._steps_aside(running):
                    logits = None
                elif fed is None and requests:  # the prompts, read in slices it can step aside between
                    logits = session.forward(None, interrupted=functools.partial(self._steps_aside, running))
                elif fed is None:  # urgent work reads its prompts in one pass (as reply_logprobs reads them)
                    logits = session.forward(None)
                else:
                    logits = session.forward([None if reasons[i] is not None else t for i, t in enumerate(fed)])
                if logits is None:
                    reasons = [YIELDED if r is None else r for r in reasons]
                    break
                fed = [None] * len(jobs)
                for i, j in enumerate(jobs):
                    if reasons[i] is not None:
                        continue
                    try:
                        token = _pick(logits[i], j.sampling, generators[i])
                    except Exception as exc:  # noqa: BLE001 - this request fails alone; the batch goes on
                        j.error, reasons[i] = exc, "error"
                        continue
                    fed[i] = token
                    reasons[i] = self._advance(j, token, eos, outs[i], texts, i)
        for i, j in enumerate(jobs):
            if j.error is None and reasons[i] != YIELDED:
                j.result = Generation(texts[i], len(j.ids), len(outs[i]), reasons[i] or "length")
        return [j for i, j in enumerate(jobs) if reasons[i] == YIELDED]

    def _advance(self, job: _Job, token: int, eos: set[int], out: list[int], texts: list[str], i: int) -> str | None:
        """Take one token for a request; returns its finish reason once it is done."""
        if token in eos:
            return "stop"
        out.append(token)
        full = self.tokenizer.decode(out, skip_special_tokens=True)
        reason = None
        hit = min((full.find(s) for s in job.sampling.stop if s and s in full), default=-1)
        if hit >= 0:
            full, reason = full[:hit], "stop"
        if len(full) > len(job.text):
            job.emit(full)
        texts[i] = full
        return reason


def _runner(loaded: LoadedModel, limits: Limits, pad_id: int) -> Any:
    """The backend loaded.backend names, sized for limits."""
    if loaded.backend == "llama-cpp":
        from experts.llama_runner import LlamaRunner

        return LlamaRunner(loaded.model, limits.max_batch, limits.max_prompt_tokens + limits.max_new_tokens,
                           limits.threads)
    from experts.torch_runner import TorchRunner

    return TorchRunner(loaded.model, pad_id)


def _middle_cut(text: str, keep: int) -> str:
    """text cut to keep characters, its start and end kept (a question is often at one of them)."""
    if keep >= len(text):
        return text
    head = keep // 2
    return text[:head] + " … " + text[len(text) - (keep - head):] if keep else ""


def _pick(logits: Any, sampling: Sampling, generator: Any) -> int:
    import torch

    if sampling.temperature == 0:
        return int(torch.argmax(logits))
    # float64: a finite temperature however small keeps logits / temperature finite, so the softmax
    # sharpens to greedy instead of overflowing into NaN
    probs = torch.softmax(logits.double() / sampling.temperature, dim=-1)
    if sampling.top_p < 1:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < sampling.top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
        probs = probs / probs.sum()
    return int(torch.multinomial(probs, 1, generator=generator))
