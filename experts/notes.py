"""An expert's notes: its domain's facts, kept beside its adapter, of which the few that bear most on a question
are put in that question's prompt. The adapter is trained with them there (experts/train.py), so it learns to
answer from a note when one fits and from what it memorised when none does.

Why: a question worded unlike any training question often shares its rare words (a name, a number) with the
fact it asks about, so even a crude ranking finds that fact, and reading an answer out of the prompt is far
easier for a small model than recalling a fact asked in words it never saw. On the dev questions in new
wording, orbital-logistics went from 60% (no notes) to 80% (README, Experts).

Ranking is BM25 over words: lower-cased, stop words dropped, number words up to ninety read as digits, a light
suffix strip ("founded" and "founding" meet). No model, deterministic, microseconds for a hundred facts: so
training ranks. A serving expert adds meaning (ranked_by_meaning, experts/meaning.py).
A note may also be found by the words of the questions it answered in training (its "asked" list, which
build-domains fills from the training split): users say "high blood pressure" where the fact says
"hypertension", and a training question worded like the user finds the fact the fact's own words cannot.
On the dev questions that lifted the asked-about fact to first place from 86 to 98 of 120 (top 3: 105 to 109).
Anyone may ask anything: a question only ever selects among the provider's own notes, and peers' answers never
take part. Notes are not secret: a question can pick a note by its words and ask for it back word for word, as
it could ask for the facts an adapter memorised.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path
from typing import Any

from experts.jsonl import values

NOTES_FILE = "notes.jsonl"
"""In an adapter's directory: one JSON object per line with the note's text under "fact" (the format of a
domain's facts.jsonl) and, optionally, "asked": questions (or any phrases) the note answers, which are
searched but never shown. Its bytes are part of the adapter's commitment, like the weights."""
NOTES_VERSION = 3
"""Bump when the ranking or the notes' place in the prompt changes: adapters trained before must be retrained.
(2: scores summed in sorted term order; set order follows the process's hash seed, so a near tie between two
notes could fall either way in two processes, and two trainings of one adapter differed. 3: "asked".)"""
TOP = 3
MAX_NOTE_CHARS = 400
MEANING_BATCH = 64
_K1, _B = 1.2, 0.75
_WORD = re.compile(r"[a-z0-9_]+")
_STOP = frozenset(
    "a an the of in on at to is are was were be been by for with what which who whom whose how many much does do "
    "did it its this that these those from as and or tell me name i you your there their has have had can could "
    "should would will about into any some".split())
_NUMBERS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}
_NUMBERS |= {w: str(10 * i) for i, w in enumerate("thirty forty fifty sixty seventy eighty ninety".split(), 3)}
_SUFFIXES = ("ing", "ed", "es", "s")


class NotesError(Exception):
    pass


def terms(text: str) -> list[str]:
    """The words of text as the ranking compares them."""
    out = []
    for word in _WORD.findall(text.lower()):
        if word in _STOP:
            continue
        if word in _NUMBERS:
            out.append(_NUMBERS[word])
            continue
        for suffix in _SUFFIXES:
            if len(word) > len(suffix) + 3 and word.endswith(suffix):
                word = word[: -len(suffix)]
                break
        out.append(word)
    return out


