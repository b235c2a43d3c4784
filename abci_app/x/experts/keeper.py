"""Experts state: records, bonds in module pools, reputation with history, slashing and jail."""

from __future__ import annotations

from collections.abc import Iterable

from abci_app import params
from abci_app.context import Ctx
from abci_app.crypto import format_address, parse_address
from abci_app.events import event
from abci_app.fixedpoint import clamp, ema, ppm_of
from abci_app.heightqueue import HeightQueue
from abci_app.store.db import prefix_end
from abci_app.x.bank.keeper import BankKeeper
from abci_app.x.experts.pool import DomainPool
from abci_app.x.experts.types import (
    BONDED_POOL,
    EV_DOMAIN_ADDED,
    EV_EXPERT_REGISTERED,
    EV_EXPERT_UNBONDED,
    EV_EXPERT_UNBONDING,
    EV_EXPERT_UNJAILED,
    EV_EXPERT_UPDATED,
    EV_JAIL,
    EV_REPUTATION,
    EV_SLASH,
    HISTORY_PREFIX,
    SCORER_REP_PREFIX,
    STORE,
    UNBONDING_POOL,
    UNBONDING_PREFIX,
    ErrAlreadyRegistered,
    ErrBondTooLow,
    ErrInvalidExpert,
    ErrNotAuthority,
    ErrNotJailed,
    ErrStillJailed,
    ErrUnbonding,
    ErrUnknownDomain,
    ErrUnknownExpert,
    Status,
    expert_key,
    reputation_key,
    selection_weight,
)
from wire.llmnet.experts.v1 import experts_pb2 as pb

UNBONDING = HeightQueue(STORE, UNBONDING_PREFIX)


def _be(n: int, width: int = 8) -> bytes:
    return n.to_bytes(width, "big")


