"""Beacon state: the consensus validators' keys and powers and whether vote extensions are on. verify() is
the rule ProcessProposal and FinalizeBlock both apply. The beacon itself lives in the block's data, and each
query keeps the seed that drew it.

The set changes (x/validators): the updates block H hands CometBFT sign from height H+2, so they wait here
as pending until then. A block at height h carries the votes of h-1, so it is judged against the set of h-1:
the stored set with every change effective at or before h-1 laid over it (begin_block then folds them in)."""

from __future__ import annotations

from google.protobuf.message import DecodeError

from abci_app.context import Ctx
from abci_app.crypto import verify as ed25519_verify
from abci_app.encoding import uvarint
from abci_app.x.beacon.types import (
    COMMIT_FLAG,
    COMMITMENTS_KEY,
    ENABLE_HEIGHT_KEY,
    STORE,
    TX_TAG,
    VALIDATOR_PREFIX,
    ErrInvalidBeacon,
    commitment_of,
    from_last_commit,
    is_beacon_tx,
    parse_extension,
    pending_key,
    seed_of,
    validator_key,
)
from wire.llmnet.beacon.v1 import beacon_pb2 as pb
from wire.tendermint.abci import types_pb2 as abci
from wire.tendermint.types import canonical_pb2

LastCommit = abci.CommitInfo
FOLD_LOOKBACK = 3
"""Heights below the previous one a pending change could still sit at (a margin: every block folds)."""


def extension_sign_bytes(chain_id: str, height: int, round_: int, extension: bytes) -> bytes:
    """What CometBFT signs for a vote extension (VoteExtensionSignBytes: length-prefixed canonical form)."""
    body = canonical_pb2.CanonicalVoteExtension(extension=extension, height=height, round=round_,
                                                chain_id=chain_id).SerializeToString()
    return uvarint(len(body)) + body


