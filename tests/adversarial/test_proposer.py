"""Attacks by a block proposer (or anyone feeding one): blocks that carry txs nobody pays for, and
steering which experts a query draws.

Promises: every tx in a block pays its fee (a proposal is judged by executing its txs in order, messages
and all, on the state they will run on). A query is drawn in the block after its inclusion, seeded by
the beacon of the validators' vote-extension signatures on the including block: no one knew it when the
query was included, and leaving signers out gives the drawing block's proposer a handful of outcomes
(counted below), not as many as it can grind block hashes. The seed is made of secrets each validator
committed to a block before the query was included, never of signatures, which a signer can remake at will.
"""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from nacl.signing import SigningKey

from abci_app.context import BlockEnv, Ctx
from abci_app.crypto import address_bytes
from abci_app.store.state import State
from abci_app.x.beacon.types import TX_TAG
from abci_app.x.beacon.types import encode_tx as encode_beacon
from abci_app.x.inference.selection import assign, query_seed
from llmnet.client import protocol
from llmnet.client.txbuilder import build_tx, send_msg
from tests.adversarial.conftest import DOMAIN
from tests.helpers import CHAIN_ID, FUNDS, Harness
from tests.protocol_harness import ProtocolChain
from wire.llmnet.beacon.v1 import beacon_pb2 as pb_beacon
from wire.tendermint.abci import types_pb2 as abci

FEE = 2_000
MEMO = "x" * 200  # followers padded with a memo: bytes in blocks, no fee behind them


def _drain_then_follow(h: Harness, followers: int) -> list[bytes]:
    """The sender's first tx sends away everything but its own fee; the followers cannot pay."""
    key = h.keys[0]
    txs = [build_tx(key, CHAIN_ID, 0, [send_msg(key.address, h.keys[1].address, FUNDS - FEE)], fee=FEE)]
    txs += [build_tx(key, CHAIN_ID, 1 + i, [send_msg(key.address, h.keys[1].address, 1)], fee=FEE, memo=MEMO)
            for i in range(followers)]
    return txs


def test_a_proposal_with_unpaid_txs_is_rejected_and_never_built(tmp_path: Path) -> None:
    h = Harness.create(tmp_path / "s.db")
    h.finalize([])
    txs = _drain_then_follow(h, 50)
    time = Timestamp(seconds=1_700_000_100)
    prepared = h.app.prepare_proposal(abci.RequestPrepareProposal(txs=txs, max_tx_bytes=10**7, height=2, time=time))
    assert list(prepared.txs)[1:] == txs[:1]  # after the beacon
    beacon = h.beacon(2)
    good = h.app.process_proposal(abci.RequestProcessProposal(txs=[beacon, *txs[:1]], height=2, time=time,
                                                              hash=b"\x01" * 32, proposed_last_commit=h.last_commit()))
    assert good.status == abci.ResponseProcessProposal.ACCEPT
    verdict = h.app.process_proposal(abci.RequestProcessProposal(
        txs=[beacon, *txs], height=2, time=time, hash=b"\x01" * 32, proposed_last_commit=h.last_commit()))
    assert verdict.status == abci.ResponseProcessProposal.REJECT
    # what the attack bought before: 50 txs of bytes in a block for one fee
    results = h.finalize(txs).tx_results
    paid = sum(1 for r in results if r.code == 0)
    assert paid == 1 and sum(len(t) for t in txs[1:]) > 10_000


def test_recheck_sees_what_the_admitted_txs_did(tmp_path: Path) -> None:
    h = Harness.create(tmp_path / "s.db")
    h.finalize([])
    drain, follower = _drain_then_follow(h, 1)
    assert h.app.check_tx(abci.RequestCheckTx(tx=drain)).code == 0
    h.finalize([])  # a block without them; Commit resets the check state and CometBFT rechecks the mempool
    recheck = abci.CheckTxType.RECHECK
    assert h.app.check_tx(abci.RequestCheckTx(tx=drain, type=recheck)).code == 0
    again = h.app.check_tx(abci.RequestCheckTx(tx=follower, type=recheck))
    assert again.code != 0  # the recheck of the drain left the check state drained: the follower cannot pay


