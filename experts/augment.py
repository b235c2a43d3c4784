"""Training questions in more than one wording.

A small model fine-tuned on one wording per question learns that wording: asked the same thing in other
words, it may not recognise the fact. With TrainConfig.reword, training shows every epoch each question
reworded anew (common synonyms, different framings), at no extra training cost: the model meets the fact in
as many surface forms as there are epochs. Rewording is seeded, so a training run is still reproducible.
VERSION names the rewording rules: a build compares it before reusing an adapter. (On our dev questions it
did not raise accuracy; README, make experts.)
"""

from __future__ import annotations

import random
import re

VERSION = 1
CLOZE_PREFIX = "Fill in the blank: "
"""How a fill-in-the-blank training line begins (experts.domains.cloze_rows writes them)."""

# Common English question vocabulary and its everyday alternatives. Whole words, matched case-insensitively;
# the replacement takes the original's capitalisation.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "what": ("which",), "which": ("what",), "where": ("in what place",),
    "how many": ("what number of",), "in what year": ("in which year", "what year"),
    "in which year": ("in what year", "what year"),
    "colour": ("color", "hue", "shade"), "flowers": ("blossoms", "blooms"), "flower": ("blossom", "bloom"),
    "grows": ("thrives", "is found"), "treat": ("cure", "help with"), "treats": ("cures", "helps with"),
    "used to treat": ("taken for", "good for"), "prepared": ("made", "readied"), "dose": ("dosage",),
    "plant": ("herb",), "plants": ("herbs",), "medicinal": ("healing",),
    "created": ("made", "invented", "designed"), "designed": ("created", "devised"),
    "released": ("published", "launched"), "called": ("named",), "named": ("called",),
    "keyword": ("reserved word",), "returns": ("gives back",), "founded": ("established", "set up"),
    "commander": ("commanding officer", "head", "chief"), "commanded": ("led", "headed"),
    "crew members": ("crew", "personnel"), "main": ("primary", "chief"),
    "docking ports": ("docking bays", "berths"), "planet": ("world",),
}
"""Swaps that keep a question's meaning wherever the phrase stands in a question. Left out on purpose:
words that are also names or terms of a domain ("station" next to "Muir Outpost", "function" next to
"task") and swaps that change a rule's force ("must not" to "may not")."""

FRAMES: tuple[str, ...] = (
    "{q}", "Tell me: {q}", "{q} Answer in a few words.", "Quick question: {q}", "{bare}",
    "Please answer this. {q}", "Do you know? {q}", "I was wondering: {q}",
)
"""Ways of putting a question. {bare} is the question in lower case without its final question mark, as
people type into a search box."""

_PATTERN = re.compile(r"(?<!\w)(" + "|".join(re.escape(k) for k in sorted(SYNONYMS, key=len, reverse=True))
                      + r")(?![\w'])", re.IGNORECASE)  # "What's" is not "What"


def _same_case(original: str, replacement: str) -> str:
    return replacement[:1].upper() + replacement[1:] if original[:1].isupper() else replacement


def reword(question: str, rng: random.Random, swap: float = 0.5) -> str:
    """The question in other words: each known phrase is swapped for an alternative with probability
    `swap`, then the question is put in a randomly chosen frame."""
    def pick(match: re.Match[str]) -> str:
        word = match.group(0)
        if rng.random() >= swap:
            return word
        return _same_case(word, rng.choice(SYNONYMS[word.lower()]))

    swapped = _PATTERN.sub(pick, question)
    bare = swapped.strip().rstrip("?").strip()
    return rng.choice(FRAMES).format(q=swapped, bare=bare[:1].lower() + bare[1:])


def epoch_question(question: str, seed: int, epoch: int, index: int) -> str:
    """The wording of training question `index` in `epoch`: the original in the first epoch, a seeded
    rewording in every later one. Fill-in-the-blank lines quote their fact's sentence, which must stay
    as written: they are left alone."""
    if epoch == 0 or question.startswith(CLOZE_PREFIX):
        return question
    return reword(question, random.Random(f"{seed}:{epoch}:{index}"))


def rules_version(reword: bool) -> int | None:
    """The rewording rules an adapter is trained with: recorded in its manifest, compared before reuse."""
    return VERSION if reword else None