class ExpertsKeeper:
    def __init__(self, bank: BankKeeper) -> None:
        self.bank = bank

    # -- params and records -------------------------------------------------------------

    def params(self, ctx: Ctx) -> pb.Params:
        return params.load(ctx, STORE, pb.Params)

    def set_params(self, ctx: Ctx, value: pb.Params) -> None:
        params.save(ctx, STORE, value)

    def get(self, ctx: Ctx, address: bytes) -> pb.Expert | None:
        raw = ctx.kv(STORE).get(expert_key(address))
        return None if raw is None else pb.Expert.FromString(raw)

    def require(self, ctx: Ctx, address: bytes) -> pb.Expert:
        expert = self.get(ctx, address)
        if expert is None:
            raise ErrUnknownExpert(f"{format_address(address)} is not a registered expert")
        return expert

    def set(self, ctx: Ctx, address: bytes, expert: pb.Expert) -> None:
        ctx.kv(STORE).set(expert_key(address), expert.SerializeToString())

    def _check_domains(self, ctx: Ctx, domains: list[str]) -> None:
        known = set(self.params(ctx).domains)
        unknown = sorted(set(domains) - known)
        if unknown:
            raise ErrUnknownDomain(f"unknown domains {unknown}; registered: {sorted(known)}")

    def _capacity(self, ctx: Ctx, asked: int) -> int:
        params = self.params(ctx)
        capacity = asked or params.default_capacity
        if not 1 <= capacity <= params.max_capacity:
            raise ErrInvalidExpert(f"capacity must be 1..{params.max_capacity}, got {capacity}")
        return capacity

    # -- transitions --------------------------------------------------------------------

    def register(self, ctx: Ctx, msg: pb.MsgRegisterExpert) -> None:
        """Raises ErrAlreadyRegistered, ErrUnknownDomain, ErrBondTooLow or bank errors."""
        address = parse_address(msg.address)
        if self.get(ctx, address) is not None:
            raise ErrAlreadyRegistered(f"{msg.address} is already registered; use MsgUpdateExpert")
        self._check_domains(ctx, list(msg.domains))
        params = self.params(ctx)
        if msg.bond < params.min_bond:
            raise ErrBondTooLow(f"bond {msg.bond} is below the minimum {params.min_bond}")
        capacity = self._capacity(ctx, msg.capacity)
        self.bank.move(ctx, address, BONDED_POOL, msg.bond)
        expert = pb.Expert(address=msg.address, domains=sorted(msg.domains), endpoint=msg.endpoint,
                           model=msg.model, bond=msg.bond, status=Status.EXPERT_STATUS_ACTIVE, capacity=capacity)
        self.set(ctx, address, expert)
        self._seed_reputation(ctx, address, expert.domains)
        self._refresh(ctx, expert)
        ctx.emit(event(EV_EXPERT_REGISTERED, expert=msg.address, domains=",".join(expert.domains), bond=msg.bond,
                       adapter_sha256=msg.model.adapter_sha256))

    def update(self, ctx: Ctx, msg: pb.MsgUpdateExpert) -> None:
        address = parse_address(msg.address)
        expert = self.require(ctx, address)
        if expert.status == Status.EXPERT_STATUS_UNBONDING:
            raise ErrUnbonding(f"{msg.address} is unbonding and cannot change")
        self._check_domains(ctx, list(msg.domains))
        left = sorted(set(expert.domains) - set(msg.domains))
        expert.capacity = self._capacity(ctx, msg.capacity)
        del expert.domains[:]
        expert.domains.extend(sorted(msg.domains))
        expert.endpoint = msg.endpoint
        expert.model.CopyFrom(msg.model)
        self.set(ctx, address, expert)
        self._seed_reputation(ctx, address, expert.domains)
        self._refresh(ctx, expert, [*expert.domains, *left])
        ctx.emit(event(EV_EXPERT_UPDATED, expert=msg.address, domains=",".join(expert.domains)))

    def unbond(self, ctx: Ctx, address: bytes) -> None:
        expert = self.require(ctx, address)
        if expert.status == Status.EXPERT_STATUS_UNBONDING:
            raise ErrUnbonding(f"{expert.address} is already unbonding")
        params = self.params(ctx)
        if expert.bond:
            self.bank.move(ctx, BONDED_POOL, UNBONDING_POOL, expert.bond)
        expert.status = Status.EXPERT_STATUS_UNBONDING
        expert.unbond_at = ctx.env.height + params.unbonding_blocks
        self.set(ctx, address, expert)
        self._refresh(ctx, expert)
        UNBONDING.push(ctx, expert.unbond_at, address)
        ctx.emit(event(EV_EXPERT_UNBONDING, expert=expert.address, amount=expert.bond, release_height=expert.unbond_at))

    def unjail(self, ctx: Ctx, address: bytes) -> None:
        expert = self.require(ctx, address)
        if expert.status != Status.EXPERT_STATUS_JAILED:
            raise ErrNotJailed(f"{expert.address} is not jailed")
        if ctx.env.height < expert.jailed_until:
            raise ErrStillJailed(f"{expert.address} is jailed until height {expert.jailed_until}")
        if expert.bond < self.params(ctx).min_bond:
            raise ErrBondTooLow(f"bond {expert.bond} fell below the minimum after slashing; unbond and re-register")
        expert.status = Status.EXPERT_STATUS_ACTIVE
        expert.missed = 0
        self.set(ctx, address, expert)
        self._refresh(ctx, expert)
        ctx.emit(event(EV_EXPERT_UNJAILED, expert=expert.address))

    def add_domain(self, ctx: Ctx, authority: str, domain: str) -> None:
        params = self.params(ctx)
        if not params.authority or authority != params.authority:
            raise ErrNotAuthority(f"{authority} is not the domain authority")
        if domain not in params.domains:
            params.domains.append(domain)
            params.domains.sort()
            self.set_params(ctx, params)
        ctx.emit(event(EV_DOMAIN_ADDED, domain=domain))

    # -- reputation ---------------------------------------------------------------------

    def _seed_reputation(self, ctx: Ctx, address: bytes, domains: Iterable[str]) -> None:
        """Give the initial reputation in each domain that has none yet (a returning expert keeps its own)."""
        initial = self.params(ctx).initial_reputation
        for domain in domains:
            if ctx.kv(STORE).get(reputation_key(domain, address)) is None:
                self.set_reputation(ctx, domain, address, initial, 0, "register")

    def reputation(self, ctx: Ctx, domain: str, address: bytes) -> int:
        raw = ctx.kv(STORE).get(reputation_key(domain, address))
        return 0 if raw is None else int.from_bytes(raw, "big")

    def set_reputation(self, ctx: Ctx, domain: str, address: bytes, value: int, query_id: int, reason: str) -> None:
        value = clamp(value, 0, self.params(ctx).reputation_scale)
        ctx.kv(STORE).set(reputation_key(domain, address), _be(value))
        point = pb.ReputationPoint(domain=domain, height=ctx.env.height, query_id=query_id, reputation=value,
                                   reason=reason)
        key = base = HISTORY_PREFIX + address + _be(ctx.env.height) + _be(query_id) + domain.encode() + b"/" + \
            reason.encode()
        repeat = 0
        while ctx.kv(STORE).get(key) is not None:  # e.g. two equivocation slashes for one query in one block
            repeat += 1
            key = base + b"#" + _be(repeat)
        ctx.kv(STORE).set(key, point.SerializeToString())
        ctx.emit(event(EV_REPUTATION, expert=format_address(address), domain=domain, value=value, reason=reason,
                       query_id=query_id))
        expert = self.get(ctx, address)
        if expert is not None:
            self._refresh(ctx, expert, [domain])

    def ema(self, ctx: Ctx, domain: str, address: bytes, score: int, query_id: int, reason: str) -> None:
        """R <- R + alpha * (s - R), with s on the reputation scale."""
        current = self.reputation(ctx, domain, address)
        self.set_reputation(ctx, domain, address, ema(current, score, self.params(ctx).alpha_ppm), query_id, reason)

    def scorer_reputation(self, ctx: Ctx, address: bytes) -> int:
        raw = ctx.kv(STORE).get(SCORER_REP_PREFIX + address)
        return self.params(ctx).initial_reputation if raw is None else int.from_bytes(raw, "big")

    def update_scorer_reputation(self, ctx: Ctx, address: bytes, agreement: int) -> None:
        """The same moving average as domain reputation, over a scorer's agreement with the aggregates."""
        params = self.params(ctx)
        value = ema(self.scorer_reputation(ctx, address), agreement, params.alpha_ppm)
        ctx.kv(STORE).set(SCORER_REP_PREFIX + address, _be(clamp(value, 0, params.reputation_scale)))

    def history(self, ctx: Ctx, address: bytes, cursor: bytes, limit: int, newest_first: bool = False
                ) -> list[tuple[bytes, pb.ReputationPoint]]:
        """Up to limit points of an expert's history, each with its cursor (key suffix): oldest first
        after the cursor, or newest first before it (b"": from the start or the end)."""
        prefix = HISTORY_PREFIX + address
        start, end = prefix, prefix_end(prefix)
        if cursor and newest_first:
            end = prefix + cursor
        elif cursor:
            start = prefix + cursor + b"\x00"
        rows = ctx.kv(STORE).iterate_range(start, end, limit, reverse=newest_first)
        return [(k[len(prefix):], pb.ReputationPoint.FromString(v)) for k, v in rows]

    def domain_reputations(self, ctx: Ctx, domain: str, after: bytes = b"", rows: int = 100
                           ) -> tuple[list[tuple[pb.Expert, int]], bytes]:
        """Registered experts that have a reputation in domain, with it, in address order, among the next
        `rows` reputation rows after the address `after`; and the address of the last row read when more may
        follow (else b""). An expert that left the domain keeps its reputation there (and gets it back if it
        returns); one that unbonded for good has no record and is skipped, but its row still counts against
        `rows`: a page is bounded by what it reads, and rows of experts gone never end a listing early."""
        prefix = reputation_key(domain, b"")
        start = prefix + after + b"\x00" if after else prefix
        out, last = [], b""
        read = ctx.kv(STORE).iterate_range(start, prefix_end(prefix), rows + 1)
        for key, raw in read[:rows]:
            last = key[len(prefix):]
            expert = self.get(ctx, last)
            if expert is not None:
                out.append((expert, int.from_bytes(raw, "big")))
        return out, last if len(read) > rows else b""

    # -- selection pools ----------------------------------------------------------------

    def pool(self, ctx: Ctx, domain: str) -> DomainPool:
        return DomainPool(ctx, domain)

    def _refresh(self, ctx: Ctx, expert: pb.Expert, domains: Iterable[str] | None = None) -> None:
        """Rewrite the expert's selection weight in each domain: positive only while it is active, serves
        the domain and has free capacity. Every change to those goes through here."""
        params = self.params(ctx)
        address = parse_address(expert.address)
        free = expert.status == Status.EXPERT_STATUS_ACTIVE and expert.open_assignments < expert.capacity
        for domain in sorted(set(expert.domains if domains is None else domains)):
            weight = selection_weight(self.reputation(ctx, domain, address), params.exploration_floor,
                                      params.selection_exponent) if free and domain in expert.domains else 0
            DomainPool(ctx, domain).set_weight(address, weight)

    def take_assignment(self, ctx: Ctx, address: bytes) -> None:
        """Drawn for a query: one less free slot until release_assignment."""
        expert = self.require(ctx, address)
        expert.open_assignments += 1
        self.set(ctx, address, expert)
        self._refresh(ctx, expert)

    def release_assignment(self, ctx: Ctx, address: bytes) -> None:
        expert = self.get(ctx, address)  # an expert that fully unbonded has no record left
        if expert is not None and expert.open_assignments:
            expert.open_assignments -= 1
            self.set(ctx, address, expert)
            self._refresh(ctx, expert)

    # -- work record, slashing ----------------------------------------------------------

    def record_delivered(self, ctx: Ctx, address: bytes, answer: bool = True) -> None:
        """Work delivered (an answer revealed, or scores): the run of misses is broken. Not while jailed: an
        expert coming back from an outage still reveals what it committed before, and the run that jailed it
        must stay readable until it unjails."""
        expert = self.get(ctx, address)
        if expert is not None:
            if expert.status != Status.EXPERT_STATUS_JAILED:
                expert.missed = 0
            expert.answered += 1 if answer else 0
            self.set(ctx, address, expert)

    def credit(self, ctx: Ctx, address: bytes, amount: int) -> None:
        expert = self.get(ctx, address)
        if expert is not None:
            expert.earned += amount
            self.set(ctx, address, expert)

    def record_missed(self, ctx: Ctx, address: bytes, domain: str, query_id: int, reason: str,
                      as_scorer: bool = False) -> None:
        """A missed assignment costs reputation (domain reputation for an answer, scorer reputation for
        scores), never bond on its own: a node can fail once. max_missed in a row, while active, jail the
        expert and slash downtime_slash_ppm of its bond, once; misses while jailed or unbonding cost
        reputation only."""
        expert = self.get(ctx, address)
        if expert is None:
            return
        expert.missed += 1
        self.set(ctx, address, expert)
        if as_scorer:
            self.update_scorer_reputation(ctx, address, 0)
        else:
            self.ema(ctx, domain, address, 0, query_id, "missed")
        params = self.params(ctx)
        if expert.missed >= params.max_missed and expert.status == Status.EXPERT_STATUS_ACTIVE:
            self.slash(ctx, address, domain, query_id, f"missed {expert.missed} assignments in a row ({reason})",
                       params.downtime_slash_ppm)
            self.jail(ctx, address, f"missed {expert.missed} assignments in a row")

    def slash(self, ctx: Ctx, address: bytes, domain: str, query_id: int, reason: str, fraction_ppm: int,
              reporter: bytes | None = None) -> int:
        """Take fraction_ppm of the bond (from whichever pool holds it), pay the reporter its share,
        burn the rest, halve the domain reputation. Returns the amount slashed."""
        params = self.params(ctx)
        expert = self.require(ctx, address)
        amount = ppm_of(expert.bond, fraction_ppm)
        pool = UNBONDING_POOL if expert.status == Status.EXPERT_STATUS_UNBONDING else BONDED_POOL
        if amount:
            to_reporter = ppm_of(amount, params.reporter_share_ppm) if reporter is not None else 0
            if to_reporter and reporter is not None:
                self.bank.move(ctx, pool, reporter, to_reporter)
            self.bank.burn(ctx, pool, amount - to_reporter)
            expert.bond -= amount
            expert.slashed += amount
            self.set(ctx, address, expert)
        self.set_reputation(ctx, domain, address, self.reputation(ctx, domain, address) // 2, query_id, reason)
        ctx.emit(event(EV_SLASH, expert=expert.address, amount=amount, reason=reason, query_id=query_id))
        return amount

    def jail(self, ctx: Ctx, address: bytes, reason: str) -> None:
        expert = self.require(ctx, address)
        if expert.status != Status.EXPERT_STATUS_ACTIVE:
            return  # unbonding experts are already out of selection
        expert.status = Status.EXPERT_STATUS_JAILED
        expert.jailed_until = ctx.env.height + self.params(ctx).jail_blocks
        self.set(ctx, address, expert)
        self._refresh(ctx, expert)
        ctx.emit(event(EV_JAIL, expert=expert.address, until=expert.jailed_until, reason=reason))

    def end_block(self, ctx: Ctx) -> None:
        """Release bonds whose unbonding period ended at or before this height (at most
        max_releases_per_block; the rest in the next blocks)."""
        limit = self.params(ctx).max_releases_per_block
        due = UNBONDING.due(ctx, ctx.env.height, limit)
        UNBONDING.done(ctx, due, limit)
        for height, address in due:
            expert = self.get(ctx, address)
            UNBONDING.remove(ctx, height, address)
            if expert is None:
                continue
            if expert.bond:
                self.bank.move(ctx, UNBONDING_POOL, address, expert.bond)
            ctx.kv(STORE).delete(expert_key(address))
            ctx.emit(event(EV_EXPERT_UNBONDED, expert=expert.address, amount=expert.bond))