def test_a_credit_of_the_blocks_opening_work_cannot_carry_unpaid_txs(tmp_path: Path) -> None:
    """Proposals were judged on committed state without the block's opening work, which credits accounts
    (here a validator operator's share of the fees). The operator's first tx sent its balance plus the credit:
    judged so, its message failed (its fee paid), in the block it succeeded, and its ten followers could not
    pay: stored by every node for one fee. Now proposals run the opening work first, as the block does."""
    from abci_app.crypto import parse_address
    from abci_app.x.auth.types import FEE_COLLECTOR
    from tests.test_validators import bonded_chain, operators

    chain = bonded_chain(tmp_path)
    chain.ok()
    payer, operator = chain.keys[-1], operators()[0]
    chain.ok(*[chain.tx(payer, send_msg(payer.address, payer.address, 1)) for _ in range(8)])  # fees to share

    def now() -> Ctx:
        return Ctx(State(chain.app.committed), BlockEnv(chain.chain_id, chain.height, 0, b""))

    def balance(address: bytes) -> int:
        return chain.app.bank.balance(now(), address)

    pool, held = balance(FEE_COLLECTOR), balance(parse_address(operator.address))
    share = pool // 4  # four validators of equal power; the operator's is one
    assert share > FEE
    sequence = chain.app.auth.account(now(), parse_address(operator.address)).sequence
    txs = [build_tx(operator, chain.chain_id, sequence, [send_msg(operator.address, payer.address,
                                                                  held + share - FEE)], fee=FEE)]
    txs += [build_tx(operator, chain.chain_id, sequence + 1 + i, [send_msg(operator.address, payer.address, 1)],
                     fee=FEE, memo=MEMO) for i in range(10)]
    height, time = chain.height + 1, Timestamp(seconds=1_700_000_000 + chain.height + 1)
    prepared = chain.app.prepare_proposal(abci.RequestPrepareProposal(
        txs=txs, max_tx_bytes=10**7, height=height, time=time, local_last_commit=_extended_commit(chain, set())))
    assert list(prepared.txs)[1:] == txs[:1]  # an honest proposer leaves the followers out
    chain.app._prepared = None  # judged as every other validator judges it
    verdict = chain.app.process_proposal(abci.RequestProcessProposal(
        txs=[prepared.txs[0], *txs], height=height, time=time, hash=b"\x07" * 32,
        proposed_last_commit=chain.last_commit()))
    assert verdict.status == abci.ResponseProcessProposal.REJECT  # a proposer that kept them is refused
    results = chain.finalize(txs[:1]).tx_results
    assert results[-1].code == 0 and balance(parse_address(operator.address)) == 0  # the credit was real


def _drawn_with(tmp_path: Path, signers: list[int] | None = None, name: str = "c") -> tuple[list[str], list[str]]:
    """Who a query is drawn to when its draw block's beacon carries `signers`' extensions."""
    chain = ProtocolChain(tmp_path / f"{name}.db", 10, [DOMAIN])
    chain.register_all([DOMAIN])
    chain.ok(chain.tx(chain.requester, protocol.submit_query(chain.requester, DOMAIN, "q", 100_000, 2, 1)))
    chain.finalize([], signers=signers)
    st = chain.status(1).query
    chain.app.close()
    return list(st.respondents), list(st.scorers)