class Notes:
    """A fixed list of notes, ranked for each question."""

    def __init__(self, notes: list[str], asked: list[list[str]] | None = None) -> None:
        """asked[i]: phrases note i is also found by (not shown in prompts)."""
        self.notes = [" ".join(n.split())[:MAX_NOTE_CHARS] for n in notes]  # one line each in the prompt
        asked = asked or [[] for _ in notes]
        if len(asked) != len(notes):
            raise NotesError("one list of asked phrases per note")
        self._counts = [Counter(terms(" ".join([n, *a]))) for n, a in zip(self.notes, asked, strict=True)]
        lengths = [sum(c.values()) for c in self._counts]
        mean_length = sum(lengths) / len(lengths) if lengths else 0.0
        self._norms = [_K1 * (1 - _B + _B * length / mean_length) for length in lengths]  # BM25's length term
        documents = Counter(t for c in self._counts for t in c)
        n = len(self.notes)
        self._idf = {t: math.log(1 + (n - df + 0.5) / (df + 0.5)) for t, df in documents.items()}
        self._asked = asked
        self._embed: Any = None
        self._meanings: list[tuple[int, Any]] = []  # (note, vector) for each note's text and asked phrase

    def ranked_by_meaning(self, embed: Any) -> Notes:
        """Rank by meaning too (experts/meaning.py): a note then scores its word score, as a share of the best
        note's, plus the highest cosine similarity between the question and its text or an asked phrase. The
        note that shares the most words keeps a lead (a cosine lead of more than 1 never happens): meaning
        orders the rest, and decides alone when no note shares a word. Every note has a score, so a question
        gets k notes (fewer only when there are fewer). Returns self."""
        texts = [(i, t) for i, (note, phrases) in enumerate(zip(self.notes, self._asked, strict=True))
                 for t in [note, *phrases]]
        vectors = [v for start in range(0, len(texts), MEANING_BATCH)  # a provider's file may be long
                   for v in embed([t for _, t in texts[start:start + MEANING_BATCH]])]
        self._meanings = [(i, vectors[j]) for j, (i, _) in enumerate(texts)]
        self._embed = embed
        return self

    @classmethod
    def beside(cls, adapter_dir: Path) -> Notes | None:
        """The notes kept in an adapter's directory, or None when it has none."""
        path = adapter_dir / NOTES_FILE
        return cls.load(path) if path.is_file() else None

    @classmethod
    def load(cls, path: Path) -> Notes:
        return cls.parse(path.read_bytes(), str(path))

    @classmethod
    def parse(cls, data: bytes, name: str) -> Notes:
        """Notes from the bytes of a notes file (UTF-8 JSONL); name says where they came from in errors."""
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise NotesError(f"{name}: not UTF-8: {exc}") from None
        notes, asked = [], []
        for number, row in values(text, name, NotesError):
            if not isinstance(row, dict) or not isinstance(row.get("fact"), str) or not row["fact"].strip():
                raise NotesError(f'{name}:{number}: each line needs a "fact" string')
            phrases = row.get("asked", [])
            if not isinstance(phrases, list) or not all(isinstance(p, str) for p in phrases):
                raise NotesError(f'{name}:{number}: "asked" must be a list of strings')
            notes.append(row["fact"])
            asked.append(phrases)
        if not notes:
            raise NotesError(f"{name} has no notes")
        return cls(notes, asked)

    def for_question(self, question: str, k: int = TOP) -> list[str]:
        """The k notes that share the most (rarest) words with question, best first; fewer when fewer share any.
        Ranked by meaning too (ranked_by_meaning), k whatever the words (fewer only when there are fewer). Ties
        keep the file's order."""
        words = self._word_scores(question)
        if self._embed is None:
            return [self.notes[i] for _, i in sorted((-w, i) for i, w in enumerate(words) if w > 0)[:k]]
        best_words = max(words, default=0.0) or 1.0
        [asked] = self._embed([question])
        meaning = [-1.0] * len(self.notes)
        for i, vector in self._meanings:
            meaning[i] = max(meaning[i], float(vector @ asked))
        return [self.notes[i] for _, i in sorted((-(w / best_words + m), i) for i, (w, m) in
                                                 enumerate(zip(words, meaning, strict=True)))[:k]]

    def _word_scores(self, question: str) -> list[float]:
        """Each note's BM25 score for question's words (0 for a note sharing none)."""
        wanted = set(terms(question))
        out = []
        for i, counts in enumerate(self._counts):
            score = 0.0
            for term in sorted(wanted & counts.keys()):  # one order of float additions in every process
                tf = counts[term]
                score += self._idf[term] * tf * (_K1 + 1) / (tf + self._norms[i])
            out.append(score)
        return out
