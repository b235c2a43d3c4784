"""The scores an expert has computed for a query's answers, kept until the query settles.

Why: a scorer's judging used to start only when the final answers were all revealed, and the query's
settlement waited for it (a second or more on a CPU: the prompt is read once with the adapter and once
without). Most final answers are already known a round earlier: a trained respondent keeps its answer or
adopts a peer's, and respondents who agreed keep theirs. So a scorer judges the previous round's answers
while the final round runs (`ahead`), and at the scoring phase waits only for the answers that are new.
An answer's score depends on the query and the answer alone (experts/judge.py), so a kept score is the one
judging it again would give; and the llama.cpp backend keeps the prompt's reading from the first scoring, so
the second spends only the new answers' tokens (experts/llama_runner.py).

Not done: reading the prompts as soon as the query is drawn. On the 2-core demo machine that competed with the
round-1 answers (first provisional answer 1.68x -> 2.05x a direct call, settlement no faster), though the
reading ran at lowered CPU priority.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future

Compute = Callable[[list[str]], list[int | None]]
"""answers -> their scores, for one query (the caller binds its prompt and adapter); None for an answer that
could not be scored (the engine failed on it), which is not kept: the next ask scores it again."""


class ScoreBook:
    def __init__(self, pool: Executor) -> None:
        self._pool = pool
        self._lock = threading.Lock()
        self._known: dict[int, dict[str, int]] = {}
        self._running: dict[int, tuple[Future[dict[str, int | None]], frozenset[str]]] = {}
        """query -> the scoring under way ahead, and the answers it scores."""
        self._failed: dict[int, set[str]] = {}
        """query -> answers that could not be scored ahead: not tried again ahead (scores() tries once more)."""

    def ahead(self, query_id: int, answers: list[str], compute: Compute) -> None:
        """Start scoring, in the background, the briefest answer not yet scored (unless a start for the query is
        under way: the next call takes the next). One at a time, the briefest first: a trained respondent's
        answer is brief and likely final (kept, or taken up by a base-model peer), a base model's rambling
        long, costly to read and often dropped, and the scoring phase need not wait for it (`scores`).
        A failure is left for `scores` to meet."""
        with self._lock:
            if query_id in self._running:
                return
            failed = self._failed.get(query_id, set())
            missing = [a for a in _missing(self._known.get(query_id, {}), answers) if a not in failed]
            if not missing:
                return
            first = [min(missing, key=lambda a: (len(a), a))]
            self._known.setdefault(query_id, {})
            future = self._pool.submit(self._fill, query_id, first, compute)
            self._running[query_id] = (future, frozenset(first))
        future.add_done_callback(lambda _: self._done(query_id, future))

    def scores(self, query_id: int, answers: list[str], compute: Compute) -> list[int]:
        """The answers' scores: those already known, the rest computed now (after a scoring under way of one of
        them ends; one of an answer not asked for is not waited on)."""
        with self._lock:
            running = self._running.get(query_id)
        if running is not None and running[1] & set(answers) and not running[0].cancel():
            try:  # (one still queued behind generations is cancelled and done here)
                running[0].result()
            except Exception:  # noqa: BLE001 - scored again below, where a failure is reported
                pass
        with self._lock:
            known = dict(self._known.setdefault(query_id, {}))
        missing = _missing(known, answers)
        fresh = self._fill(query_id, missing, compute) if missing else {}
        return [known[a] if a in known else fresh[a] or 0 for a in answers]  # one it cannot score: 0, this time

    def forget(self, query_id: int) -> None:
        """Drop a settled query's scores (a scoring still under way keeps nothing)."""
        with self._lock:
            self._known.pop(query_id, None)
            self._failed.pop(query_id, None)

    def _fill(self, query_id: int, answers: list[str], compute: Compute) -> dict[str, int | None]:
        got = dict(zip(answers, compute(answers), strict=True))
        with self._lock:
            if query_id in self._known:  # not forgotten meanwhile
                self._known[query_id].update({a: s for a, s in got.items() if s is not None})
                self._failed.setdefault(query_id, set()).update(a for a, s in got.items() if s is None)
        return got

    def _done(self, query_id: int, future: Future[dict[str, int | None]]) -> None:
        with self._lock:
            if query_id in self._running and self._running[query_id][0] is future:
                del self._running[query_id]


def _missing(known: dict[str, int], answers: list[str]) -> list[str]:
    """The answers not yet scored, each once (an answer's score does not depend on its batch)."""
    return sorted({a for a in answers if a not in known})