def test_a_proposer_chooses_among_at_most_five_draws(tmp_path: Path) -> None:
    """The draw block's proposer picks which extension signatures (over 2/3 of the power) go into its
    beacon, nothing else: with 4 equal validators that is 5 subsets, so at most 5 outcomes. Before, the
    seed was that block's hash, which the proposer grinds at will (tx order, time)."""
    subsets = [s for n in (3, 4) for s in itertools.combinations(range(4), n)]
    outcomes = {tuple(map(tuple, _drawn_with(tmp_path, list(s), f"s{i}"))) for i, s in enumerate(subsets)}
    assert len(subsets) == 5 and 1 <= len(outcomes) <= 5
    chain = ProtocolChain(tmp_path / "hash.db", 10, [DOMAIN])
    chain.register_all([DOMAIN])
    ctx = Ctx(State(chain.app.committed), BlockEnv(chain.chain_id, chain.height, 0, b""))
    pool = chain.app.experts.pool(ctx, DOMAIN)
    by_hash = {tuple(assign(query_seed(hashlib.sha256(b"%d" % i).digest(), 1), pool, 2, 3, []).respondents)
               for i in range(200)}
    assert len(by_hash) > 20  # what grinding a block hash over 200 candidate blocks gave a proposer


@pytest.mark.parametrize("signers", [[0, 1], [0], []], ids=["half the power", "one validator", "no one"])
def test_a_beacon_without_two_thirds_is_refused(tmp_path: Path, signers: list[int]) -> None:
    chain = ProtocolChain(tmp_path / "s.db", 6, [DOMAIN])
    chain.block()
    time = Timestamp(seconds=1_700_000_100)
    weak = abci.RequestProcessProposal(txs=[chain.beacon(chain.height + 1, signers)], height=chain.height + 1,
                                       time=time, hash=b"\x03" * 32)
    assert chain.app.process_proposal(weak).status == abci.ResponseProcessProposal.REJECT
    missing = abci.RequestProcessProposal(txs=[], height=chain.height + 1, time=time, hash=b"\x03" * 32)
    assert chain.app.process_proposal(missing).status == abci.ResponseProcessProposal.REJECT


def test_a_beacon_cannot_repeat_or_forge_a_signature(tmp_path: Path) -> None:
    chain = ProtocolChain(tmp_path / "s.db", 6, [DOMAIN])
    chain.block()
    beacon = pb_beacon.Beacon.FromString(chain.beacon(chain.height + 1, [0, 1])[len(TX_TAG):])
    beacon.votes.append(beacon.votes[0])  # validator 0 counted twice would make 3 of 4
    forged = pb_beacon.Beacon.FromString(chain.beacon(chain.height + 1)[len(TX_TAG):])
    forged.votes[3].extension_signature = forged.votes[0].extension_signature  # someone else's signature
    time = Timestamp(seconds=1_700_000_100)
    for bad in (beacon, forged):
        req = abci.RequestProcessProposal(txs=[encode_beacon(bad)], height=chain.height + 1, time=time,
                                          hash=b"\x04" * 32)
        assert chain.app.process_proposal(req).status == abci.ResponseProcessProposal.REJECT
    with pytest.raises(RuntimeError):  # and a decided block without a valid one stops the node
        chain.finalize([], signers=[0])
    assert not chain.app.check_tx(abci.RequestCheckTx(tx=chain.beacon(chain.height + 1))).code == 0  # not a tx


def _extended_commit(chain: ProtocolChain, garbage: set[int]) -> abci.ExtendedCommitInfo:
    """The previous height's extended commit as CometBFT hands it to a proposer; validators in `garbage`
    carry an extension signature this app does not accept (as one CometBFT's laxer ZIP-215 rules let
    through would be)."""
    return chain.extended_commit(frozenset(garbage))


