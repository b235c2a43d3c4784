"""How a respondent answers a round after the first: the answers it weighs, and when no model run is needed.

Round r > 1 shows each respondent its peers' revealed answers of round r-1. Generating again was the
longest step of a query, and a model shown a peer's answer did not reliably choose the better one: a
trained respondent dropped its own right answer for a base model's rambling, a base model rambled on.
So the answer is chosen among the previous round's wherever the choice can be made without generating:
- every peer said what I said: it stands ("agreed");
- I hold an adapter for the domain: the answer it finds likeliest, by the measure scorers judge with
  (experts/judge.py), mine on a tie ("kept", "adopted"), never my own answer restated by a peer (restates);
- I answer with the base model and a peer ranks above me (the chain's reputation in the domain; on a tie,
  the briefer answer): its answer ("deferred"; the chain pays and credits the writer, not the taker:
  abci_app/x/inference/tally.py).
Otherwise (a base-model respondent ranked above every peer) the daemon generates again, the peers' answers
in the prompt (experts/answers.py).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Callable

from abci_app.x.inference.tally import answer_words
from experts import judge
from experts.answers import answer_prompt, fitted_prompt
from experts.engine import Engine
from experts.notes import terms
from llmnet.client.sdk import Client, ClientError, NodeUnreachable
from wire.llmnet.inference.v1 import inference_pb2 as inf
from wire.llmnet.query.v1 import query_pb2

Scores = Callable[[inf.Query, list[str], str], list[int]]
"""(query, answers, adapter) -> each answer's score as this expert's scorer gives it, one answer at a time
where the engine fails on some (experts/daemon.py ExpertDaemon._scores)."""


_HIDDEN = re.compile("[\u00ad\u034f\u180e\u200b-\u200f\u2060-\u2064\ufeff]")
"""Characters that show as nothing: inside a word ("Mar\u00adta") they hid it from the comparison."""
_LOOKALIKES = str.maketrans({
    **dict(zip("аеорсухіјѕԁһԛԝ", "aeopcyxijsdhqw", strict=True)),  # Cyrillic
    **dict(zip("АВЕКМНОРСТХІЈЅ", "ABEKMHOPCTXIJS", strict=True)),
    **dict(zip("αεικνορτυχ", "aeikvoptux", strict=True)),  # Greek
    **dict(zip("ΑΒΕΗΙΚΜΝΟΡΤΥΧΖ", "ABEHIKMNOPTYXZ", strict=True)),
})
"""Letters of other scripts drawn like Latin ones: "Mаrtа" with Cyrillic а read as another word."""


def _plain(text: str) -> str:
    return unicodedata.normalize("NFKC", _HIDDEN.sub("", text)).translate(_LOOKALIKES)


def restates(answer: str, mine: str, question: str) -> bool:
    """Whether at least half of answer's content words (experts/notes.py terms: stop words dropped, endings
    stripped), the question's own words aside, are words of mine: my answer cut down or shuffled. Answers
    repeat the question's subject, so its words prove nothing; invisible characters, full-width forms and
    Cyrillic or Greek look-alike letters are read as the Latin words they show. A paraphrase in other words,
    or a cut padded with new words, is not caught."""
    asked = set(terms(_plain(question)))
    words = set(terms(_plain(answer))) - asked
    return bool(words) and 2 * len(words & (set(terms(_plain(mine))) - asked)) >= len(words)


class LaterRound:
    def __init__(self, engine: Engine, client: Client, address: str, scores: Scores) -> None:
        self.engine, self.client, self.address = engine, client, address
        self._scores = scores
        self._deferred_answers: dict[tuple[int, int], str | None] = {}
        """(query, round) -> the peer's answer taken up (deferred), or None: decided once a round."""

    def forget(self, query_id: int) -> None:
        """Drop a settled query's decisions."""
        for slot in [s for s in self._deferred_answers if s[0] == query_id]:
            del self._deferred_answers[slot]

    def previous(self, status: query_pb2.QueryStatusResponse) -> str | None:
        """My revealed answer of the previous round."""
        query, me = status.query, self.address
        return next((a.answer for a in status.answers if a.respondent == me and a.round == query.round - 1
                     and a.revealed), None)

    def answered_without_model(self, status: query_pb2.QueryStatusResponse) -> bool:
        """Whether this round's answer will be chosen among the previous round's (without_model), not
        generated: cheap to tell, so a generation is not started ahead for nothing."""
        if self.agreed(status) is not None:
            return True
        if self.engine.adapter_for(status.query.domain):
            return self.previous(status) is not None and bool(self.peers(status))
        return self.deferred(status) is not None

    def without_model(self, status: query_pb2.QueryStatusResponse) -> tuple[str, str] | None:
        """A later round's answer chosen among the previous round's, and how ("agreed", "kept", "adopted",
        "deferred": see the module's doc); None: generate one, the peers' answers in the prompt."""
        query = status.query
        mine, peers = self.previous(status), self.peers(status)
        if mine is None or not peers:  # round 1 has no previous round
            return None
        agreed = self.agreed(status)
        if agreed is not None:
            return agreed, "agreed"
        domain = self.engine.adapter_for(query.domain)
        if domain:  # never my own answer restated (see deferred): taking it up would credit the restater
            candidates = [mine, *[p for p in peers if not restates(p, mine, query.prompt)]]
            best = self.likeliest(query, candidates, domain) if len(candidates) > 1 else 0
            return candidates[best], "kept" if best == 0 else "adopted"
        deferred = self.deferred(status)
        return (deferred, "deferred") if deferred is not None else None

    def likeliest(self, query: inf.Query, candidates: list[str], domain: str) -> int:
        """The candidate (mine first) the scorers' measure rates best; a tie keeps mine. The same choice as
        scoring them all, with fewer base-model passes (this choice is what the round waits for): the lift
        check only lowers a score to 0, so a peer whose adapter score is not above my final score cannot win,
        and none needs its pass. Usually the adapter alone settles it: a base model's rambling scores 0."""
        try:
            adapted = self.engine.answer_logprobs(fitted_prompt(self.engine, query, []), candidates, domain)
            alone = [judge.adapter_score(lp) for lp in adapted]
            scores = [0] * len(candidates)
            if any(alone[1:]):
                question = self.engine.fit(answer_prompt(query, []))
                if alone[0]:
                    [base] = self.engine.answer_logprobs(question, candidates[:1], "")
                    scores[0] = judge.likelihood_score(adapted[0], base)
                rivals = [i for i in range(1, len(candidates)) if alone[i] > scores[0]]
                if rivals:
                    base_rivals = self.engine.answer_logprobs(question, [candidates[i] for i in rivals], "")
                    for i, base in zip(rivals, base_rivals, strict=True):
                        scores[i] = judge.likelihood_score(adapted[i], base)
        except Exception:  # noqa: BLE001 - one peer's text must not cost me my answer: _scores takes them one by one
            scores = self._scores(query, candidates, domain)
        return max(range(len(candidates)), key=lambda i: (scores[i], i == 0))

    def deferred(self, status: query_pb2.QueryStatusResponse) -> str | None:
        """Without an adapter for the domain, the previous-round answer of the peer ranked best, when it ranks
        above me: by the chain's reputation in the domain first (whose answers its scorers found right); on a
        tie (a new chain or domain, where every expert starts alike) by the briefer answer (every expert is
        asked to answer briefly, and a model that knows nothing of the domain rambles to its token limit),
        then by a hash of the query and the address, which nobody can choose for every query. A strict order:
        two respondents never take up each other's answers (a swap would leave each answer with its taker
        alone, and the chain, abci_app/x/inference/tally.py, credits a taker only when the writer dropped it).
        A base model shown a trained peer's answer mostly rambles on again, and generating that took longer
        than any other step of a query: taking it up gives the requester a second voice, sooner, and earns
        the taker nothing. An answer without a word ("", ".") is never taken up: it would win every tie on
        brevity. Nor, on a reputation tie, is one that restates mine (restates): a peer that read my answer
        early (its requester may see it provisionally) and revealed it cut down would win the tie on brevity
        and be paid and credited as its writer, while I, its taker, got nothing. Decided once per round."""
        query = status.query
        slot = (query.id, query.round)
        if slot not in self._deferred_answers:
            mine = self.previous(status)
            peers = [(who, answer) for who, answer in self.peer_answers(status) if answer_words(answer)]
            if mine is None or not peers:
                return None
            rated = {who: self.reputation(who, query.domain) for who in [self.address, *sorted(dict(peers))]}
            peers = [(who, answer) for who, answer in peers
                     if rated[who] != rated[self.address] or not restates(answer, mine, query.prompt)]
            if not peers:
                self._deferred_answers[slot] = None
                return None

            def rank(who: str, answer: str) -> tuple[int, int, bytes]:
                return rated[who], -len(answer.strip()), hashlib.sha256(f"{query.id}/{who}".encode()).digest()

            best = max(peers, key=lambda p: rank(*p))
            self._deferred_answers[slot] = best[1] if rank(*best) > rank(self.address, mine) else None
        return self._deferred_answers[slot]

    def reputation(self, address: str, domain: str) -> int:
        try:
            expert = self.client.expert(address)
        except NodeUnreachable:
            raise  # the node, not this query: the loop backs off or fails over
        except ClientError:  # an answer about this expert (e.g. not found): rated nothing, never a reason to stop
            return 0
        return next((r.reputation for r in expert.reputation if r.domain == domain), 0)

    def agreed(self, status: query_pb2.QueryStatusResponse) -> str | None:
        """My previous round's answer when every peer who revealed one gave the same words, as the chain
        compares answers (answer_words: case, punctuation and spacing aside): "Camaran." and "Camaran" are one
        answer to it, and weighing them against each other would only cost a model pass."""
        mine, peers = self.previous(status), self.peers(status)
        if mine is None or not peers or any(answer_words(p) != answer_words(mine) for p in peers):
            return None
        return mine

    def peers(self, status: query_pb2.QueryStatusResponse) -> list[str]:
        """The other respondents' revealed answers of the previous round."""
        return [answer for _, answer in self.peer_answers(status)]

    def peer_answers(self, status: query_pb2.QueryStatusResponse) -> list[tuple[str, str]]:
        """(respondent, answer) of the other respondents' revealed answers of the previous round."""
        query, me = status.query, self.address
        return [(a.respondent, a.answer) for a in status.answers
                if a.round == query.round - 1 and a.revealed and a.respondent != me]
