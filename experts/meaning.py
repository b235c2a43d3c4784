"""Sentence meaning for finding an expert's notes: the same packaged all-MiniLM-L6-v2 model `llmnet ask --domain
auto` routes with (llmnet/client/route.py), shared by everything in one process.

Why: the notes' word ranking (experts/notes.py) misses a question that shares no rare word with its fact ("can't
sleep" for "insomnia", "travels around" for "orbits"); a sentence model places both near each other. On the dev
questions in new wording the asked-about fact came first among the notes for 109 of 120 questions, against 98 by
words alone (among the three chosen: 115 against 109), and the adapters answered 85.0 / 92.5 / 95.0% instead of
77.5 / 80.0 / 87.5% (README, Experts).

Only serving ranks by meaning: training keeps the word ranking, which is exact arithmetic, so `make experts`
gives the same bytes on every machine. Without the model package (the `expert` extra installs it), notes are
ranked by words alone, and the expert says so once in its log (`notes_by_words_only`).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from experts.notes import Notes

Embed = Callable[[list[str]], Any]
"""Texts -> one L2-normalised vector per text (rows of a torch tensor or numpy array)."""

KEPT_QUESTIONS = 256
"""Vectors of recent single texts kept: one query's prompt is built several times (answer, peers' round, scoring)."""

_lock = threading.Lock()
_shared: list[Embed | None] = []


def shared_embed() -> Embed | None:
    """The process's sentence model (loaded at the first call), or None when its package is not installed."""
    with _lock:
        if not _shared:
            _shared.append(_load())
        return _shared[0]


def _load() -> Embed | None:
    from llmnet.client.route import Embedder, RouteError

    try:
        from transformers.utils import logging

        logging.disable_progress_bar()  # a bar per load in every expert's log says nothing
        model = Embedder()
    except Exception as exc:  # noqa: BLE001 - missing or broken, the expert still serves: by words alone
        reason = str(exc) if isinstance(exc, RouteError) else f"{type(exc).__name__}: {exc}"
        print(json.dumps({"event": "notes_by_words_only", "reason": reason[:300], "ts": round(time.time(), 3)}),
              file=sys.stderr, flush=True)
        return None
    calls = threading.Lock()  # one forward pass at a time: daemon, server and scorers share the model
    kept: OrderedDict[str, Any] = OrderedDict()

    def embed(texts: list[str]) -> Any:
        with calls:
            if len(texts) != 1:
                return model(texts).numpy()
            vector = kept.get(texts[0])
            if vector is None:
                vector = kept[texts[0]] = model(texts).numpy()
                if len(kept) > KEPT_QUESTIONS:
                    kept.popitem(last=False)
            return vector

    return embed


def served_notes(adapter_dir: Path) -> Notes | None:
    """The notes beside an adapter as a serving expert ranks them: by words and, when the model is there, meaning."""
    notes = Notes.beside(adapter_dir)
    if notes is None:
        return None
    embed = shared_embed()
    return notes.ranked_by_meaning(embed) if embed is not None else notes