def test_one_validator_cannot_stall_the_chain_with_an_odd_signature(tmp_path: Path) -> None:
    """A byzantine validator's extension signature that CometBFT accepts and this app does not: an honest
    proposer leaves it out, and the others accept the beacon of the remaining three."""
    chain = ProtocolChain(tmp_path / "s.db", 6, [DOMAIN])
    chain.block()
    time = Timestamp(seconds=1_700_000_100)
    prepared = chain.app.prepare_proposal(abci.RequestPrepareProposal(
        txs=[], max_tx_bytes=10**6, height=chain.height + 1, time=time, local_last_commit=_extended_commit(chain, {3})))
    beacon = pb_beacon.Beacon.FromString(prepared.txs[0][len(TX_TAG):])
    assert len(beacon.votes) == 3
    verdict = chain.app.process_proposal(abci.RequestProcessProposal(
        txs=list(prepared.txs), height=chain.height + 1, time=time, hash=b"\x05" * 32,
        proposed_last_commit=chain.last_commit()))
    assert verdict.status == abci.ResponseProcessProposal.ACCEPT


def test_a_beacon_must_come_from_the_round_that_committed(tmp_path: Path) -> None:
    """Signatures for another round (byzantine validators can sign those at will, offline) give a
    colluding proposer extra seeds: refused."""
    chain = ProtocolChain(tmp_path / "s.db", 6, [DOMAIN])
    chain.block()
    signed = [(address_bytes(bytes(v.verify_key)), *chain.extension(v, chain.height, 1)) for v in chain.validators]
    other_round = encode_beacon(pb_beacon.Beacon(height=chain.height, round=1, votes=[
        pb_beacon.BeaconVote(validator_address=a, extension=e, extension_signature=sig)
        for a, e, sig in sorted(signed)]))
    verdict = chain.app.process_proposal(abci.RequestProcessProposal(
        txs=[other_round], height=chain.height + 1, time=Timestamp(seconds=1_700_000_100), hash=b"\x06" * 32,
        proposed_last_commit=chain.last_commit()))
    assert verdict.status == abci.ResponseProcessProposal.REJECT
    absent = chain.app.process_proposal(abci.RequestProcessProposal(  # signed by one who did not precommit
        txs=[chain.beacon(chain.height + 1)], height=chain.height + 1, time=Timestamp(seconds=1_700_000_100),
        hash=b"\x06" * 32, proposed_last_commit=chain.last_commit(signers=[0, 1, 2])))
    assert absent.status == abci.ResponseProcessProposal.REJECT


def test_a_validator_can_only_extend_its_vote_with_the_beacon_bytes(tmp_path: Path) -> None:
    """Extensions are not a channel: bytes of any other shape make the vote invalid. What a validator
    contributes to the seed is the secret it committed to a block before (see the grinding test below)."""
    chain = ProtocolChain(tmp_path / "s.db", 1, [DOMAIN])
    ours = chain.app.extend_vote(abci.RequestExtendVote(height=2)).vote_extension
    check = chain.app.verify_vote_extension
    assert check(abci.RequestVerifyVoteExtension(vote_extension=ours)).status == \
        abci.ResponseVerifyVoteExtension.ACCEPT
    for other in (b"", ours + b"x", b"grind me"):
        assert check(abci.RequestVerifyVoteExtension(vote_extension=other)).status == \
            abci.ResponseVerifyVoteExtension.REJECT


def test_a_full_mempool_never_makes_a_proposal_cometbft_refuses(tmp_path: Path) -> None:
    """CometBFT reaps txs that fit max_tx_bytes by its own count (each tx as a protobuf field: tag, length
    varint, bytes) and panics if the proposal it gets back is over it. The app puts the beacon in front and
    counted raw bytes: with a mempool reaped to the limit, every proposer in turn would have crashed."""
    from wire.tendermint.types import types_pb2 as ttypes

    h = Harness.create(tmp_path / "db", n_keys=4)
    h.finalize([])
    h.finalize([])
    txs = [h.send_tx(i % 4, (i + 1) % 4, 1, fee=10_000) for i in range(200)]
    reaped = len(ttypes.Data(txs=txs).SerializeToString())  # fits exactly, as CometBFT reaps
    height = h.height + 1
    prepared = h.app.prepare_proposal(abci.RequestPrepareProposal(
        max_tx_bytes=reaped, txs=txs, height=height, time=Timestamp(seconds=1_700_000_000 + height),
        local_last_commit=h.extended_commit()))
    assert prepared.txs[0].startswith(TX_TAG)  # the beacon took its place: some txs wait for the next block
    assert len(ttypes.Data(txs=list(prepared.txs)).SerializeToString()) <= reaped
    assert 190 <= len(prepared.txs) - 1 < len(txs)


