"""LoRA fine-tuning and evaluation on question/answer or chat JSONL.

Lines are {"question", "answer"[, "accept"]} (asked as the daemon asks:
experts.answers.expert_messages, with the notes that bear on the question when the adapter has notes:
experts/notes.py) or {"messages": [...]} (the last message is the assistant's target).
Loss is on the answer tokens only. Accuracy counts an answer when the expected answer, or any `accept`
string, occurs in the generation as whole words, case-insensitively ("3" does not match inside "13").
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from experts.adapters import adapter_sha256
from experts.answers import NOTES_PROMPT, SYSTEM_PROMPT, expert_messages
from experts.augment import epoch_question, rules_version
from experts.engine import Engine, Sampling
from experts.jsonl import values
from experts.models import LoadedModel, causal_lm
from experts.notes import NOTES_FILE, NOTES_VERSION, TOP, Notes

RECIPE_VERSION = 2
"""How examples become steps (2: logits at answer tokens only, length windows): build-domains retrains an
adapter whose manifest records another, since the same seed then gives other weights."""

LENGTH_WINDOW = 8
"""Batches per window of examples sorted by length: questions and fill-in-the-blank lines differ in length,
and random batches of them were 18% padding; windows of 8 batches pad 4%, and each window is still a
random draw of the training set."""


class TrainError(Exception):
    pass


@dataclass(frozen=True)
class TrainConfig:
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    lr: float = 2e-3
    epochs: int = 3
    batch_size: int = 8
    max_length: int = 256  # batches pad to their longest example, so a cap only guards against a runaway one
    seed: int = 0
    heldout_fraction: float = 0.1
    eval_max_new_tokens: int = 16
    decay: bool = False  # the learning rate falls linearly to 0 over the run (settles what was learnt)
    reword: bool = False  # every epoch after the first asks each question in new words (experts.augment)

    def __post_init__(self) -> None:
        checks = [(self.rank >= 1, "rank must be >= 1"), (self.alpha >= 1, "alpha must be >= 1"),
                  (0 <= self.dropout < 1, "dropout must be in [0, 1)"), (self.lr > 0, "lr must be > 0"),
                  (self.epochs >= 0, "epochs must be >= 0"), (self.batch_size >= 1, "batch_size must be >= 1"),
                  (self.max_length >= 8, "max_length must be >= 8"),
                  (0 <= self.heldout_fraction < 1, "heldout_fraction must be in [0, 1)"),
                  (bool(self.target_modules), "target_modules must not be empty")]
        for ok, message in checks:
            if not ok:
                raise TrainError(f"TrainConfig: {message}")


@dataclass
class Example:
    messages: list[dict[str, str]]
    answer: str
    accept: list[str] = field(default_factory=list)


def load_examples(path: Path, notes: Notes | None = None) -> list[Example]:
    """The examples of a JSONL file; question lines get the system message the expert asks them with."""
    out = []
    for n, row in values(path.read_text(), str(path), TrainError):
        if "messages" in row:
            msgs = row["messages"]
            if not msgs or msgs[-1].get("role") != "assistant":
                raise TrainError(f"{path}:{n}: the last message must be the assistant's")
            out.append(Example(msgs[:-1], msgs[-1]["content"], row.get("accept", [])))
        elif "question" in row and "answer" in row:
            out.append(Example(expert_messages(str(row["question"]), notes), str(row["answer"]),
                               [str(a) for a in row.get("accept", [])]))
        else:
            raise TrainError(f"{path}:{n}: need question/answer or messages")
    if not out:
        raise TrainError(f"{path} has no examples")
    return out


def is_correct(generation: str, example: Example) -> bool:
    text = generation.lower()
    return any(re.search(r"(?<!\w)" + re.escape(a.lower().strip()) + r"(?!\w)", text)
               for a in [example.answer, *example.accept] if a.strip())


def evaluate(engine: Engine, examples: list[Example], domain: str = "", max_new_tokens: int = 16) -> dict[str, Any]:
    """Asks every question at once, as concurrent clients would: the engine batches them (its max_batch),
    and a batched answer is exactly the one a request gets alone, so only the time differs."""
    from concurrent.futures import ThreadPoolExecutor

    def answer(ex: Example) -> str:
        return engine.generate(ex.messages, Sampling(max_new_tokens=max_new_tokens), domain).text

    pool = ThreadPoolExecutor(max(1, engine.limits.max_batch))
    try:
        correct = sum(is_correct(got, ex) for got, ex in zip(pool.map(answer, examples), examples, strict=True))
    finally:
        pool.shutdown(cancel_futures=True)  # after a failure, not every question still queued
    return {"accuracy": correct / len(examples), "n": len(examples), "correct": correct}


def _encode(tokenizer: Any, ex: Example, max_length: int) -> tuple[list[int], list[int]]:
    prompt = tokenizer.apply_chat_template(ex.messages, add_generation_prompt=True, tokenize=True)
    if isinstance(prompt, dict) or hasattr(prompt, "keys"):
        prompt = prompt["input_ids"]
    answer = tokenizer(ex.answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = (list(prompt) + answer)[:max_length]
    labels = ([-100] * len(prompt) + answer)[:max_length]
    if all(label == -100 for label in labels):  # it would teach nothing, and a batch of only such rows has no loss
        question = ex.messages[-1]["content"][:60] if ex.messages else ""
        raise TrainError(f"the prompt {question!r}... is {len(prompt)} tokens: no answer token fits in "
                         f"max_length {max_length}; raise --max-length")
    return ids, labels


def answer_loss(model: Any, batch: dict[str, Any]) -> Any:
    """The mean cross-entropy of the answer tokens, as the model's own loss computes it, but with logits only
    where a label is: answers are about 4 of 37 tokens, and the other positions' logits over the whole
    vocabulary (and their softmax) cost a quarter of a training step for nothing. (Running the prefix all
    rows share, the system message, once per batch saved another 2% only: not worth its code.)"""
    import torch.nn.functional as F

    lm = causal_lm(model)
    hidden = lm.get_decoder()(input_ids=batch["input_ids"],
                                     attention_mask=batch["attention_mask"]).last_hidden_state
    targets = batch["labels"][:, 1:]
    labelled = targets != -100
    logits = lm.get_output_embeddings()(hidden[:, :-1][labelled])
    return F.cross_entropy(logits.float(), targets[labelled])


def mean_loss(model: Any, tokenizer: Any, examples: list[Example], cfg: TrainConfig) -> float:
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for batch in _batches(tokenizer, examples, cfg, shuffle=None):
            total += float(answer_loss(model, batch)) * len(batch["input_ids"])
            count += len(batch["input_ids"])
    return total / max(1, count)


def _batches(tokenizer: Any, examples: list[Example], cfg: TrainConfig, shuffle: random.Random | None) -> Any:
    """Padded batches in order, or shuffled: then each window of LENGTH_WINDOW batches is cut from examples
    sorted by length (so a batch pads little) and the batches come in random order."""
    import torch

    encoded = [_encode(tokenizer, ex, cfg.max_length) for ex in examples]
    order = list(range(len(examples)))
    if shuffle is not None:
        shuffle.shuffle(order)
        window = cfg.batch_size * LENGTH_WINDOW
        order = [i for start in range(0, len(order), window)
                 for i in sorted(order[start:start + window], key=lambda i: len(encoded[i][0]))]
    groups = [order[start:start + cfg.batch_size] for start in range(0, len(order), cfg.batch_size)]
    if shuffle is not None:
        shuffle.shuffle(groups)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for group in groups:
        rows = [encoded[i] for i in group]
        width = max(len(ids) for ids, _ in rows)
        yield {
            "input_ids": torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in rows]),
            "attention_mask": torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows]),
            "labels": torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in rows]),
        }


def _canonical_config(path: Path) -> None:
    """peft writes some lists from Python sets, in an order that changes with the process's hash
    seed; sorting them (and the keys) makes the same training give the same bytes everywhere."""
    config = json.loads(path.read_text())
    for key, value in config.items():
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            config[key] = sorted(value)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _accuracy(engine: Engine, examples: list[Example], cfg: TrainConfig) -> dict[str, Any]:
    return evaluate(engine, examples, max_new_tokens=cfg.eval_max_new_tokens) if examples else {}


def progress_line(epoch: int, epochs: int, done: int, steps: int, loss: float, elapsed: float) -> str:
    """A training progress bar with the time left, extrapolated from the steps done so far."""
    width = 24
    filled = width * done // max(1, steps)
    left = elapsed / max(1, done) * (steps - done)
    return (f"train [{'#' * filled}{'.' * (width - filled)}] {100 * done // max(1, steps):3d}% epoch {epoch}/{epochs} "
            f"step {done}/{steps} loss {loss:.3f} elapsed {_minutes(elapsed)} left {_minutes(left)}")


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def _reworded(ex: Example, seed: int, epoch: int, index: int, notes: Notes | None = None) -> Example:
    *context, question = ex.messages
    if question.get("role") != "user":
        return ex
    words = epoch_question(question["content"], seed, epoch, index)
    if notes is not None and ex.messages == expert_messages(question["content"], notes):
        return Example(expert_messages(words, notes), ex.answer, ex.accept)  # the notes the new words choose
    return Example([*context, {**question, "content": words}], ex.answer, ex.accept)


def run_epochs(model: Any, tokenizer: Any, train_set: list[Example], cfg: TrainConfig, rng: random.Random,
               progress: bool = True, notes: Notes | None = None) -> dict[str, float]:
    """The optimisation loop; returns steps, tokens (non-padding, prompt + answer) and seconds."""
    import time

    import torch

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    steps = cfg.epochs * -(-len(train_set) // cfg.batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / max(1, steps) if cfg.decay else 1.0)
    model.train()
    done, tokens, started = 0, 0, time.perf_counter()
    for epoch in range(cfg.epochs):
        epoch_set = [_reworded(ex, cfg.seed, epoch, i, notes) for i, ex in enumerate(train_set)] if cfg.reword \
            else train_set
        for batch in _batches(tokenizer, epoch_set, cfg, rng):
            loss = answer_loss(model, batch)
            loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            done += 1
            tokens += int(batch["attention_mask"].sum())
            if progress and (done % 5 == 0 or done == steps):
                print("\r" + progress_line(epoch + 1, cfg.epochs, done, steps, float(loss.detach()),
                                           time.perf_counter() - started),
                      end="" if done < steps else "\n", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - started
    return {"steps": done, "tokens": tokens, "seconds": seconds, "tokens_per_second": tokens / max(seconds, 1e-9)}


def inputs(cfg: TrainConfig, data: Path, notes: bytes | None = None) -> dict[str, Any]:
    """What an adapter's weights follow from, besides the base model: written into its manifest, and
    build-domains reuses an adapter only while every one of them is unchanged. notes: the notes file's bytes."""
    return {
        "system_prompt": SYSTEM_PROMPT,  # the questions' format it was trained on
        "notes_sha256": hashlib.sha256(notes).hexdigest() if notes is not None else None,
        # how notes are chosen and placed in the prompt
        "notes_format": {"version": NOTES_VERSION, "prompt": NOTES_PROMPT, "top": TOP} if notes is not None else None,
        "augment_version": rules_version(cfg.reword),  # the rewording rules it was trained with
        "recipe_version": RECIPE_VERSION,
        "dataset_sha256": hashlib.sha256(data.read_bytes()).hexdigest(),
        "config": asdict(cfg),
    }


