"""Inference state and the life of one query: submit, answer rounds, scoring, then settlement.

A phase's window is the heights up to its deadline, inclusive; end_block of the deadline height
closes it and opens the next phase, so every transition (and the settlement, which is the
chain's work, not any sender's) happens in FinalizeBlock. When everyone assigned has acted, the
deadline is pulled in to the current height. Every query therefore settles exactly once.
"""

from __future__ import annotations

import hashlib

from abci_app import params
from abci_app.context import Ctx
from abci_app.crypto import format_address, parse_address, verify
from abci_app.events import event
from abci_app.heightqueue import HeightQueue
from abci_app.x.auth.keeper import AuthKeeper
from abci_app.x.bank.keeper import BankKeeper
from abci_app.x.experts.keeper import ExpertsKeeper
from abci_app.x.inference import selection
from abci_app.x.inference.tally import Tally, Vote, build_receipt, copied, tally
from abci_app.x.inference.types import (
    DEADLINE_PREFIX,
    DRAW_PREFIX,
    EQUIVOCATION_PREFIX,
    ESCROW,
    EV_ANSWER_COMMITTED,
    EV_ANSWER_REVEALED,
    EV_EQUIVOCATION,
    EV_QUERY_ASSIGNED,
    EV_QUERY_SETTLED,
    EV_QUERY_SUBMITTED,
    EV_ROUND_STARTED,
    EV_SCORES_COMMITTED,
    EV_SCORES_REVEALED,
    EV_SCORING_STARTED,
    NEXT_ID_KEY,
    STORE,
    ErrCommitMismatch,
    ErrDuplicate,
    ErrFeeTooLow,
    ErrInvalidEvidence,
    ErrInvalidQuery,
    ErrInvalidScores,
    ErrNotAssigned,
    ErrTooFewExperts,
    ErrUnknownQuery,
    ErrWrongPhase,
    Phase,
    answer_commitment,
    answer_key,
    answer_sign_bytes,
    be8,
    models_key,
    query_key,
    query_life_blocks,
    receipt_key,
    score_key,
    scores_commitment,
)
from wire.llmnet.experts.v1 import experts_pb2
from wire.llmnet.inference.v1 import inference_pb2 as pb

DEADLINES = HeightQueue(STORE, DEADLINE_PREFIX)
"""Every open query, keyed by the last height of its current window."""
DRAWS = HeightQueue(STORE, DRAW_PREFIX)
"""Queries waiting for their draw, keyed by the height that draws them (the one after their submit)."""