def test_a_later_round_reusing_our_proposals_txs_is_judged_by_its_own_last_commit(tmp_path: Path) -> None:
    """A node accepted any proposal carrying exactly the txs it had prepared, whatever the proposal's last
    commit, where every other node checks the beacon against that commit and refuses: two honest verdicts on
    one proposal (and, had it been decided, every node stopping in FinalizeBlock). Now both refuse it."""
    prepared_here, elsewhere = Harness.create(tmp_path / "a.db"), Harness.create(tmp_path / "b.db")
    for h in (prepared_here, elsewhere):
        h.finalize([])
        h.finalize([])
    height, time = prepared_here.height + 1, Timestamp(seconds=1_700_000_100)
    local = prepared_here.extended_commit()
    txs = list(prepared_here.app.prepare_proposal(abci.RequestPrepareProposal(
        txs=[], max_tx_bytes=10**6, height=height, time=time, local_last_commit=local)).txs)
    later_round = abci.CommitInfo(round=1, votes=list(prepared_here.last_commit().votes))

    def verdict(h: Harness, commit: abci.CommitInfo) -> int:
        return int(h.app.process_proposal(abci.RequestProcessProposal(
            txs=txs, height=height, time=time, hash=b"\x07" * 32, proposed_last_commit=commit)).status)

    assert verdict(prepared_here, later_round) == verdict(elsewhere, later_round) == \
        abci.ResponseProcessProposal.REJECT
    assert verdict(prepared_here, prepared_here.last_commit()) == verdict(elsewhere, elsewhere.last_commit()) == \
        abci.ResponseProcessProposal.ACCEPT


def _signed_with_nonce(key: SigningKey, message: bytes, nonce: bytes) -> bytes:
    """A valid ed25519 signature of `message` by `key` with a nonce of the signer's choosing (RFC 8032 derives it
    from the key and message, but nothing can check that): as many different valid signatures as nonces."""
    from nacl.bindings import (
        crypto_core_ed25519_scalar_add,
        crypto_core_ed25519_scalar_mul,
        crypto_core_ed25519_scalar_reduce,
        crypto_scalarmult_ed25519_base_noclamp,
    )

    digest = hashlib.sha512(bytes(key)).digest()
    secret = bytearray(digest[:32])
    secret[0] &= 248
    secret[31] = (secret[31] & 127) | 64
    r = crypto_core_ed25519_scalar_reduce(hashlib.sha512(nonce).digest())
    big_r = crypto_scalarmult_ed25519_base_noclamp(r)
    k = crypto_core_ed25519_scalar_reduce(hashlib.sha512(big_r + bytes(key.verify_key) + message).digest())
    a = crypto_core_ed25519_scalar_reduce(bytes(secret) + bytes(32))
    return big_r + crypto_core_ed25519_scalar_add(r, crypto_core_ed25519_scalar_mul(k, a))