def train(loaded: LoadedModel, data: Path, out: Path, cfg: TrainConfig, heldout: Path | None = None,
          progress: bool = True, accuracy: bool = True, notes: Path | None = None) -> dict[str, Any]:
    """Train a LoRA adapter into out/ with manifest.json; returns the manifest. The held-out set's loss is
    measured before and after, and its accuracy too unless accuracy=False (for a caller that measures it
    otherwise: generating answers costs a while). With notes (a JSONL of {"fact"} lines), every question is
    asked with the notes that bear on it, and out/ keeps a copy for serving."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(cfg.seed)
    notes_bytes = notes.read_bytes() if notes else None  # read once: it may be out/notes.jsonl itself
    kept = Notes.parse(notes_bytes, str(notes)) if notes_bytes is not None else None
    examples = load_examples(data, kept)
    rng = random.Random(cfg.seed)
    if heldout is not None:
        train_set, test_set = examples, load_examples(heldout, kept)
    else:
        shuffled = examples[:]
        rng.shuffle(shuffled)
        n_test = max(1, int(len(shuffled) * cfg.heldout_fraction)) if cfg.heldout_fraction else 0
        test_set, train_set = shuffled[:n_test], shuffled[n_test:]
    tokenizer = loaded.tokenizer
    base_engine = Engine(loaded)
    measured = test_set if accuracy else []
    before = {**_accuracy(base_engine, measured, cfg), "loss": mean_loss(loaded.model, tokenizer,
                                                                          test_set or train_set, cfg)}
    model = get_peft_model(loaded.model, LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                                                    target_modules=list(cfg.target_modules), task_type="CAUSAL_LM"))
    speed = run_epochs(model, tokenizer, train_set, cfg, rng, progress, kept)
    model.eval()
    trained = Engine(LoadedModel(model, tokenizer, loaded.model_id))
    after = {**_accuracy(trained, measured, cfg), "loss": mean_loss(model, tokenizer, test_set or train_set, cfg)}
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    _canonical_config(out / "adapter_config.json")
    (out / NOTES_FILE).unlink(missing_ok=True)  # an earlier adapter's notes in out/ are not this one's
    if notes_bytes is not None:
        (out / NOTES_FILE).write_bytes(notes_bytes)
    manifest = {
        "base_model": loaded.model_id,
        **inputs(cfg, data, notes_bytes),
        "n_train": len(train_set), "n_heldout": len(test_set),
        "metrics": {"before": before, "after": after, "train_tokens_per_second": speed["tokens_per_second"],
                    "train_seconds": speed["seconds"]},
        "adapter_sha256": adapter_sha256(out),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest

