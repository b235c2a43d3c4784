"""Validators state: records bonded in module pools, the eligible ranking, the set CometBFT has been told,
liveness over a window of blocks, slashing for downtime and double-signing, releases of unbonded bonds."""

from __future__ import annotations

from abci_app import params
from abci_app.context import Ctx, Misbehavior
from abci_app.crypto import address_bytes, parse_address
from abci_app.crypto import verify as ed25519_verify
from abci_app.events import event
from abci_app.fixedpoint import PPM, ppm_of
from abci_app.heightqueue import HeightQueue
from abci_app.store.db import prefix_end
from abci_app.x.auth.types import FEE_COLLECTOR
from abci_app.x.bank.keeper import BankKeeper
from abci_app.x.beacon.keeper import BeaconKeeper
from abci_app.x.validators import power
from abci_app.x.validators.types import (
    BONDED_POOL,
    EV_BONDED,
    EV_CREATED,
    EV_EDITED,
    EV_FEES,
    EV_JAILED,
    EV_POWER,
    EV_RELEASED,
    EV_SLASHED,
    EV_UNBONDING,
    EV_UNJAILED,
    MAX_BOND,
    MAX_RELEASES_PER_BLOCK,
    MISSED_PREFIX,
    RANK_PREFIX,
    RELEASE_AMOUNT_PREFIX,
    RELEASE_PREFIX,
    SET_PREFIX,
    SIGNING_PREFIX,
    STORE,
    UNBONDING_POOL,
    UNCLAIMED_FEES,
    ErrAlreadyExists,
    ErrBondTooLow,
    ErrInvalidValidator,
    ErrNotActive,
    ErrNotJailed,
    ErrStillJailed,
    ErrUnknownValidator,
    Status,
    be8,
    key_proof_bytes,
    operator_key,
    rank_key,
    validator_key,
)
from wire.llmnet.beacon.v1 import beacon_pb2
from wire.llmnet.validators.v1 import validators_pb2 as pb

RELEASES = HeightQueue(STORE, RELEASE_PREFIX)


def _copy(v: pb.Validator) -> pb.Validator:
    """A record to change and then save over v (_save needs the old one to move its rank)."""
    changed = pb.Validator()
    changed.CopyFrom(v)
    return changed
POWER_DELAY = 2
"""CometBFT applies the validator updates of block H from height H+2."""