def test_a_validator_cannot_grind_the_seed_by_re_signing_its_extension(tmp_path: Path) -> None:
    """The seed was sha256 over the extension signatures, and ed25519 lets a signer make any number of valid
    ones: one validator re-signing its own extension reached any pair of 10 experts within 3,000 tries and a
    pair of its choosing in 18 (outside attack). Now the seed is made of the secrets the votes reveal, each
    committed to in the vote of the height before: another signature changes nothing, and another secret
    matches no commitment and is left out."""
    from nacl.signing import VerifyKey

    from abci_app.x.beacon.keeper import extension_sign_bytes
    from abci_app.x.beacon.types import EXTENSION_TAG, commitment_of

    chain = ProtocolChain(tmp_path / "s.db", 10, [DOMAIN])
    chain.register_all([DOMAIN])
    chain.ok(chain.tx(chain.requester, protocol.submit_query(chain.requester, DOMAIN, "q", 100_000, 2, 1)))
    height = chain.height + 1
    honest = pb_beacon.Beacon.FromString(chain.beacon(height)[len(TX_TAG):])
    grinder = chain.validators[0]
    seeds = set()
    for attempt in range(30):
        beacon = pb_beacon.Beacon()
        beacon.CopyFrom(honest)
        vote = next(v for v in beacon.votes if v.validator_address == address_bytes(bytes(grinder.verify_key)))
        message = extension_sign_bytes(chain.chain_id, height - 1, 0, vote.extension)
        vote.extension_signature = _signed_with_nonce(grinder, message, b"try %d" % attempt)
        VerifyKey(bytes(grinder.verify_key)).verify(message, vote.extension_signature)  # valid, and another one
        ctx = Ctx(State(chain.app.committed), BlockEnv(chain.chain_id, height, 0, b""))
        seeds.add(chain.app.beacon.verify(ctx, beacon, height, chain.last_commit()))
    assert len(seeds) == 1 and b"" not in seeds
    # nor can it reveal another secret: it matches no commitment, and the seed is the others' alone
    beacon = pb_beacon.Beacon()
    beacon.CopyFrom(honest)
    vote = next(v for v in beacon.votes if v.validator_address == address_bytes(bytes(grinder.verify_key)))
    other_secret = hashlib.sha256(b"chosen").digest()
    vote.extension = EXTENSION_TAG + other_secret + commitment_of(other_secret)
    message = extension_sign_bytes(chain.chain_id, height - 1, 0, vote.extension)
    vote.extension_signature = grinder.sign(message).signature
    ctx = Ctx(State(chain.app.committed), BlockEnv(chain.chain_id, height, 0, b""))
    without = chain.app.beacon.verify(ctx, beacon, height, chain.last_commit())
    beacon.votes.remove(vote)
    assert without == chain.app.beacon.verify(ctx, beacon, height, chain.last_commit(signers=[1, 2, 3])) != seeds.pop()


def _block_one_query(tmp_path: Path) -> ProtocolChain:
    """Experts registered and a query submitted in block 1, where vote extensions start: block 2's beacon
    has nothing kept to match."""
    chain = ProtocolChain(tmp_path / "s.db", 10, [DOMAIN])
    txs = [chain.tx(k, protocol.register_expert(k, [DOMAIN], f"127.0.0.1:{7000 + i}", "m", "ab" * 32, 5_000_000))
           for i, k in enumerate(chain.experts)]
    chain.ok(*txs, chain.tx(chain.requester, protocol.submit_query(chain.requester, DOMAIN, "q", 100_000, 2, 1)))
    assert chain.height == 1
    return chain


def test_blocks_that_hold_a_draw_keep_commitments_so_a_seed_can_come(tmp_path: Path) -> None:
    """A held draw wrote its cursor once; a second block without a seed and without txs then wrote nothing,
    kept no commitments, and so no later block could have a seed: the draws waited until some unrelated tx
    came (and a chain making blocks only for txs stopped). Here block 3's beacon reveals secrets nothing
    committed to for three validators of four (as a proposer leaving honest shares out across a set change
    could arrange): no seed; block 4, honest, draws."""
    from abci_app.x.beacon.keeper import extension_sign_bytes
    from abci_app.x.beacon.types import from_last_commit

    chain = _block_one_query(tmp_path)
    chain.block()  # no seed: held
    votes = []
    for i, v in enumerate(chain.validators):
        extension, signature = chain.extension(v, chain.height)
        if i:
            extension = extension[:16] + bytes(32) + extension[48:]  # a secret it never committed to
            signature = v.sign(extension_sign_bytes(chain.chain_id, chain.height, 0, extension)).signature
        votes.append((address_bytes(bytes(v.verify_key)), extension, signature))
    chain.beacon = lambda height, signers=None: encode_beacon(from_last_commit(votes, height - 1, 0))  # type: ignore[method-assign]
    chain.block()  # block 3: no seed again, no tx
    del chain.beacon
    assert not chain.status(1).query.respondents
    chain.block()
    assert len(chain.status(1).query.respondents) == 2


