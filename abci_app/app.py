"""The ABCI 2.0 application: what CometBFT calls, and what each call is obliged to do.

Handlers take and return CometBFT's protobuf types; the rules live in the modules. Any AppError
becomes a result code. Any other exception while applying a decided block propagates to the transport,
which stops the node (fail-stop: a node that cannot apply a block must not guess); the same failure on a tx
anyone can send (CheckTx, Simulate) or in a proposal is a bug that must not become a remote off switch, so
there it refuses the tx (ErrInternal) or the proposal, and logs it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from abci_app import APP_VERSION, SOFTWARE_VERSION
from abci_app.context import BlockEnv, Ctx, Misbehavior
from abci_app.errors import AppError, ErrHeightUnavailable, ErrInternal, ErrInvalidRequest, ErrNotFound
from abci_app.events import Event
from abci_app.modules import Keepers, modules, params_routes
from abci_app.msgs import MsgRegistry
from abci_app.queries import QueryRouter
from abci_app.store.db import KEEP_RECENT, CommittedStore, StagedCommit
from abci_app.store.links import is_link, link_key
from abci_app.store.state import State
from abci_app.store.versions import HeightNotKept, VersionView
from abci_app.tx import DecodedTx, decode_tx
from abci_app.x.auth.ante import AnteHandler, SignatureCache, check_size
from abci_app.x.beacon.types import STORE as BEACON
from abci_app.x.beacon.types import ErrInvalidBeacon
from abci_app.x.beacon.types import encode_tx as encode_beacon
from abci_app.x.beacon.types import extension_at as beacon_extension_at
from abci_app.x.beacon.types import parse_extension as parse_beacon_extension
from abci_app.x.validators.types import STORE as VALIDATORS
from wire.tendermint.abci import types_pb2 as abci
from wire.tendermint.crypto import keys_pb2 as crypto_keys
from wire.tendermint.crypto import proof_pb2 as crypto_proof

log = logging.getLogger("llmnet.app")
ABCI_VERSION = "2.0.0"
DECODE_CACHE_BYTES = 32 * 2**20
"""The decoded txs kept (CheckTx, rechecks, proposals and the block decode the same bytes again and again), by
the raw bytes they came from: a decoded tx holds about four times its size. Bounded in bytes, since anyone
can send large txs that are refused and pay nothing (an entry count let 50,000 of 60 KB each pin 11 GB)."""
DECODE_ENTRY_BYTES = 2048
"""Counted for each entry besides its tx's bytes: what an entry holds whatever its size (a parse, an error), so
tiny junk txs cannot fill the budget a few bytes at a time."""
PROOF_WINDOW = 16
"""Proofs are answered at the latest height and the PROOF_WINDOW before it only. A proof at an older height v
rebuilds every store's Merkle tree from the rows written since v, on the loop that serves consensus too: at the
oldest of 100 kept heights of a busy chain that took 0.37 s a query, and a flood of them held consensus for
seconds. Light clients ask at the latest height (answered one below); reads without a proof reach every kept
height. The views proofs use are kept until the next Commit (one per height of the window, so none is ever
pushed out), and a flood of proofs at one height builds its trees once."""


HASH_STAND_IN = b"\x00" * 32
"""PrepareProposal's seed for a block without a beacon, whose real one (the block's hash) it cannot know."""


def _timestamp_ns(ts: Timestamp) -> int:
    return ts.seconds * 1_000_000_000 + ts.nanos


def _duration_ns(d: Duration) -> int:
    return d.seconds * 1_000_000_000 + d.nanos


def _result(err: AppError | None = None, gas_wanted: int = 0, gas_used: int = 0,
            events: list[Event] | None = None) -> abci.ExecTxResult:
    result = abci.ExecTxResult(gas_wanted=gas_wanted, gas_used=gas_used)
    if err is not None:
        result.code, result.codespace, result.log = err.code, err.codespace, err.log
    for ev in events or []:
        result.events.append(ev.to_pb())
    return result


def _validator_updates(ctx: Ctx) -> list[abci.ValidatorUpdate]:
    """The powers a block (or genesis) changed, for CometBFT, in address order."""
    return [abci.ValidatorUpdate(pub_key=crypto_keys.PublicKey(ed25519=key), power=power)
            for _, (key, power) in sorted(ctx.validator_updates.items())]


ABSENT_FLAG = 1
"""BlockIDFlag ABSENT: no vote from the validator in the last commit (a nil vote counts as signing, as in
Cosmos: the validator was there)."""
ABSENT = "absent"
"""ResponseQuery.info of a proof that the key asked for is not there (Application._absence)."""


def block_bytes(tx: bytes) -> int:
    """What a tx counts against max_tx_bytes: CometBFT measures a block's txs as their protobuf field (a tag
    byte and a length varint before the bytes), and panics on a proposal over the limit. Counting the raw
    bytes let a full mempool, whose txs fit by CometBFT's count, plus the beacon run over it: every
    proposer in turn would halt the chain."""
    length, varint = len(tx), 1
    while length >= 0x80:
        length >>= 7
        varint += 1
    return 1 + varint + len(tx)


class Application:
    def __init__(self, db_path: str | Path, keep_recent: int = KEEP_RECENT) -> None:
        keepers = Keepers.new()
        self.auth, self.bank, self.experts, self.inference = (keepers.auth, keepers.bank, keepers.experts,
                                                              keepers.inference)
        self.beacon = keepers.beacon
        self.beacon_key: bytes | None = None
        """This node's beacon key (llmnet/node/run.py reads it from config/): the secrets its validator reveals."""
        self.modules = modules(keepers)
        self.stores = tuple(m.name for m in self.modules)
        self.committed = CommittedStore(db_path, self.stores, keep_recent)
        self.registry = MsgRegistry()
        self.router = QueryRouter()
        for module in self.modules:
            self.registry.register_all(module.msgs)
            self.router.add_all(module.queries)
        self.router.add_all(params_routes(self.modules))
        self.ante = AnteHandler(self.auth, self.bank, SignatureCache())
        self._block: State | None = None  # genesis or the block being finalized
        self._pending: tuple[int, StagedCommit, int] | None = None  # (height, staged, time_ns)
        self._check = State(self.committed)
        # Decoding is a pure function of the bytes, and each tx is decoded by CheckTx, every
        # RECHECK, PrepareProposal, ProcessProposal and FinalizeBlock: remember the outcome.
        self._decoded: OrderedDict[bytes, tuple[int, DecodedTx | AppError]] = OrderedDict()  # sha256: (size, tx)
        self._decoded_bytes = 0
        self._prepared: tuple[int, list[bytes]] | None = None  # this node's last proposal
        self._views: dict[int, VersionView] = {}  # past heights proven since the last Commit (the window's)
        self.chain_id = self.auth.chain_id(Ctx(State(self.committed), self._env(0, 0, chain_id="")))
        self.last_time_ns = int(self.committed.meta("time_ns") or b"0")

    def close(self) -> None:
        self.committed.close()

    @property
    def check_state(self) -> State:
        """The mempool's view: committed state plus the txs CheckTx admitted since the last Commit.
        Read it, never write it (Simulate runs on a copy of it)."""
        return self._check

    # -- connection: info/query ---------------------------------------------------------

    def info(self, req: abci.RequestInfo) -> abci.ResponseInfo:
        """Report the last committed height and app hash; CometBFT replays every block after it."""
        height = self.committed.height
        return abci.ResponseInfo(
            data="llmnet",
            version=SOFTWARE_VERSION,
            app_version=APP_VERSION,
            last_block_height=height,
            last_block_app_hash=self.committed.app_hash if height else b"",
        )

    def query(self, req: abci.RequestQuery) -> abci.ResponseQuery:
        """Answer from committed state, at the latest height or a recent one still kept (keep_recent).
        `/store/<name>/key` returns raw values (with simple:v ProofOps when prove is set); other paths
        are typed queries by method name."""
        height = self.query_height(req)
        resp = self._answer(req, height)
        if (resp.code or resp.info == ABSENT) and height != self.committed.height and not req.height:
            # Perhaps written in the latest block: then answer there (its proof checks after the next header).
            fresher = self._answer(req, self.committed.height)
            if not fresher.code and fresher.info != ABSENT:
                return fresher
        return resp

    def _answer(self, req: abci.RequestQuery, height: int) -> abci.ResponseQuery:
        try:
            if req.prove and height < self.committed.height - PROOF_WINDOW:
                raise ErrHeightUnavailable(f"proofs are answered at the latest height and the {PROOF_WINDOW} "
                                           f"before it (from {self.committed.height - PROOF_WINDOW}); height "
                                           f"{height} is readable without one")
            reader = self.committed if height == self.committed.height else \
                self._proof_view(height) if req.prove else VersionView(self.committed, height)
            if req.path.startswith("/store/"):
                return self._query_store(req, height, reader)
            ctx = Ctx(State(reader), self._env(height, self.last_time_ns))
            value = self.router.run(ctx, req.path, req.data)
            return abci.ResponseQuery(value=value, height=height)
        except (AppError, HeightNotKept) as err:
            err = err if isinstance(err, AppError) else ErrHeightUnavailable(str(err))
            return abci.ResponseQuery(code=err.code, codespace=err.codespace, log=err.log, height=height)

    def _proof_view(self, height: int) -> VersionView:
        """The state at a past height of the proof window, kept until the next Commit (the trees a view builds
        stand on the latest)."""
        view = self._views.get(height)
        if view is None:
            view = self._views[height] = VersionView(self.committed, height)
        return view

    def query_height(self, req: abci.RequestQuery) -> int:
        """The height a query is answered at. A proof asked for without a height is answered one height
        below the latest (unless the key is new there): the app hash of height H is only in header H+1, so
        a light client (`cometbft light`) can check H-1 at once and H only after the next block."""
        latest = self.committed.height
        if req.height:
            return req.height
        if req.prove and latest - 1 >= max(1, self.committed.oldest_height()):
            return latest - 1
        return latest

    def _query_store(self, req: abci.RequestQuery, height: int, reader: CommittedStore | VersionView,
                     ) -> abci.ResponseQuery:
        parts = req.path.split("/")
        if len(parts) != 4 or parts[3] != "key" or parts[2] not in self.stores:
            raise ErrInvalidRequest(f"store path must be /store/<{'|'.join(self.stores)}>/key, got {req.path!r}")
        store = parts[2]
        value = reader.get(store, req.data)
        if value is None and req.prove and req.data and not is_link(req.data):
            return self._absence(req.data, store, height, reader)
        if value is None:
            raise ErrNotFound(f"no value at key {req.data.hex()} in store {store} at height {height}")
        resp = abci.ResponseQuery(key=req.data, value=value, height=height)
        if req.prove:
            resp.proof_ops.ops.extend(reader.prove(store, req.data))
        return resp

    @staticmethod
    def _absence(key: bytes, store: str, height: int, reader: CommittedStore | VersionView) -> abci.ResponseQuery:
        """A missing key, proven missing: the proven link of its predecessor, whose next key lies past it
        (store/links.py). The response's key is that link's, so nobody can take it for the key asked."""
        before = reader.iterate(store, b"", key, limit=1, reverse=True)
        link = link_key(before[0][0] if before else b"")
        link_value = reader.get(store, link)
        if link_value is None:  # a store nothing was ever written to has no links
            raise ErrNotFound(f"no value at key {key.hex()} in store {store} at height {height}")
        return abci.ResponseQuery(key=link, value=link_value, height=height, info=ABSENT,
                                  log=f"no value at key {key.hex()} in store {store}: the proof is of the link "
                                      f"from the key before it, which skips it",
                                  proof_ops=crypto_proof.ProofOps(ops=reader.prove(store, link)))

    # -- connection: mempool ------------------------------------------------------------

    def check_tx(self, req: abci.RequestCheckTx) -> abci.ResponseCheckTx:
        """Validate against the check state (committed state plus txs already admitted since the
        last Commit) and, if valid, apply it there so the sender's next sequence is admitted too.
        A new tx and a RECHECK after Commit both run in full, messages included: a tx that drains
        its sender's balance must leave the check state poorer, or the sender's next txs would be
        admitted on money it no longer has."""
        result, _ = self._run_undecided(self._check, self._check_env(), req.tx, keep_failed_msgs=False)
        return abci.ResponseCheckTx(
            code=result.code, codespace=result.codespace, log=result.log,
            gas_wanted=result.gas_wanted, gas_used=result.gas_used,
        )

    def simulate(self, raw: bytes) -> abci.ExecTxResult:
        """Run a tx on a copy of the check state as a block would (events, fee kept on a failing
        message); the copy is dropped, so nothing is kept. Its signature may be SIMULATION_SIGNATURE (and should:
        a signed tx sent to simulate can be broadcast by whoever receives it)."""
        return self._run_undecided(self._check.fork(), self._check_env(), raw, keep_failed_msgs=True,
                                   simulate=True)[0]

    # -- connection: consensus ----------------------------------------------------------

    def init_chain(self, req: abci.RequestInitChain) -> abci.ResponseInitChain:
        """Load genesis app_state into a fresh block state; it is persisted with block 1's Commit,
        so a crash before then makes CometBFT call InitChain again."""
        if self.committed.height:  # CometBFT sends it to an app at height 0 only: anything else is not CometBFT
            raise RuntimeError(f"InitChain on a chain already at height {self.committed.height}")
        try:
            app_state = json.loads(req.app_state_bytes or b"{}")
        except ValueError as exc:
            raise ValueError(f"genesis app_state is not JSON: {exc}") from None
        state = State(self.committed)
        ctx = Ctx(state, self._env(req.initial_height, _timestamp_ns(req.time), req.chain_id))
        # CometBFT's, not app_state's: when vote extensions start, and genesis.json's validators
        app_state[BEACON] = {"vote_extensions_enable_height": req.consensus_params.abci.vote_extensions_enable_height}
        app_state.setdefault(VALIDATORS, {}).update(
            consensus=[(v.pub_key.ed25519, v.power) for v in req.validators],
            evidence_max_age_blocks=req.consensus_params.evidence.max_age_num_blocks,
            evidence_max_age_ns=_duration_ns(req.consensus_params.evidence.max_age_duration))
        for module in self.modules:
            module.init_genesis(ctx, app_state.get(module.name, {}))
        self.chain_id = req.chain_id
        self._block = state
        self._check = state.fork()  # the mempool may admit txs before block 1 commits
        return abci.ResponseInitChain(app_hash=self.committed.stage(state.writes()).app_hash,
                                      validators=_validator_updates(ctx))

    def extend_vote(self, req: abci.RequestExtendVote) -> abci.ResponseExtendVote:
        """A validator extends its precommit with its beacon secret of the height before (revealed) and a
        commitment to this height's (x/beacon): secrets from the node's beacon key, set by the node
        (llmnetd keeps it in config/; without one, a key of zeros: a share anyone can predict, said in the log)."""
        if self.beacon_key is None:
            log.error("no beacon key set: this validator's share of the beacon is predictable (llmnetd sets one)")
        key = self.beacon_key or bytes(32)
        return abci.ResponseExtendVote(vote_extension=beacon_extension_at(key, self.chain_id, req.height))

    def verify_vote_extension(self, req: abci.RequestVerifyVoteExtension) -> abci.ResponseVerifyVoteExtension:
        # The shape only: whether its secret matches what it committed to is the beacon's to judge, a block
        # later (a validator left out of one beacon has nothing kept to match, and must not lose its vote).
        ok = parse_beacon_extension(req.vote_extension) is not None
        return abci.ResponseVerifyVoteExtension(status=abci.ResponseVerifyVoteExtension.ACCEPT if ok else
                                                abci.ResponseVerifyVoteExtension.REJECT)

    def prepare_proposal(self, req: abci.RequestPrepareProposal) -> abci.ResponsePrepareProposal:
        """The beacon first (once vote extensions are on), then, in order, the txs that fit in
        max_tx_bytes and will pay: each is executed, messages and all, on the state the block's opening work
        and the ones before it leave, as FinalizeBlock will run them."""
        state = self._proposal_state()
        env = self._env(req.height, _timestamp_ns(req.time))
        max_gas = self.auth.params(Ctx(state, env)).max_block_gas
        # Without a beacon the seed is the block's hash, unknown yet: a stand-in draws as many (who is drawn, never
        # whether, nor any balance, depends on it); an empty one would hold the draws the block will make.
        chosen, size, gas, seed = [], 0, 0, HASH_STAND_IN
        if self.beacon.expects_beacon(Ctx(state, env), req.height):
            built = self.beacon.build(Ctx(state, env), req.local_last_commit, req.height)
            beacon, seed = encode_beacon(built), self.beacon.seed(Ctx(state, env), built)
            chosen, size = [beacon], block_bytes(beacon)
        env = self._env(req.height, env.time_ns, seed=seed, votes=req.local_last_commit, misbehavior=req.misbehavior)
        self._begin_block(Ctx(state, env))
        for raw in req.txs:
            wanted = self._gas_wanted(Ctx(state, env), raw)
            if size + block_bytes(raw) > req.max_tx_bytes or gas + wanted > max_gas:
                continue
            if self._run_undecided(state, env, raw, keep_failed_msgs=True, record_events=False)[1]:
                chosen.append(raw)
                size, gas = size + block_bytes(raw), gas + wanted
        self._prepared = (req.height, chosen)
        return abci.ResponsePrepareProposal(txs=chosen)

    def process_proposal(self, req: abci.RequestProcessProposal) -> abci.ResponseProcessProposal:
        """Accept only if the beacon is valid for the proposal's last commit and every tx, executed in order
        as FinalizeBlock will, pays its fee: a block may not carry a tx that costs the network its bytes and
        its sender nothing. The txs of this node's own proposal passed the same run moments ago against the
        same state, so they are not run again; its beacon is checked all the same, since a proposer of a later
        round may reuse the txs with another last commit (every other node would refuse that). A proposal
        that makes the app fail in a way no rule foresaw is refused, never a reason to stop."""
        try:
            ok = self._acceptable(req)
        except Exception:  # noqa: BLE001 - a proposer must not be able to stop the validators that judge it
            log.exception("proposal at height %d made the app fail; refused", req.height)
            ok = False
        status = abci.ResponseProcessProposal.ACCEPT if ok else abci.ResponseProcessProposal.REJECT
        return abci.ResponseProcessProposal(status=status)

    def _acceptable(self, req: abci.RequestProcessProposal) -> bool:
        state = self._proposal_state()
        env = self._env(req.height, _timestamp_ns(req.time))
        try:
            beacon, seed, txs = self.beacon.take(Ctx(state, env), list(req.txs), req.height,
                                                 req.proposed_last_commit)
        except ErrInvalidBeacon:
            return False
        if self._prepared == (req.height, list(req.txs)):
            return True
        # The block's opening work first, as FinalizeBlock does: it credits accounts (validators' fee shares,
        # refunds of draws that found too few experts). Judged without it, a sender's first tx could spend a
        # credit the check did not see (its message failed here, paid) and succeed in the block, leaving its
        # later txs unable to pay: stored by every node for nothing.
        env = self._env(req.height, env.time_ns, seed=seed if beacon is not None else req.hash,
                        votes=req.proposed_last_commit, misbehavior=req.misbehavior)
        self._begin_block(Ctx(state, env))
        gas = sum(self._gas_wanted(Ctx(state, env), raw) for raw in txs)
        return gas <= self.auth.params(Ctx(state, env)).max_block_gas and all(
            self._run_undecided(state, env, raw, keep_failed_msgs=True, record_events=False)[1] for raw in txs)

    def finalize_block(self, req: abci.RequestFinalizeBlock) -> abci.ResponseFinalizeBlock:
        """Execute the decided block on a staged state and return the new app hash. Nothing is
        persisted here: Commit does that."""
        if self.committed.height and req.height != self.committed.height + 1:
            raise RuntimeError(f"FinalizeBlock for height {req.height}, the app is at {self.committed.height}")
        state = self._block if self._block is not None else State(self.committed)
        self._block = None
        time_ns = _timestamp_ns(req.time)
        try:  # ProcessProposal refused any block without a valid beacon: one here means we must stop
            beacon, seed, txs = self.beacon.take(Ctx(state, self._env(req.height, time_ns)), list(req.txs),
                                                 req.height, req.decided_last_commit)
        except ErrInvalidBeacon as err:
            raise RuntimeError(f"decided block {req.height} has no valid beacon: {err}") from None
        # With vote extensions on, the beacon's seed (b"" when none of its secrets matches: draws then wait);
        # before, the block's hash.
        env = self._env(req.height, time_ns, seed=seed if beacon is not None else req.hash,
                        votes=req.decided_last_commit, misbehavior=req.misbehavior)
        block = Ctx(state, env)
        self._begin_block(block)  # the chain's own work: an error here is fatal
        results = [abci.ExecTxResult()] if beacon is not None else []
        results += [self._run(state, env, raw, keep_failed_msgs=True)[0] for raw in txs]
        with state.scope():  # end-of-block work likewise
            for module in self.modules:
                if module.end_block is not None:
                    module.end_block(block)
        if beacon is not None and state.writes():  # a block that changed nothing keeps the app hash still
            with state.scope():
                self.beacon.keep_commitments(block, beacon)
        staged = self.committed.stage(state.writes())
        self._pending = (req.height, staged, time_ns)
        return abci.ResponseFinalizeBlock(tx_results=results, app_hash=staged.app_hash,
                                          events=[e.to_pb() for e in block.events],
                                          validator_updates=_validator_updates(block))

    def commit(self, req: abci.RequestCommit) -> abci.ResponseCommit:
        """Persist the finalized block in one database transaction and reset the check state."""
        if self._pending is None:
            raise RuntimeError("Commit without FinalizeBlock")
        height, staged, time_ns = self._pending
        self.committed.commit(staged, height, {"time_ns": str(time_ns).encode()})
        self._pending = None
        self.last_time_ns = time_ns
        self._check = State(self.committed)
        self._prepared = None
        self._views.clear()
        return abci.ResponseCommit()

    # -- state sync (the snapshot connection is served by llmnet/node/snapshots.py) ------

    def adopt_restored_state(self) -> None:
        """The committed store was just filled from a snapshot: forget what was derived from the empty state
        and read the chain id and last block time from the restored one, as opening it would."""
        self._block, self._pending, self._prepared = None, None, None
        self._check = State(self.committed)
        self._views.clear()
        self.chain_id = self.auth.chain_id(Ctx(State(self.committed), self._env(0, 0, chain_id="")))
        self.last_time_ns = int(self.committed.meta("time_ns") or b"0")

    # -- helpers ------------------------------------------------------------------------

    def _env(self, height: int, time_ns: int, chain_id: str | None = None, seed: bytes = b"",
             votes: abci.CommitInfo | abci.ExtendedCommitInfo | None = None,
             misbehavior: Iterable[abci.Misbehavior] = ()) -> BlockEnv:
        last_commit = () if votes is None else tuple(
            (v.validator.address, v.block_id_flag != ABSENT_FLAG) for v in votes.votes)
        powers = () if votes is None else tuple((v.validator.address, v.validator.power) for v in votes.votes)
        return BlockEnv(chain_id=self.chain_id if chain_id is None else chain_id,
                        height=height, time_ns=time_ns, seed=seed, last_commit=last_commit, last_powers=powers,
                        misbehavior=tuple(Misbehavior(m.validator.address, m.height, m.type) for m in misbehavior))

    def _begin_block(self, block: Ctx) -> None:
        """Every module's begin-of-block work, in one scope."""
        with block.state.scope():
            for module in self.modules:
                if module.begin_block is not None:
                    module.begin_block(block)

    def _proposal_state(self) -> State:
        """Scratch state for judging a proposal: committed state, plus genesis if block 1 is next."""
        return self._block.fork() if self._block is not None else State(self.committed)

    def _check_env(self) -> BlockEnv:
        return self._env(self.committed.height + 1, self.last_time_ns)

    def _gas_wanted(self, ctx: Ctx, raw: bytes) -> int:
        """The gas limit a tx asks for (0 for one that does not decode: it will not pay, so it is not kept)."""
        try:
            return int(self._decode(ctx, raw).auth.fee.gas_limit)
        except Exception:  # noqa: BLE001 - an AppError, or a bug the run that follows refuses (_run_undecided)
            return 0

    def _decode(self, ctx: Ctx, raw: bytes) -> DecodedTx:
        """Size check before parsing, so an oversize tx costs no decoding."""
        check_size(len(raw), self.auth.params(ctx).max_tx_bytes)
        key = hashlib.sha256(raw).digest()
        kept = self._decoded.get(key)
        if kept is not None:
            self._decoded.move_to_end(key)
            hit = kept[1]
        else:
            try:
                hit = decode_tx(raw, self.registry)
            except AppError as err:
                hit = err
            self._decoded[key] = (len(raw) + DECODE_ENTRY_BYTES, hit)
            self._decoded_bytes += len(raw) + DECODE_ENTRY_BYTES
            while self._decoded_bytes > DECODE_CACHE_BYTES:
                size, _ = self._decoded.popitem(last=False)[1]
                self._decoded_bytes -= size
        if isinstance(hit, AppError):
            raise hit.with_traceback(None)  # a cached error must not accumulate tracebacks
        return hit

    def _run_undecided(self, state: State, env: BlockEnv, raw: bytes, keep_failed_msgs: bool,
                       record_events: bool | None = None, simulate: bool = False) -> tuple[abci.ExecTxResult, bool]:
        """_run where no block is decided yet (CheckTx, Simulate, proposals): a failure no rule foresaw refuses
        the tx, its writes undone (every write sits in a scope), instead of stopping the node. Deterministic
        failures make every honest node refuse alike; FinalizeBlock keeps fail-stop."""
        try:
            return self._run(state, env, raw, keep_failed_msgs, record_events, simulate)
        except Exception as exc:  # noqa: BLE001 - any bug a tx can reach
            log.exception("tx %s made the app fail; refused", hashlib.sha256(raw).hexdigest()[:16].upper())
            return _result(ErrInternal(f"the node failed on this tx ({type(exc).__name__}); refused")), False

    def _run(self, state: State, env: BlockEnv, raw: bytes, keep_failed_msgs: bool,
             record_events: bool | None = None, simulate: bool = False) -> tuple[abci.ExecTxResult, bool]:
        """validate_tx and execution in one: decode, ante, then messages. Returns the result and whether
        the tx was charged (its ante passed: fee taken, sequence bumped). With keep_failed_msgs (a block,
        a proposal), a message failure still charges the fee and sequence; without (the mempool), the
        whole tx is rejected. Events are built only where someone reads them (a block, by default)."""
        ctx = Ctx(state, env, record_events=keep_failed_msgs if record_events is None else record_events)
        try:
            tx = self._decode(ctx, raw)
        except AppError as err:
            return _result(err), False
        try:
            with state.scope():
                free = self.ante.run(ctx, tx, simulate)
                ante_events, ctx.events = ctx.events, []
                try:
                    with state.scope():
                        for spec, msg in tx.msgs:
                            ctx.emit(spec.message_event(tx.signer))
                            spec.handle(ctx, msg)
                except AppError as err:
                    if not keep_failed_msgs or free:  # a free tx that fails is not kept: it paid nothing
                        raise
                    return _result(err, tx.auth.fee.gas_limit, ctx.gas.used, ante_events), True
                # built inside the scope: should building it fail, the tx's writes are undone with it
                return _result(None, tx.auth.fee.gas_limit, ctx.gas.used, ante_events + ctx.events), True
        except AppError as err:
            return _result(err, tx.auth.fee.gas_limit, ctx.gas.used), False