class ValidatorsKeeper:
    def __init__(self, bank: BankKeeper, beacon: BeaconKeeper) -> None:
        self.bank = bank
        self.beacon = beacon

    # -- params and records -------------------------------------------------------------

    def params(self, ctx: Ctx) -> pb.Params:
        return params.load(ctx, STORE, pb.Params)

    def set_params(self, ctx: Ctx, value: pb.Params) -> None:
        params.save(ctx, STORE, value)

    def get(self, ctx: Ctx, address: bytes) -> pb.Validator | None:
        raw = ctx.kv(STORE).get(validator_key(address))
        return None if raw is None else pb.Validator.FromString(raw)

    def by_operator(self, ctx: Ctx, operator: str) -> pb.Validator:
        address = ctx.kv(STORE).get(operator_key(parse_address(operator)))
        validator = None if address is None else self.get(ctx, address)
        if validator is None:
            raise ErrUnknownValidator(f"{operator} operates no validator")
        return validator

    def signing(self, ctx: Ctx, address: bytes) -> pb.SigningInfo:
        raw = ctx.kv(STORE).get(SIGNING_PREFIX + address)
        return pb.SigningInfo() if raw is None else pb.SigningInfo.FromString(raw)

    def _weight(self, ctx: Ctx, v: pb.Validator) -> int:
        """What ranks it: its bond, or a fixed genesis validator's power in bond terms."""
        return v.bond if v.operator else v.fixed_power * self.params(ctx).power_reduction

    def _eligible(self, ctx: Ctx, v: pb.Validator) -> bool:
        return v.status == Status.VALIDATOR_STATUS_ACTIVE and (
            not v.operator or v.bond >= self.params(ctx).min_bond)

    def _save(self, ctx: Ctx, old: pb.Validator | None, new: pb.Validator) -> None:
        """Write a record and keep the ranking of eligible validators in step with it."""
        kv = ctx.kv(STORE)
        if old is not None and self._eligible(ctx, old):
            kv.delete(rank_key(min(self._weight(ctx, old), MAX_BOND), old.address))
        if self._eligible(ctx, new):
            kv.set(rank_key(min(self._weight(ctx, new), MAX_BOND), new.address), b"")
        kv.set(validator_key(new.address), new.SerializeToString())

    # -- genesis ------------------------------------------------------------------------

    def add_genesis(self, ctx: Ctx, v: pb.Validator) -> None:
        """A validator that exists from the first block, its power already CometBFT's (no rate limit)."""
        if self.get(ctx, v.address) is not None:
            raise ValueError(f"genesis names validator {v.address.hex()} twice")
        if v.operator:
            operator = parse_address(v.operator)
            if ctx.kv(STORE).get(operator_key(operator)) is not None:
                raise ValueError(f"genesis operator {v.operator} runs two validators")
            self.bank.move(ctx, operator, BONDED_POOL, v.bond)
            ctx.kv(STORE).set(operator_key(operator), v.address)
        self._save(ctx, None, v)

    def seat_genesis_set(self, ctx: Ctx) -> int:
        """Give the highest-ranked validators their power at once; returns the total power."""
        p = self.params(ctx)
        wanted = power.targets(self._ranked(ctx, p.max_validators), p.max_validators, p.power_reduction)
        for address, value in sorted(wanted.items()):
            self._set_power(ctx, address, value, effective=None)
        return sum(wanted.values())

    # -- transitions --------------------------------------------------------------------

    def create(self, ctx: Ctx, msg: pb.MsgCreateValidator) -> None:
        operator = parse_address(msg.operator)
        address = address_bytes(msg.pub_key)
        if ctx.kv(STORE).get(operator_key(operator)) is not None:
            raise ErrAlreadyExists(f"{msg.operator} already operates a validator; use edit/bond/unbond")
        if self.get(ctx, address) is not None:
            raise ErrAlreadyExists(f"consensus key {address.hex()} is already a validator's")
        if msg.bond < self.params(ctx).min_bond:
            raise ErrBondTooLow(f"bond {msg.bond} is below the minimum {self.params(ctx).min_bond}")
        if not ed25519_verify(msg.pub_key, key_proof_bytes(ctx.env.chain_id, msg.operator), msg.key_proof):
            raise ErrInvalidValidator("key_proof is not the consensus key's signature over this chain and operator: "
                                      "only the holder of a key can bond it")
        self.bank.move(ctx, operator, BONDED_POOL, msg.bond)
        v = pb.Validator(operator=msg.operator, pub_key=msg.pub_key, address=address, moniker=msg.moniker,
                         details=msg.details, bond=msg.bond, status=Status.VALIDATOR_STATUS_ACTIVE,
                         created_height=ctx.env.height)
        ctx.kv(STORE).set(operator_key(operator), address)
        self._save(ctx, None, v)
        ctx.emit(event(EV_CREATED, operator=msg.operator, address=address.hex(), bond=msg.bond,
                       moniker=msg.moniker))

    def edit(self, ctx: Ctx, msg: pb.MsgEditValidator) -> None:
        v = self.by_operator(ctx, msg.operator)
        changed = _copy(v)
        changed.moniker, changed.details = msg.moniker, msg.details
        self._save(ctx, v, changed)
        ctx.emit(event(EV_EDITED, operator=msg.operator, address=v.address.hex(), moniker=msg.moniker))

    def bond(self, ctx: Ctx, msg: pb.MsgBondValidator) -> None:
        v = self.by_operator(ctx, msg.operator)
        if v.status in (Status.VALIDATOR_STATUS_UNBONDING, Status.VALIDATOR_STATUS_TOMBSTONED):
            raise ErrNotActive(f"validator {v.address.hex()} is {Status.Name(v.status)} and takes no more bond")
        if v.bond + msg.amount > MAX_BOND:
            raise ErrBondTooLow(f"bond would exceed {MAX_BOND}")
        self.bank.move(ctx, parse_address(msg.operator), BONDED_POOL, msg.amount)
        changed = _copy(v)
        changed.bond += msg.amount
        self._save(ctx, v, changed)
        ctx.emit(event(EV_BONDED, operator=msg.operator, address=v.address.hex(), amount=msg.amount,
                       bond=changed.bond))

    def unbond(self, ctx: Ctx, msg: pb.MsgUnbondValidator) -> None:
        """amount 0 (or the whole bond): leave. Less: stay with at least min_bond."""
        v = self.by_operator(ctx, msg.operator)
        if v.status in (Status.VALIDATOR_STATUS_UNBONDING, Status.VALIDATOR_STATUS_TOMBSTONED):
            raise ErrNotActive(f"validator {v.address.hex()} is already {Status.Name(v.status)}")
        amount = msg.amount or v.bond
        min_bond = self.params(ctx).min_bond
        if amount > v.bond:
            raise ErrBondTooLow(f"cannot unbond {amount}: the bond is {v.bond}")
        if amount < v.bond and v.bond - amount < min_bond:
            raise ErrBondTooLow(f"a partial unbond must leave at least {min_bond}; unbond 0 to leave")
        changed = _copy(v)
        if amount == v.bond:
            changed.status = Status.VALIDATOR_STATUS_UNBONDING
        release = self._start_release(ctx, changed, amount)
        self._save(ctx, v, changed)
        ctx.emit(event(EV_UNBONDING, operator=msg.operator, address=v.address.hex(), amount=amount,
                       release_height=release, leaving=str(amount == v.bond).lower()))

    def unjail(self, ctx: Ctx, msg: pb.MsgUnjailValidator) -> None:
        v = self.by_operator(ctx, msg.operator)
        if v.status != Status.VALIDATOR_STATUS_JAILED:
            raise ErrNotJailed(f"validator {v.address.hex()} is not jailed")
        if ctx.env.height < v.jailed_until:
            raise ErrStillJailed(f"validator {v.address.hex()} is jailed until height {v.jailed_until}")
        if v.bond < self.params(ctx).min_bond:
            raise ErrBondTooLow(f"bond {v.bond} fell below the minimum; bond more first")
        changed = _copy(v)
        changed.status = Status.VALIDATOR_STATUS_ACTIVE
        self._save(ctx, v, changed)
        self._forget_signing(ctx, v.address)  # a fresh window: past misses were paid for
        ctx.emit(event(EV_UNJAILED, operator=msg.operator, address=v.address.hex()))

    def _start_release(self, ctx: Ctx, v: pb.Validator, amount: int) -> int:
        """Move amount of v's bond to the unbonding pool, due back at height + unbonding_blocks."""
        at = ctx.env.height + self.params(ctx).unbonding_blocks
        if amount:
            self.bank.move(ctx, BONDED_POOL, UNBONDING_POOL, amount)
            self._queue_release(ctx, at, v.address, amount)
        v.bond -= amount
        v.unbonding += amount
        if v.status == Status.VALIDATOR_STATUS_UNBONDING:
            v.unbond_at = at
        return at

    def _queue_release(self, ctx: Ctx, at: int, address: bytes, amount: int) -> None:
        key = RELEASE_AMOUNT_PREFIX + be8(at) + address
        queued = ctx.kv(STORE).get(key)
        ctx.kv(STORE).set(key, be8(amount + (0 if queued is None else int.from_bytes(queued, "big"))))
        RELEASES.push(ctx, at, address)

    # -- punishment ---------------------------------------------------------------------

    def _slash(self, ctx: Ctx, v: pb.Validator, fraction_ppm: int, reason: str) -> int:
        """Burn fraction_ppm of the bond (in place on v). Bond already unbonding is not touched."""
        amount = ppm_of(v.bond, fraction_ppm)
        if amount:
            self.bank.burn(ctx, BONDED_POOL, amount)
            v.bond -= amount
            v.slashed += amount
        ctx.emit(event(EV_SLASHED, operator=v.operator, address=v.address.hex(), amount=amount, reason=reason))
        return amount

    def _slash_unbonding(self, ctx: Ctx, v: pb.Validator, since: int, fraction_ppm: int) -> None:
        """Bond unbonded from POWER_DELAY blocks before the offence on is slashed too (in place on v): it still
        backed the power that signed, and unbonding between double-signing and the evidence landing must not be a
        way out. Those releases fall due from since - POWER_DELAY + unbonding_blocks (later if deferred), so only
        that range of the queue is read."""
        kv = ctx.kv(STORE)
        first = RELEASE_AMOUNT_PREFIX + be8(max(0, since - POWER_DELAY + self.params(ctx).unbonding_blocks))
        burnt = 0
        for key, raw in kv.iterate_range(first, prefix_end(RELEASE_AMOUNT_PREFIX)):
            if key[-len(v.address):] != v.address:
                continue
            amount = int.from_bytes(raw, "big")
            cut = ppm_of(amount, fraction_ppm)
            if cut == amount:  # nothing left to release: no empty entry may reach the bank
                kv.delete(key)
                RELEASES.remove(ctx, int.from_bytes(key[len(RELEASE_AMOUNT_PREFIX):][:8], "big"), v.address)
            elif cut:
                kv.set(key, be8(amount - cut))
            burnt += cut
        if burnt:
            self.bank.burn(ctx, UNBONDING_POOL, burnt)
            v.unbonding -= burnt
            v.slashed += burnt
            ctx.emit(event(EV_SLASHED, operator=v.operator, address=v.address.hex(), amount=burnt,
                           reason="unbonded after double-signing"))

    def punish_double_sign(self, ctx: Ctx, evidence: Misbehavior) -> None:
        """Slash, tombstone (out of the set for good) and unbond the rest. Evidence of a validator already
        tombstoned, or unknown to this chain, changes nothing: one offence is punished once."""
        v = self.get(ctx, evidence.address)
        if v is None or v.status == Status.VALIDATOR_STATUS_TOMBSTONED or evidence.height < v.created_height:
            return  # (a key reused after leaving answers only for what it signed since)
        changed = _copy(v)
        fraction = self.params(ctx).double_sign_slash_ppm
        self._slash(ctx, changed, fraction,
                    f"double-signed at height {evidence.height} (misbehavior type {evidence.kind})")
        self._slash_unbonding(ctx, changed, evidence.height, fraction)
        changed.status = Status.VALIDATOR_STATUS_TOMBSTONED
        self._start_release(ctx, changed, changed.bond)
        self._save(ctx, v, changed)
        ctx.emit(event(EV_JAILED, operator=v.operator, address=v.address.hex(), until="never",
                       reason="double-signing"))

    def record_liveness(self, ctx: Ctx, address: bytes, signed: bool) -> None:
        """One height of the signing window; too many misses within a full window jail and slash. A signed height
        writes nothing (but the first): see SigningInfo. Heights it was out of CometBFT's set count as signed."""
        v = self.get(ctx, address)
        if v is None or not v.operator or v.status != Status.VALIDATOR_STATUS_ACTIVE:
            return  # fixed genesis validators have nobody to unjail them; others are already out
        kv, height = ctx.kv(STORE), ctx.env.height
        info = self.signing(ctx, address)
        if not info.since:
            info.since = height
        elif signed:
            return
        if not signed:
            window = self.params(ctx).signed_blocks_window
            prefix = MISSED_PREFIX + address
            gone = kv.iterate_range(prefix, prefix + be8(max(height - window + 1, 0)))  # out of the window now
            for key, _ in gone:
                kv.delete(key)
            kv.set(prefix + be8(height), b"\x01")
            info.missed = info.missed - len(gone) + 1
            max_missed = window - window * self.params(ctx).min_signed_ppm // PPM
            if height - info.since + 1 >= window and info.missed > max_missed:
                self._jail_for_downtime(ctx, v, info.missed, window)
                return
        kv.set(SIGNING_PREFIX + address, pb.SigningInfo(missed=info.missed, since=info.since).SerializeToString())

    def signing_now(self, ctx: Ctx, address: bytes) -> pb.SigningInfo:
        """The signing record for queries: heights since it was first observed (those it was out of the set
        included), and its misses in the window as of its last miss (a count kept, not a scan: a query must
        cost one read, and a window may hold 50,000 misses)."""
        info = self.signing(ctx, address)
        if not info.since:
            return pb.SigningInfo()
        return pb.SigningInfo(observed=max(ctx.env.height - info.since + 1, 0), missed=info.missed, since=info.since)

    def _forget_signing(self, ctx: Ctx, address: bytes) -> None:
        """A fresh window: after a jailing (its misses were paid for) or once the validator is gone."""
        kv = ctx.kv(STORE)
        kv.delete(SIGNING_PREFIX + address)
        for key, _ in kv.iterate(MISSED_PREFIX + address):
            kv.delete(key)

    def _jail_for_downtime(self, ctx: Ctx, v: pb.Validator, missed: int, window: int) -> None:
        p = self.params(ctx)
        changed = _copy(v)
        self._slash(ctx, changed, p.downtime_slash_ppm, f"missed {missed} of the last {window} blocks")
        changed.status = Status.VALIDATOR_STATUS_JAILED
        changed.jailed_until = ctx.env.height + p.jail_blocks
        self._save(ctx, v, changed)
        self._forget_signing(ctx, v.address)
        ctx.emit(event(EV_JAILED, operator=v.operator, address=v.address.hex(), until=changed.jailed_until,
                       reason=f"missed {missed} of the last {window} blocks"))

    # -- block hooks --------------------------------------------------------------------

    def begin_block(self, ctx: Ctx) -> None:
        """Double-signing first (it tombstones, so the same block's liveness skips it), then liveness of the
        previous height's validators as the block's last commit records them."""
        for evidence in sorted(ctx.env.misbehavior, key=lambda m: (m.address, m.height, m.kind)):
            self.punish_double_sign(ctx, evidence)
        for address, signed in sorted(ctx.env.last_commit):
            self.record_liveness(ctx, address, signed)
        self.distribute_fees(ctx)

    def distribute_fees(self, ctx: Ctx) -> None:
        """The fees collected so far are shared by the validators of the previous height, by power, as Cosmos'
        distribution shares them (no commission or delegators here: a validator bonds only its own tokens):
        every validator the last commit lists, its vote in it or not, since the proposer chooses which votes go
        in and would otherwise take the share of those it left out (downtime is for jailing to punish). A share
        with no operator to pay (a fixed genesis validator), or a jailed or tombstoned validator's, goes to
        UNCLAIMED_FEES for good: left in the collector, it piled up for whoever bonded first. The remainder of
        the division waits for the next block."""
        pool = self.bank.balance(ctx, FEE_COLLECTOR)
        powers = sorted((address, votes) for address, votes in ctx.env.last_powers if votes > 0)
        total = sum(votes for _, votes in powers)
        if not pool or not total:
            return
        paid = unclaimed = 0
        for address, votes in powers:
            amount = pool * votes // total
            if not amount:
                continue
            v = self.get(ctx, address)
            if v is not None and v.operator and v.status not in (
                    Status.VALIDATOR_STATUS_JAILED, Status.VALIDATOR_STATUS_TOMBSTONED):
                self.bank.move(ctx, FEE_COLLECTOR, parse_address(v.operator), amount)
                paid += amount
            else:
                unclaimed += amount
        if unclaimed:
            self.bank.move(ctx, FEE_COLLECTOR, UNCLAIMED_FEES, unclaimed)
        if paid or unclaimed:  # a remainder too small to share stays quiet, block after block
            ctx.emit(event(EV_FEES, amount=paid, unclaimed=unclaimed, validators=len(powers)))

    def end_block(self, ctx: Ctx) -> None:
        """Release due bonds, then move the told powers one bounded step toward the ranking."""
        self._release_due(ctx)
        p = self.params(ctx)
        current, punished = self.told(ctx)
        wanted = power.targets(self._ranked(ctx, p.max_validators), p.max_validators, p.power_reduction)
        for address, value in sorted(power.step(current, wanted, punished).items()):
            self._set_power(ctx, address, value, effective=ctx.env.height + POWER_DELAY)

    def _ranked(self, ctx: Ctx, limit: int) -> list[tuple[bytes, int]]:
        start = len(RANK_PREFIX)
        return [(k[start + 8:], MAX_BOND - int.from_bytes(k[start:start + 8], "big"))
                for k, _ in ctx.kv(STORE).iterate_range(RANK_PREFIX, prefix_end(RANK_PREFIX), limit)]

    def told(self, ctx: Ctx) -> tuple[dict[bytes, int], set[bytes]]:
        """The powers CometBFT has been told, and which of those validators are jailed or tombstoned."""
        out, punished = {}, set()
        for key, _ in ctx.kv(STORE).iterate(SET_PREFIX):
            v = self.get(ctx, key[len(SET_PREFIX):])
            if v is not None:
                out[v.address] = v.power
                if v.status in (Status.VALIDATOR_STATUS_JAILED, Status.VALIDATOR_STATUS_TOMBSTONED):
                    punished.add(v.address)
        return out, punished

    def _set_power(self, ctx: Ctx, address: bytes, value: int, effective: int | None) -> None:
        """Tell CometBFT (and the beacon, from the height it takes effect; None: genesis, at once)."""
        v = self.get(ctx, address)
        if v is None:
            raise RuntimeError(f"power for unknown validator {address.hex()}")
        changed = _copy(v)
        changed.power = value
        changed.power_changed_height = ctx.env.height
        self._save(ctx, v, changed)
        if value:
            ctx.kv(STORE).set(SET_PREFIX + address, b"")
        else:
            ctx.kv(STORE).delete(SET_PREFIX + address)
        ctx.validator_updates[address] = (v.pub_key, value)
        key = beacon_pb2.ValidatorKey(address=address, pub_key=v.pub_key, power=value)
        if effective is None:
            self.beacon.set_validator(ctx, key)
        else:
            self.beacon.schedule(ctx, effective, key)
        ctx.emit(event(EV_POWER, address=address.hex(), operator=v.operator, power=value,
                       effective_height=ctx.env.height if effective is None else effective))
        if not value:
            self._forget_if_done(ctx, changed)

    def _release_due(self, ctx: Ctx) -> None:
        due = RELEASES.due(ctx, ctx.env.height, MAX_RELEASES_PER_BLOCK)
        RELEASES.done(ctx, due, MAX_RELEASES_PER_BLOCK)
        for height, address in due:
            RELEASES.remove(ctx, height, address)
            key = RELEASE_AMOUNT_PREFIX + be8(height) + address
            raw = ctx.kv(STORE).get(key)
            ctx.kv(STORE).delete(key)
            v = self.get(ctx, address)
            amount = 0 if raw is None else int.from_bytes(raw, "big")
            if v is None or not amount:
                continue
            later = self._release_not_before(ctx, v)
            if later > ctx.env.height:
                self._queue_release(ctx, later, address, amount)
                continue
            self.bank.move(ctx, UNBONDING_POOL, parse_address(v.operator), amount)
            changed = _copy(v)
            changed.unbonding -= amount
            self._save(ctx, v, changed)
            ctx.emit(event(EV_RELEASED, operator=v.operator, address=address.hex(), amount=amount))
            self._forget_if_done(ctx, changed)

    def _release_not_before(self, ctx: Ctx, v: pb.Validator) -> int:
        """Unbonded tokens stay slashable while CometBFT may still count power they backed: until the told
        power is covered by the bond left, has been in force (POWER_DELAY), and unbonding_blocks have passed
        since, as evidence about its last votes can still come."""
        p = self.params(ctx)
        if v.power * p.power_reduction > v.bond and v.operator:
            return ctx.env.height + 1  # its power is still being cut (a third per block at most)
        return v.power_changed_height + POWER_DELAY + p.unbonding_blocks

    def _forget_if_done(self, ctx: Ctx, v: pb.Validator) -> None:
        """A validator that left, is out of the set and has nothing left to release is deleted (a tombstoned
        one is kept, so its key can never come back)."""
        if v.status == Status.VALIDATOR_STATUS_UNBONDING and v.power == 0 and not v.bond and not v.unbonding:
            ctx.kv(STORE).delete(validator_key(v.address))
            self._forget_signing(ctx, v.address)
            if v.operator:
                ctx.kv(STORE).delete(operator_key(parse_address(v.operator)))