def test_a_draw_with_no_seed_waits_and_is_made_later(tmp_path: Path) -> None:
    """A block whose beacon gives no seed (the first after vote extensions start: nothing was committed to
    yet) skipped the draws due in it, and the queue only looks at its own height when nothing is left over:
    a query submitted in block 1 waited for its draw for ever, its escrow locked. Now the draw waits for the
    next block with a seed."""
    chain = _block_one_query(tmp_path)
    chain.block()  # block 2: a beacon, and nothing kept to match it
    assert not chain.status(1).query.respondents
    chain.block()
    assert len(chain.status(1).query.respondents) == 2


def test_a_seed_needs_reveals_of_more_than_a_third_of_the_power_that_committed(tmp_path: Path) -> None:
    """Two beacons of > 2/3 each overlap in an honest validator only while the set stays the same; across a
    change of a third of the power a validator proposing both blocks left every matching share but its own
    out, and knew the seed before it chose the first block's txs. A seed now needs matching reveals of more
    than a third of the power that made the commitments."""
    chain = ProtocolChain(tmp_path / "s.db", 6, [DOMAIN])
    chain.register_all([DOMAIN])
    chain.ok(chain.tx(chain.requester, send_msg(chain.requester.address, chain.requester.address, 1)))  # a block
    height = chain.height + 1  # that changed state: it kept its beacon's commitments
    full = pb_beacon.Beacon.FromString(chain.beacon(height)[len(TX_TAG):])
    ctx = Ctx(State(chain.app.committed), BlockEnv(chain.chain_id, height, 0, b""))

    def seed_with(matching: int) -> bytes:
        beacon = pb_beacon.Beacon()
        beacon.CopyFrom(full)
        for vote in beacon.votes[matching:]:  # the rest reveal a secret nothing committed to
            vote.extension = vote.extension[:16] + bytes(32) + vote.extension[48:]
        return chain.app.beacon.seed(ctx, beacon)

    assert seed_with(1) == b""  # 10 of 40
    assert seed_with(2) != b"" and seed_with(2) != seed_with(4) != b""  # 20 of 40, and all


def test_a_held_draw_does_not_shorten_the_time_to_report_equivocation(tmp_path: Path) -> None:
    """Evidence was taken until a fixed number of blocks after the submit, counted as if the draw came in
    the next block: a draw held back moved the whole query later and cut the window by as much (a long hold
    or a backlog could close it before the last round). It is counted from the draw now."""
    from abci_app.x.inference.types import query_life_blocks
    from tests.protocol_harness import CHAIN_ID as HARNESS_CHAIN
    from wire.llmnet.query.v1 import query_pb2 as q

    chain = _block_one_query(tmp_path)
    chain.block()  # no seed: the draw waits a block
    chain.block()
    query = chain.status(1).query
    assert query.drawn_height == query.created_height + 2
    cheat = chain.key_of(query.respondents[0])
    params = chain.query("Params", q.ParamsRequest(), q.ParamsResponse).inference
    while chain.height < query.created_height + query_life_blocks(params) + params.evidence_max_age_blocks:
        chain.block()  # the next block is past the old limit, within the new one
    report = protocol.report_equivocation(chain.reporter, cheat.address, 1, 1, "A", protocol.sign_answer(
        cheat, HARNESS_CHAIN, 1, 1, "A"), "B", protocol.sign_answer(cheat, HARNESS_CHAIN, 1, 1, "B"))
    (result,) = chain.block(chain.tx(chain.reporter, report))
    assert result.code == 0, result.log