class BeaconKeeper:
    def enable_height(self, ctx: Ctx) -> int:
        raw = ctx.state.get(STORE, ENABLE_HEIGHT_KEY)
        return 0 if raw is None else int.from_bytes(raw, "big")

    def set_enable_height(self, ctx: Ctx, height: int) -> None:
        ctx.kv(STORE).set(ENABLE_HEIGHT_KEY, height.to_bytes(8, "big"))

    def expects_beacon(self, ctx: Ctx, height: int) -> bool:
        """Block `height` carries a beacon when the previous height's votes had extensions."""
        enabled = self.enable_height(ctx)
        return enabled > 0 and height > enabled

    def set_validator(self, ctx: Ctx, key: pb.ValidatorKey) -> None:
        ctx.kv(STORE).set(validator_key(key.address), key.SerializeToString())

    def schedule(self, ctx: Ctx, effective: int, key: pb.ValidatorKey) -> None:
        """A change CometBFT applies from height `effective` (power 0: the validator leaves)."""
        ctx.kv(STORE).set(pending_key(effective, key.address), key.SerializeToString())

    def _due(self, ctx: Ctx) -> list[tuple[bytes, pb.ValidatorKey]]:
        """Pending changes effective at or before the previous height. Every block folds what is due, so only
        the last few heights can hold any: the scan starts there, past every folded (deleted) entry."""
        last = ctx.env.height - 1
        start, end = pending_key(max(0, last - FOLD_LOOKBACK), b""), pending_key(last + 1, b"")
        return [(k, pb.ValidatorKey.FromString(v)) for k, v in ctx.kv(STORE).iterate_range(start, end)]

    def validators(self, ctx: Ctx) -> dict[bytes, pb.ValidatorKey]:
        """The set that signed the previous height."""
        out = {k[len(VALIDATOR_PREFIX):]: pb.ValidatorKey.FromString(v)
               for k, v in ctx.kv(STORE).iterate(VALIDATOR_PREFIX)}
        for _, key in self._due(ctx):
            if key.power:
                out[key.address] = key
            else:
                out.pop(key.address, None)
        return out

    def begin_block(self, ctx: Ctx) -> None:
        """Fold the changes now in force into the stored set."""
        kv = ctx.kv(STORE)
        for pending, key in self._due(ctx):
            if key.power:
                self.set_validator(ctx, key)
            else:
                kv.delete(validator_key(key.address))
            kv.delete(pending)

    def build(self, ctx: Ctx, commit: abci.ExtendedCommitInfo, height: int) -> pb.Beacon:
        """The beacon a proposer of `height` makes from the previous height's extended commit: every
        precommit whose extension is well formed and whose extension signature this app itself accepts.
        CometBFT checks those signatures with laxer ed25519 rules (ZIP-215) than ours; a validator that signs
        in a way only CometBFT accepts is left out here, instead of making every other node reject the block
        (and stall the chain)."""
        validators = self.validators(ctx)
        good = [(v.validator.address, v.vote_extension, v.extension_signature) for v in commit.votes
                if v.block_id_flag == COMMIT_FLAG and v.validator.address in validators
                and parse_extension(v.vote_extension) is not None
                and ed25519_verify(validators[v.validator.address].pub_key,
                                   extension_sign_bytes(ctx.env.chain_id, height - 1, commit.round, v.vote_extension),
                                   v.extension_signature)]
        return from_last_commit(good, height - 1, commit.round)

    def seed(self, ctx: Ctx, beacon: pb.Beacon) -> bytes:
        """The seed a (verified) beacon gives: its revealed secrets that match the commitments kept from the
        beacon of the height before; b"" when none does (the draws then wait for a block whose seed has one)."""
        raw = ctx.kv(STORE).get(COMMITMENTS_KEY)
        kept = pb.BeaconCommitments() if raw is None else pb.BeaconCommitments.FromString(raw)
        if kept.height != beacon.height - 1:
            return b""
        committed = {c.validator_address: c for c in kept.commitments}
        reveals, power = [], 0
        for vote in beacon.votes:
            parsed, kept_vote = parse_extension(vote.extension), committed.get(vote.validator_address)
            if parsed is not None and kept_vote is not None and kept_vote.commitment == commitment_of(parsed[0]):
                reveals.append((vote.validator_address, parsed[0]))
                power += kept_vote.power
        # More than a third of the power that made the commitments, so at least one honest validator's secret:
        # two beacons of > 2/3 each overlap in more than a third only while the set stays the same, and one
        # block may move a third of the power (a validator below a third, proposing both blocks around such a
        # change, left every share but its own out and knew the seed before it chose the first block's txs).
        return seed_of(beacon.height, reveals) if 3 * power > kept.total_power else b""

    def keep_commitments(self, ctx: Ctx, beacon: pb.Beacon) -> None:
        """Keep what the beacon's votes committed to, for the next beacon's reveals."""
        validators = self.validators(ctx)  # the set that signed the beacon's height
        commitments = [pb.BeaconCommitment(validator_address=v.validator_address, commitment=parsed[1],
                                           power=validators[v.validator_address].power)
                       for v in beacon.votes if (parsed := parse_extension(v.extension)) is not None
                       and v.validator_address in validators]
        total = sum(v.power for v in validators.values())
        ctx.kv(STORE).set(COMMITMENTS_KEY, pb.BeaconCommitments(height=beacon.height, commitments=commitments,
                                                                total_power=total).SerializeToString())

    def verify(self, ctx: Ctx, beacon: pb.Beacon, height: int, commit: LastCommit | None = None) -> bytes:
        """The seed of a block at `height` whose beacon this is (see seed). Raises ErrInvalidBeacon unless it
        is for height - 1 and the round that height committed in, every vote is a known validator's (once,
        one that precommitted the block, when the block's last commit is given), with a well-formed
        extension it signed, and they hold more than 2/3 of the voting power."""
        if beacon.height != height - 1:
            raise ErrInvalidBeacon(f"beacon is for height {beacon.height}, the block is {height}")
        if commit is not None and beacon.round != commit.round:
            raise ErrInvalidBeacon(f"beacon is for round {beacon.round}; height {beacon.height} committed in round "
                                   f"{commit.round}")
        committed = None if commit is None else {v.validator.address for v in commit.votes
                                                 if v.block_id_flag == COMMIT_FLAG}
        validators = self.validators(ctx)
        signed, seen = 0, set()
        for vote in beacon.votes:
            v = validators.get(vote.validator_address)
            if v is None or vote.validator_address in seen:
                raise ErrInvalidBeacon(f"vote of unknown or repeated validator {vote.validator_address.hex()}")
            if committed is not None and vote.validator_address not in committed:
                raise ErrInvalidBeacon(f"validator {vote.validator_address.hex()} did not precommit that block")
            if parse_extension(vote.extension) is None:
                raise ErrInvalidBeacon(f"malformed extension of validator {vote.validator_address.hex()}")
            message = extension_sign_bytes(ctx.env.chain_id, beacon.height, beacon.round, vote.extension)
            if not ed25519_verify(v.pub_key, message, vote.extension_signature):
                raise ErrInvalidBeacon(f"bad extension signature of validator {vote.validator_address.hex()}")
            seen.add(vote.validator_address)
            signed += v.power
        total = sum(v.power for v in validators.values())
        if 3 * signed <= 2 * total:
            raise ErrInvalidBeacon(f"beacon carries {signed} of {total} voting power; more than 2/3 needed")
        return self.seed(ctx, beacon)

    def take(self, ctx: Ctx, txs: list[bytes], height: int, commit: LastCommit | None = None
             ) -> tuple[pb.Beacon | None, bytes, list[bytes]]:
        """Split a block's txs into its beacon, the seed it gives, and the rest; commit is the block's last
        commit (which votes precommitted, in which round). A block that should carry a beacon and does not
        carry a valid one raises ErrInvalidBeacon; one that should not gives (None, b"", txs)."""
        if not self.expects_beacon(ctx, height):
            return None, b"", txs
        if not txs or not is_beacon_tx(txs[0]):
            raise ErrInvalidBeacon(f"block {height} does not start with the beacon of height {height - 1}")
        try:
            beacon = pb.Beacon.FromString(txs[0][len(TX_TAG):])
        except DecodeError as exc:
            raise ErrInvalidBeacon(f"beacon does not decode: {exc}") from None
        return beacon, self.verify(ctx, beacon, height, commit), txs[1:]