class InferenceKeeper:
    def __init__(self, auth: AuthKeeper, bank: BankKeeper, experts: ExpertsKeeper) -> None:
        self.auth = auth
        self.bank = bank
        self.experts = experts

    # -- records ------------------------------------------------------------------------

    def params(self, ctx: Ctx) -> pb.Params:
        return params.load(ctx, STORE, pb.Params)

    def set_params(self, ctx: Ctx, value: pb.Params) -> None:
        params.save(ctx, STORE, value)

    def get(self, ctx: Ctx, query_id: int) -> pb.Query:
        raw = ctx.kv(STORE).get(query_key(query_id))
        if raw is None:
            raise ErrUnknownQuery(f"no query {query_id}")
        return pb.Query.FromString(raw)

    def recent(self, ctx: Ctx, limit: int, before_id: int = 0) -> list[pb.Query]:
        """Up to limit queries with id < before_id (0 = all), newest first."""
        next_id = int.from_bytes(ctx.kv(STORE).get(NEXT_ID_KEY) or be8(1), "big")
        top = next_id if before_id == 0 else min(before_id, next_id)
        return [self.get(ctx, i) for i in range(top - 1, max(top - 1 - limit, 0), -1)]

    def _save(self, ctx: Ctx, q: pb.Query) -> None:
        ctx.kv(STORE).set(query_key(q.id), q.SerializeToString())

    def answer(self, ctx: Ctx, query_id: int, round_: int, respondent: bytes) -> pb.AnswerEntry | None:
        raw = ctx.kv(STORE).get(answer_key(query_id, round_, respondent))
        return None if raw is None else pb.AnswerEntry.FromString(raw)

    def score_entry(self, ctx: Ctx, query_id: int, scorer: bytes) -> pb.ScoreEntry | None:
        raw = ctx.kv(STORE).get(score_key(query_id, scorer))
        return None if raw is None else pb.ScoreEntry.FromString(raw)

    def receipt(self, ctx: Ctx, query_id: int) -> pb.Receipt | None:
        raw = ctx.kv(STORE).get(receipt_key(query_id))
        return None if raw is None else pb.Receipt.FromString(raw)

    # -- submit and selection -----------------------------------------------------------

    def submit(self, ctx: Ctx, msg: pb.MsgSubmitQuery) -> int:
        """Escrow the fee and queue the draw of respondents and scorers for the next block, whose seed (the
        beacon of this block's votes) nobody knows yet, not even this block's proposer. Costs gas in
        proportion to the work it forces, never to the size of the domain. Raises ErrInvalidQuery,
        ErrFeeTooLow, ErrTooFewExperts or bank errors; on error nothing is escrowed."""
        params = self.params(ctx)
        if len(msg.prompt.encode()) > params.max_prompt_bytes:
            raise ErrInvalidQuery(f"prompt is over {params.max_prompt_bytes} bytes")
        if msg.k > params.max_k or msg.rounds > params.max_rounds:
            raise ErrInvalidQuery(f"k <= {params.max_k} and rounds <= {params.max_rounds} required")
        if msg.domain not in self.experts.params(ctx).domains:
            raise ErrInvalidQuery(f"domain {msg.domain!r} is not registered")
        if msg.max_fee < params.min_fee_per_respondent * msg.k * msg.rounds:
            raise ErrFeeTooLow(f"max_fee must be at least {params.min_fee_per_respondent} per respondent and round")
        ctx.gas.consume(params.submit_gas_per_task * (msg.k * msg.rounds + params.scorers), "query work")
        requester = parse_address(msg.requester)
        pool = self.experts.pool(ctx, msg.domain)
        eligible = pool.count() - (1 if (s := pool.slot_of(requester)) is not None and pool.weight(s) else 0)
        if eligible < msg.k + params.scorers:
            raise ErrTooFewExperts(f"domain {msg.domain} has {eligible} experts with free capacity besides the "
                                   f"requester; this query needs {msg.k} respondents and {params.scorers} scorers")
        query_id = int.from_bytes(ctx.kv(STORE).get(NEXT_ID_KEY) or be8(1), "big")
        ctx.kv(STORE).set(NEXT_ID_KEY, be8(query_id + 1))
        self.bank.move(ctx, requester, ESCROW, msg.max_fee)
        q = pb.Query(id=query_id, requester=msg.requester, domain=msg.domain, prompt=msg.prompt, max_fee=msg.max_fee,
                     k=msg.k, rounds=msg.rounds, phase=Phase.PHASE_AWAITING_DRAW, created_height=ctx.env.height)
        self._save(ctx, q)
        DRAWS.push(ctx, ctx.env.height + 1, be8(query_id))
        ctx.emit(event(EV_QUERY_SUBMITTED, query_id=query_id, requester=msg.requester, domain=msg.domain,
                       max_fee=msg.max_fee))
        return query_id

    def begin_block(self, ctx: Ctx) -> None:
        """Draw the queries submitted in the previous block (at most max_closes_per_block; the rest next), once
        the block has a seed."""
        if not ctx.env.seed:  # the beacon gave no seed (x/beacon): the draws wait for a block whose beacon does
            DRAWS.hold(ctx, ctx.env.height)
            return
        limit = self.params(ctx).max_closes_per_block
        due = DRAWS.due(ctx, ctx.env.height, limit)
        DRAWS.done(ctx, due, limit)
        for height, item in due:
            DRAWS.remove(ctx, height, item)
            self._draw(ctx, self.get(ctx, int.from_bytes(item, "big")))

    def _draw(self, ctx: Ctx, q: pb.Query) -> None:
        """Pick respondents and scorers with this block's seed, or, when capacity ran out since the
        submit (other queries of that block took it), give the requester its escrow back."""
        params = self.params(ctx)
        seed = selection.query_seed(ctx.env.seed, q.id)
        drawn = selection.assign(seed, self.experts.pool(ctx, q.domain), int(q.k), int(params.scorers),
                                 exclude=[parse_address(q.requester)])
        if len(drawn.respondents) < q.k or len(drawn.scorers) < params.scorers:
            self._cancel(ctx, q, "too few experts with free capacity at the draw")
            return
        for address in drawn.respondents + drawn.scorers:
            self.experts.take_assignment(ctx, address)
        q.respondents[:] = [format_address(a) for a in drawn.respondents]
        models = pb.RespondentModels(models=[self._model_of(ctx, a) for a in drawn.respondents])
        ctx.kv(STORE).set(models_key(q.id), models.SerializeToString())
        q.scorers[:] = [format_address(a) for a in drawn.scorers]
        q.draws.extend(pb.Draw(address=format_address(p.address), role=role, weight=str(p.weight),
                               point=str(p.point), total=str(p.total)) for role, p in drawn.picks)
        q.seed, q.block_seed, q.drawn_height = seed, ctx.env.seed, ctx.env.height
        q.phase, q.round = Phase.PHASE_ANSWER_COMMIT, 1
        self._set_deadline(ctx, q, ctx.env.height + params.commit_blocks)
        ctx.emit(event(EV_QUERY_ASSIGNED, query_id=q.id, respondents=",".join(q.respondents),
                       scorers=",".join(q.scorers), round=1, deadline=q.deadline))

    def _cancel(self, ctx: Ctx, q: pb.Query, reason: str) -> None:
        """Settle a query nobody was drawn for: all of its escrow back to the requester."""
        self.bank.move(ctx, ESCROW, parse_address(q.requester), q.max_fee)
        refund = pb.Payout(address=q.requester, role="refund", amount=q.max_fee, reason=reason)
        receipt = pb.Receipt(query_id=q.id, requester=q.requester, domain=q.domain, payouts=[refund], final_index=-1,
                             settled_height=ctx.env.height, prompt_hash=hashlib.sha256(q.prompt.encode()).hexdigest())
        q.phase = Phase.PHASE_SETTLED
        self._save(ctx, q)
        ctx.kv(STORE).set(receipt_key(q.id), receipt.SerializeToString())
        ctx.emit(event(EV_QUERY_SETTLED, query_id=q.id, final_index=-1, scores="", reason=reason))

    def _set_deadline(self, ctx: Ctx, q: pb.Query, height: int) -> None:
        if q.deadline:
            DEADLINES.remove(ctx, q.deadline, be8(q.id))
        q.deadline = height
        DEADLINES.push(ctx, height, be8(q.id))
        self._save(ctx, q)

    # -- answer rounds ------------------------------------------------------------------

    def _assigned(self, q: pb.Query, who: str, role: str) -> bytes:
        listed = q.respondents if role == "respondent" else q.scorers
        if who not in listed:
            raise ErrNotAssigned(f"{who} is not a {role} of query {q.id}")
        return parse_address(who)

    def _in_phase(self, ctx: Ctx, q: pb.Query, phase: int, round_: int | None = None) -> None:
        if q.phase != phase or (round_ is not None and q.round != round_) or ctx.env.height > q.deadline:
            raise ErrWrongPhase(f"query {q.id} is in {Phase.Name(q.phase)} round {q.round} until height "
                                f"{q.deadline}; this message needs {Phase.Name(phase)}"
                                + (f" round {round_}" if round_ is not None else ""))

    def commit_answer(self, ctx: Ctx, msg: pb.MsgCommitAnswer) -> None:
        q = self.get(ctx, msg.query_id)
        respondent = self._assigned(q, msg.respondent, "respondent")
        self._in_phase(ctx, q, Phase.PHASE_ANSWER_COMMIT, msg.round)
        if self.answer(ctx, q.id, q.round, respondent) is not None:
            raise ErrDuplicate(f"{msg.respondent} already committed to round {q.round} of query {q.id}")
        entry = pb.AnswerEntry(respondent=msg.respondent, round=q.round, commitment=msg.commitment)
        ctx.kv(STORE).set(answer_key(q.id, q.round, respondent), entry.SerializeToString())
        ctx.emit(event(EV_ANSWER_COMMITTED, query_id=q.id, round=q.round, respondent=msg.respondent))
        if all(self.answer(ctx, q.id, q.round, parse_address(r)) for r in q.respondents):
            self._set_deadline(ctx, q, ctx.env.height)

    def _open_reveal(self, ctx: Ctx, q: pb.Query) -> None:
        q.phase = Phase.PHASE_ANSWER_REVEAL
        self._set_deadline(ctx, q, ctx.env.height + self.params(ctx).reveal_blocks)

    def reveal_answer(self, ctx: Ctx, msg: pb.MsgRevealAnswer) -> None:
        q = self.get(ctx, msg.query_id)
        respondent = self._assigned(q, msg.respondent, "respondent")
        self._in_phase(ctx, q, Phase.PHASE_ANSWER_REVEAL, msg.round)
        if len(msg.answer.encode()) > self.params(ctx).max_answer_bytes:
            raise ErrInvalidQuery(f"answer is over {self.params(ctx).max_answer_bytes} bytes")
        entry = self.answer(ctx, q.id, q.round, respondent)
        if entry is None:
            raise ErrNotAssigned(f"{msg.respondent} did not commit in round {q.round} of query {q.id}")
        if entry.revealed:
            raise ErrDuplicate(f"{msg.respondent} already revealed round {q.round} of query {q.id}")
        if answer_commitment(ctx.env.chain_id, q.id, q.round, msg.respondent, msg.answer, msg.salt) != entry.commitment:
            raise ErrCommitMismatch("the answer and salt do not match this respondent's commitment for this "
                                    "query and round")
        entry.revealed, entry.answer = True, msg.answer
        ctx.kv(STORE).set(answer_key(q.id, q.round, respondent), entry.SerializeToString())
        self.experts.record_delivered(ctx, respondent)
        ctx.emit(event(EV_ANSWER_REVEALED, query_id=q.id, round=q.round, respondent=msg.respondent))
        entries = [self.answer(ctx, q.id, q.round, parse_address(r)) for r in q.respondents]
        if all(e is not None and e.revealed for e in entries):
            self._set_deadline(ctx, q, ctx.env.height)

    def _missed(self, ctx: Ctx, q: pb.Query, round_: int, address: bytes) -> bool:
        entry = self.answer(ctx, q.id, round_, address)
        return entry is None or not entry.revealed

    def _close_round(self, ctx: Ctx, q: pb.Query) -> None:
        """End of a reveal window: penalise who did not answer or reveal (once per query: a query with many
        rounds must not count as many misses in a row), then next round or scoring."""
        for r in q.respondents:
            address = parse_address(r)
            entry = self.answer(ctx, q.id, q.round, address)
            if entry is None or not entry.revealed:
                if any(self._missed(ctx, q, n, address) for n in range(1, q.round)):
                    continue  # already counted for this query
                reason = "no answer in an assigned round" if entry is None else "committed but never revealed"
                self.experts.record_missed(ctx, address, q.domain, q.id, reason)
        params = self.params(ctx)
        if q.round < q.rounds:
            q.round += 1
            q.phase = Phase.PHASE_ANSWER_COMMIT
            self._set_deadline(ctx, q, ctx.env.height + params.commit_blocks)
            ctx.emit(event(EV_ROUND_STARTED, query_id=q.id, round=q.round, deadline=q.deadline))
        else:
            for r in q.respondents:  # their part is done: free their capacity
                self.experts.release_assignment(ctx, parse_address(r))
            q.phase = Phase.PHASE_SCORE_COMMIT
            self._set_deadline(ctx, q, ctx.env.height + params.commit_blocks)
            ctx.emit(event(EV_SCORING_STARTED, query_id=q.id, scorers=",".join(q.scorers), deadline=q.deadline))

    # -- scoring ------------------------------------------------------------------------

    def commit_scores(self, ctx: Ctx, msg: pb.MsgCommitScores) -> None:
        q = self.get(ctx, msg.query_id)
        scorer = self._assigned(q, msg.scorer, "scorer")
        self._in_phase(ctx, q, Phase.PHASE_SCORE_COMMIT)
        if self.score_entry(ctx, q.id, scorer) is not None:
            raise ErrDuplicate(f"{msg.scorer} already committed scores for query {q.id}")
        entry = pb.ScoreEntry(scorer=msg.scorer, commitment=msg.commitment)
        ctx.kv(STORE).set(score_key(q.id, scorer), entry.SerializeToString())
        ctx.emit(event(EV_SCORES_COMMITTED, query_id=q.id, scorer=msg.scorer))
        if all(self.score_entry(ctx, q.id, parse_address(s)) for s in q.scorers):
            self._set_deadline(ctx, q, ctx.env.height)

    def reveal_scores(self, ctx: Ctx, msg: pb.MsgRevealScores) -> None:
        q = self.get(ctx, msg.query_id)
        scorer = self._assigned(q, msg.scorer, "scorer")
        self._in_phase(ctx, q, Phase.PHASE_SCORE_REVEAL)
        if len(msg.scores) != len(q.respondents):
            raise ErrInvalidScores(f"need {len(q.respondents)} scores (one per respondent), got {len(msg.scores)}")
        entry = self.score_entry(ctx, q.id, scorer)
        if entry is None:
            raise ErrNotAssigned(f"{msg.scorer} did not commit scores for query {q.id}")
        if entry.revealed:
            raise ErrDuplicate(f"{msg.scorer} already revealed scores for query {q.id}")
        if scores_commitment(ctx.env.chain_id, q.id, msg.scorer, list(msg.scores), msg.salt) != entry.commitment:
            raise ErrCommitMismatch("the scores and salt do not match this scorer's commitment for this query")
        entry.revealed = True
        entry.scores.extend(msg.scores)
        ctx.kv(STORE).set(score_key(q.id, scorer), entry.SerializeToString())
        self.experts.record_delivered(ctx, scorer, answer=False)
        ctx.emit(event(EV_SCORES_REVEALED, query_id=q.id, scorer=msg.scorer))
        if all((e := self.score_entry(ctx, q.id, parse_address(s))) is not None and e.revealed for s in q.scorers):
            self._set_deadline(ctx, q, ctx.env.height)

    def _settle(self, ctx: Ctx, q: pb.Query) -> None:
        """The scoring window closed: tally, apply the tally, store the receipt. Runs once per query:
        the query leaves the deadline queue here and its phase becomes SETTLED."""
        DEADLINES.remove(ctx, q.deadline, be8(q.id))
        q.deadline = 0
        history = [[e.answer if (e := self.answer(ctx, q.id, n, parse_address(r))) is not None and e.revealed
                    else None for n in range(1, q.rounds + 1)] for r in q.respondents]
        finals = [rounds[-1] for rounds in history]
        for s in q.scorers:
            self.experts.release_assignment(ctx, parse_address(s))
        votes = self._votes(ctx, q)
        result = tally(q, finals, votes, self.params(ctx), self.experts.params(ctx).reputation_scale,
                       copied(history))
        self._apply(ctx, q, votes, result)
        missed = [r for r, rounds in zip(q.respondents, history, strict=True) for a in rounds if a is None]
        missed += sorted(set(q.scorers) - {v.scorer for v in votes})
        receipt = build_receipt(q, finals, result, self._models(ctx, q), missed, ctx.env.height)
        q.phase = Phase.PHASE_SETTLED
        self._save(ctx, q)
        ctx.kv(STORE).set(receipt_key(q.id), receipt.SerializeToString())
        ctx.emit(event(EV_QUERY_SETTLED, query_id=q.id, final_index=receipt.final_index,
                       scores=",".join(str(s) for s in receipt.scores)))

    def _votes(self, ctx: Ctx, q: pb.Query) -> list[Vote]:
        """Revealed scores with their scorer's bond and scorer reputation; a scorer that did not reveal
        has a miss recorded (reputation, never bond: scoring is a service, not a duty to the requester)."""
        votes = []
        for s in q.scorers:
            address = parse_address(s)
            entry = self.score_entry(ctx, q.id, address)
            if entry is None or not entry.revealed:
                self.experts.record_missed(ctx, address, q.domain, q.id, "scores not revealed", as_scorer=True)
                continue
            expert = self.experts.get(ctx, address)
            stake = expert.bond if expert else 0
            votes.append(Vote(s, stake, self.experts.scorer_reputation(ctx, address), tuple(entry.scores)))
        return votes

    def _apply(self, ctx: Ctx, q: pb.Query, votes: list[Vote], result: Tally) -> None:
        """Pay out of escrow and move reputations as the tally says, respondents first, then scorers."""
        n = len(q.respondents)
        for i, target in enumerate(result.reputation_targets):
            self._pay(ctx, result.payouts[i])
            address = parse_address(q.respondents[i])
            if target is not None and not (result.copies[i]
                                           and target >= self.experts.reputation(ctx, q.domain, address)):
                self.experts.ema(ctx, q.domain, address, target, q.id, "answer")
        for j, vote in enumerate(votes):
            self._pay(ctx, result.payouts[n + j])
            agreement = result.agreements[j]
            if agreement is not None:
                self.experts.update_scorer_reputation(ctx, parse_address(vote.scorer), agreement)
        if result.refund:
            self.bank.move(ctx, ESCROW, parse_address(q.requester), result.refund)

    def _pay(self, ctx: Ctx, payout: pb.Payout) -> None:
        if payout.amount > 0:
            address = parse_address(payout.address)
            self.bank.move(ctx, ESCROW, address, payout.amount)
            self.experts.credit(ctx, address, payout.amount)

    def _models(self, ctx: Ctx, q: pb.Query) -> list[experts_pb2.ModelCommitment]:
        """Each respondent's model commitment as it stood at the draw, taken out of state for the receipt (for a
        query drawn by an earlier version, which kept none: its respondents' records as they stand now)."""
        raw = ctx.kv(STORE).get(models_key(q.id))
        if raw is None:
            return [self._model_of(ctx, parse_address(r)) for r in q.respondents]
        ctx.kv(STORE).delete(models_key(q.id))
        return list(pb.RespondentModels.FromString(raw).models)

    def _model_of(self, ctx: Ctx, address: bytes) -> experts_pb2.ModelCommitment:
        """An expert's model commitment; an expert that fully unbonded has no record left."""
        expert = self.experts.get(ctx, address)
        return expert.model if expert is not None else experts_pb2.ModelCommitment()

    # -- equivocation -------------------------------------------------------------------

    def report_equivocation(self, ctx: Ctx, msg: pb.MsgReportEquivocation) -> None:
        q = self.get(ctx, msg.query_id)
        expert = self._assigned(q, msg.expert, "respondent")
        if not 1 <= msg.round <= q.rounds:
            raise ErrInvalidEvidence(f"query {q.id} has rounds 1..{q.rounds}")
        params = self.params(ctx)
        # from its draw: a draw held back (no seed, or a backlog) moves the whole query later
        expires = q.drawn_height - 1 + query_life_blocks(params) + params.evidence_max_age_blocks
        if ctx.env.height > expires:
            raise ErrInvalidEvidence(f"evidence about query {q.id} was accepted until height {expires}")
        if msg.reporter == msg.expert:
            raise ErrInvalidEvidence("an expert cannot report itself (it would collect its own reporter share)")
        marker = EQUIVOCATION_PREFIX + be8(q.id) + msg.round.to_bytes(2, "big") + expert
        if ctx.kv(STORE).get(marker) is not None:
            raise ErrDuplicate(f"equivocation of {msg.expert} in query {q.id} round {msg.round} already punished")
        public_key = self.auth.account(ctx, expert).public_key
        for answer, sig in ((msg.answer_a, msg.signature_a), (msg.answer_b, msg.signature_b)):
            if not verify(public_key, answer_sign_bytes(ctx.env.chain_id, q.id, msg.round, answer), sig):
                raise ErrInvalidEvidence(f"a signature is not {msg.expert}'s over that answer")
        ctx.kv(STORE).set(marker, b"\x01")
        amount = self.experts.slash(ctx, expert, q.domain, q.id, "equivocation", self.experts.params(ctx).slash_ppm,
                                    reporter=parse_address(msg.reporter))
        self.experts.jail(ctx, expert, "equivocation")
        ctx.emit(event(EV_EQUIVOCATION, query_id=q.id, round=msg.round, expert=msg.expert, reporter=msg.reporter,
                       slashed=amount))

    # -- end of block -------------------------------------------------------------------

    def end_block(self, ctx: Ctx) -> None:
        """Close every window whose last height is this one (or earlier), at most max_closes_per_block;
        the rest close first thing in the next block (their windows are already shut to messages)."""
        limit = self.params(ctx).max_closes_per_block
        due = DEADLINES.due(ctx, ctx.env.height, limit)
        DEADLINES.done(ctx, due, limit)
        for _, item in due:
            q = self.get(ctx, int.from_bytes(item, "big"))
            if q.phase == Phase.PHASE_ANSWER_COMMIT:
                self._open_reveal(ctx, q)
            elif q.phase == Phase.PHASE_ANSWER_REVEAL:
                self._close_round(ctx, q)
            elif q.phase == Phase.PHASE_SCORE_COMMIT:
                q.phase = Phase.PHASE_SCORE_REVEAL
                self._set_deadline(ctx, q, ctx.env.height + self.params(ctx).reveal_blocks)
            elif q.phase == Phase.PHASE_SCORE_REVEAL:
                self._settle(ctx, q)
