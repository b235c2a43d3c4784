"""x/validators on the real state machine (DevChain plays CometBFT, applying updates two heights later):
bonded genesis, joining, leaving, the third-of-the-power bound, double-sign and downtime punishment."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from abci_app.crypto import address_bytes
from abci_app.x.validators import power
from abci_app.x.validators.types import key_proof_bytes
from llmnet.client.keys import Key
from llmnet.devchain import DevChain, seeded_key
from wire.llmnet.query.v1 import query_pb2 as q
from wire.llmnet.validators.v1 import validators_pb2 as pb
from wire.tendermint.abci import types_pb2 as abci

FUNDS = 10**12
BOND = 10_000_000  # 10 power each
PARAMS = {"unbonding_blocks": 5, "signed_blocks_window": 10, "min_signed_ppm": 500_000, "jail_blocks": 3}
ACTIVE, JAILED, UNBONDING, TOMBSTONED = (pb.VALIDATOR_STATUS_ACTIVE, pb.VALIDATOR_STATUS_JAILED,
                                         pb.VALIDATOR_STATUS_UNBONDING, pb.VALIDATOR_STATUS_TOMBSTONED)


def operators() -> list[Key]:
    return [seeded_key(f"operator{i}") for i in range(4)]


def bonded_chain(tmp_path: Path, params: dict[str, int] | None = None) -> DevChain:
    """The DevChain's four consensus keys, each bonded by its own operator in app_state."""
    ops = operators()
    joiner = seeded_key("joiner")
    pairs = enumerate(zip(ops, chain_keys(), strict=True))
    return DevChain(tmp_path / "v.db", ops + [joiner], FUNDS, app_state={"validators": {
        "params": {**PARAMS, **(params or {})},
        "validators": [{"operator": o.address, "pub_key": base64.b64encode(bytes(v.verify_key)).decode(),
                        "moniker": f"v{i}", "bond": str(BOND)} for i, (o, v) in pairs]}})


def create(chain: DevChain, operator: Key, key: SigningKey, moniker: str, bond: int) -> pb.MsgCreateValidator:
    """A MsgCreateValidator with the consensus key's proof that its holder asks."""
    proof = key.sign(key_proof_bytes(chain.chain_id, operator.address)).signature
    return pb.MsgCreateValidator(operator=operator.address, pub_key=bytes(key.verify_key), moniker=moniker,
                                 bond=bond, key_proof=proof)


def chain_keys() -> list[SigningKey]:
    return [SigningKey(hashlib.sha256(b"validator%d" % i).digest()) for i in range(4)]


def validators(chain: DevChain) -> dict[str, pb.Validator]:
    resp = chain.query("Validators", q.ValidatorsRequest(), q.ValidatorsResponse)
    return {v.moniker: v for v in resp.validators}


def moved(updates: list[abci.ValidatorUpdate], before: dict[bytes, int]) -> int:
    return sum(abs(u.power - before.get(address_bytes(u.pub_key.ed25519), 0)) for u in updates)


def test_bonded_genesis_is_handed_to_cometbft_and_bonds_leave_the_operators(tmp_path: Path) -> None:
    chain = bonded_chain(tmp_path)
    chain.ok()
    assert sorted(chain.set_at(1).values()) == [10, 10, 10, 10]
    vals = validators(chain)
    assert {v.power for v in vals.values()} == {10} and {v.status for v in vals.values()} == {ACTIVE}
    bal = chain.query("Balance", q.BalanceRequest(address=operators()[0].address), q.BalanceResponse)
    assert bal.amount == FUNDS - BOND


def test_a_new_validator_joins_in_steps_of_at_most_a_third_and_then_signs(tmp_path: Path) -> None:
    chain = bonded_chain(tmp_path)
    joiner, key = seeded_key("joiner"), SigningKey(hashlib.sha256(b"joiner-consensus").digest())
    big = 10 * BOND  # 100 power against 40: must arrive over several blocks
    chain.ok(chain.tx(joiner, create(chain, joiner, key, "joiner", big)))
    chain.validators.append(key)  # it can sign once CometBFT counts it
    told = dict(chain.set_at(chain.height + 1))
    steps = 0
    while validators(chain)["joiner"].power < 100:
        assert chain.last.validator_updates, "the joiner's power stopped short of its bond"
        assert 3 * moved(list(chain.last.validator_updates), told) <= sum(told.values())
        for u in chain.last.validator_updates:
            told[address_bytes(u.pub_key.ed25519)] = u.power
        chain.ok()
        steps += 1
    assert steps > 1
    address = address_bytes(bytes(key.verify_key))
    for _ in range(3):
        chain.ok()
    assert chain.set_at(chain.height)[address] == 100  # CometBFT's set, two heights on; beacons still verify


def test_an_original_validator_unbonds_leaves_the_set_and_gets_its_bond_back(tmp_path: Path) -> None:
    chain = bonded_chain(tmp_path)
    op = operators()[3]
    chain.ok(chain.tx(op, pb.MsgUnbondValidator(operator=op.address)))
    v = validators(chain)["v3"]
    assert v.status == UNBONDING and v.bond == 0 and v.unbonding == BOND and v.power == 0
    assert any(u.power == 0 for u in chain.last.validator_updates)
    for _ in range(PARAMS["unbonding_blocks"] + 1):  # counted from when CometBFT drops it (2 heights on)
        chain.ok()
    assert "v3" in validators(chain) and validators(chain)["v3"].unbonding == BOND
    chain.ok()
    assert "v3" not in validators(chain)
    assert address_bytes(bytes(chain_keys()[3].verify_key)) not in chain.set_at(chain.height)
    bal = chain.query("Balance", q.BalanceRequest(address=op.address), q.BalanceResponse)
    # its one fee went to the four validators that signed the block it was paid in, itself among them
    assert bal.amount == FUNDS - chain_fees(chain, op) + chain_fees(chain, op) // 4


def test_fees_go_to_the_operators_of_the_previous_height_s_validators_by_power(tmp_path: Path) -> None:
    """What a Cosmos operator expects of validating: the fees of a block's txs are shared, the next block, among
    the previous height's validators by power, every one the last commit lists: paying only those whose votes
    went in let a proposer leave an honest validator out and take its share."""
    from abci_app.crypto import format_address
    from abci_app.x.auth.types import FEE_COLLECTOR
    from llmnet.client.txbuilder import send_msg
    from llmnet.devchain import TX_FEE

    chain = bonded_chain(tmp_path)
    chain.ok()

    def balance(address: str) -> int:
        return int(chain.query("Balance", q.BalanceRequest(address=address), q.BalanceResponse).amount)

    ops, collector = [o.address for o in operators()], format_address(FEE_COLLECTOR)
    before, supply = [balance(a) for a in ops], chain.query("Supply", q.SupplyRequest(), q.SupplyResponse).amount
    joiner = seeded_key("joiner")
    chain.ok(chain.tx(joiner, send_msg(joiner.address, joiner.address, 1)))
    assert balance(collector) == TX_FEE
    chain.finalize([], signers=[0, 1, 2])  # v3's vote is left out by the proposer: it is paid all the same
    gained = [balance(a) - b for a, b in zip(ops, before, strict=True)]
    assert gained == [TX_FEE // 4] * 4
    assert balance(collector) == TX_FEE - 4 * (TX_FEE // 4)  # the division's remainder waits
    [shared] = [e for e in chain.last.events if e.type == "fees_distributed"]
    assert {a.key: a.value for a in shared.attributes}["amount"] == str(4 * (TX_FEE // 4))
    assert chain.query("Supply", q.SupplyRequest(), q.SupplyResponse).amount == supply


def test_fees_are_shared_by_the_power_each_validator_signed_with(tmp_path: Path) -> None:
    from llmnet.client.txbuilder import send_msg
    from llmnet.devchain import TX_FEE

    ops = operators()
    chain = DevChain(tmp_path / "p.db", ops, FUNDS, app_state={"validators": {"params": PARAMS, "validators": [
        {"operator": o.address, "pub_key": base64.b64encode(bytes(v.verify_key)).decode(), "moniker": f"v{i}",
         "bond": str(BOND * (i + 1))} for i, (o, v) in enumerate(zip(ops, chain_keys(), strict=True))]}})
    chain.ok()

    def balance(address: str) -> int:
        return int(chain.query("Balance", q.BalanceRequest(address=address), q.BalanceResponse).amount)

    before = [balance(o.address) for o in ops]
    chain.ok(chain.tx(ops[0], send_msg(ops[0].address, ops[0].address, 1), fee=2 * TX_FEE))
    chain.ok()
    gained = [balance(o.address) - b for o, b in zip(ops, before, strict=True)]
    gained[0] += TX_FEE  # what v0 paid: the minimum for its gas limit, not the double it offered
    assert gained == [TX_FEE // 10, 2 * TX_FEE // 10, 3 * TX_FEE // 10, 4 * TX_FEE // 10]  # powers 1:2:3:4


def test_a_share_nobody_may_take_is_set_apart_for_good(tmp_path: Path) -> None:
    """A plain `llmnetd init` chain: its genesis.json validators are fixed, with no account to pay. Left in the
    collector, their share piled up and the first account to bond took all of it."""
    from abci_app.crypto import format_address
    from abci_app.x.auth.types import FEE_COLLECTOR
    from abci_app.x.validators.types import UNCLAIMED_FEES
    from llmnet.client.txbuilder import send_msg
    from llmnet.devchain import TX_FEE

    sender = seeded_key("sender")
    chain = DevChain(tmp_path / "f.db", [sender], FUNDS)
    chain.ok()
    supply = chain.query("Supply", q.SupplyRequest(), q.SupplyResponse).amount
    chain.ok(chain.tx(sender, send_msg(sender.address, sender.address, 1)))
    chain.ok()

    def balance(raw: bytes) -> int:
        return int(chain.query("Balance", q.BalanceRequest(address=format_address(raw)), q.BalanceResponse).amount)

    assert balance(FEE_COLLECTOR) < len(chain.validators) and balance(UNCLAIMED_FEES) > TX_FEE - len(chain.validators)
    assert chain.query("Supply", q.SupplyRequest(), q.SupplyResponse).amount == supply


def chain_fees(chain: DevChain, key: Key) -> int:
    from llmnet.devchain import TX_FEE  # noqa: PLC0415
    return TX_FEE * chain.sequences.get(key.address, 0)


@pytest.mark.parametrize(("msg", "signer", "error"), [
    (lambda o, j: pb.MsgCreateValidator(operator=o[0].address, pub_key=b"\x01" * 32, moniker="x", bond=BOND), 0,
     "already operates"),
    (lambda o, j: pb.MsgCreateValidator(operator=j.address, pub_key=bytes(chain_keys()[0].verify_key), moniker="x",
                                        bond=BOND), "j", "already a validator"),
    (lambda o, j: pb.MsgCreateValidator(operator=j.address, pub_key=b"\x02" * 32, moniker="x", bond=BOND - 1), "j",
     "below the minimum"),
    (lambda o, j: pb.MsgCreateValidator(operator=j.address, pub_key=b"\x02" * 31, moniker="x", bond=BOND), "j",
     "32-byte"),
    (lambda o, j: pb.MsgUnbondValidator(operator=o[0].address, amount=BOND // 2), 0, "must leave at least"),
    (lambda o, j: pb.MsgUnbondValidator(operator=j.address), "j", "operates no validator"),
    (lambda o, j: pb.MsgUnjailValidator(operator=o[0].address), 0, "not jailed"),
    (lambda o, j: pb.MsgEditValidator(operator=o[0].address, moniker=""), 0, "moniker"),
])
def test_rejections_have_stable_codes_and_readable_logs(tmp_path: Path, msg, signer, error) -> None:  # type: ignore[no-untyped-def]
    chain = bonded_chain(tmp_path)
    joiner = seeded_key("joiner")
    key = joiner if signer == "j" else operators()[signer]
    result = chain.block(chain.tx(key, msg(operators(), joiner)))[0]
    assert result.code and result.codespace in ("validators", "sdk") and error in result.log


def test_someone_else_cannot_unbond_or_edit_a_validator(tmp_path: Path) -> None:
    chain = bonded_chain(tmp_path)
    thief = seeded_key("joiner")
    result = chain.block(chain.tx(thief, pb.MsgUnbondValidator(operator=operators()[0].address)))[0]
    assert result.code and "sign" in result.log
    assert validators(chain)["v0"].status == ACTIVE


def test_a_double_signer_is_slashed_tombstoned_and_removed_once(tmp_path: Path) -> None:
    chain = bonded_chain(tmp_path)
    culprit = address_bytes(bytes(chain_keys()[2].verify_key))
    evidence = abci.Misbehavior(type=abci.DUPLICATE_VOTE, validator=abci.Validator(address=culprit, power=10),
                                height=1, total_voting_power=40)
    chain.ok()
    chain.finalize([], misbehavior=[evidence, evidence])
    v = validators(chain)["v2"]
    slashed = BOND * 50_000 // 1_000_000
    assert v.status == TOMBSTONED and v.slashed == slashed and v.power == 0
    chain.finalize([], misbehavior=[evidence])  # the same offence again changes nothing
    assert validators(chain)["v2"].slashed == slashed
    unknown = abci.Misbehavior(type=abci.DUPLICATE_VOTE, validator=abci.Validator(address=b"\x09" * 20, power=1),
                               height=1)
    chain.finalize([], misbehavior=[unknown])  # evidence about nobody is ignored
    for _ in range(3):
        chain.ok()
    assert culprit not in chain.set_at(chain.height)
    op = operators()[2]
    result = chain.block(chain.tx(op, pb.MsgBondValidator(operator=op.address, amount=BOND)))[0]
    assert result.code and "TOMBSTONED" in result.log


def test_unbonding_right_after_double_signing_does_not_escape_the_slash(tmp_path: Path) -> None:
    chain = bonded_chain(tmp_path)
    for _ in range(3):
        chain.ok()
    offence = chain.height
    op = operators()[1]
    chain.ok(chain.tx(op, pb.MsgUnbondValidator(operator=op.address)))  # runs before the evidence lands
    culprit = address_bytes(bytes(chain_keys()[1].verify_key))
    chain.finalize([], misbehavior=[abci.Misbehavior(type=abci.DUPLICATE_VOTE, height=offence,
                                                     validator=abci.Validator(address=culprit, power=10))])
    v = validators(chain)["v1"]
    cut = BOND * 50_000 // 1_000_000
    assert v.status == TOMBSTONED and v.slashed == cut and v.unbonding == BOND - cut
    supply = chain.query("Supply", q.SupplyRequest(), q.SupplyResponse).amount
    for _ in range(PARAMS["unbonding_blocks"] + 1):
        chain.ok()
    bal = chain.query("Balance", q.BalanceRequest(address=op.address), q.BalanceResponse)
    assert bal.amount == FUNDS - cut - chain_fees(chain, op)
    assert chain.query("Supply", q.SupplyRequest(), q.SupplyResponse).amount == supply


def test_a_validator_that_misses_too_many_blocks_is_jailed_and_can_come_back(tmp_path: Path) -> None:
    chain = bonded_chain(tmp_path)
    for _ in range(PARAMS["signed_blocks_window"] + 2):
        chain.finalize([], signers=[0, 1, 2])  # v3 is offline
    v = validators(chain)["v3"]
    assert v.status == JAILED and v.power == 0 and v.slashed == BOND * 10_000 // 1_000_000
    op = operators()[3]
    early = chain.block(chain.tx(op, pb.MsgUnjailValidator(operator=op.address)))[0]
    if chain.height < v.jailed_until:
        assert early.code and "jailed until" in early.log
        while chain.height < v.jailed_until:
            chain.ok()
    low = chain.block(chain.tx(op, pb.MsgUnjailValidator(operator=op.address)))[0]
    assert low.code and "below the minimum" in low.log  # the slash took it under min_bond
    chain.ok(chain.tx(op, pb.MsgBondValidator(operator=op.address, amount=BOND)))
    chain.ok(chain.tx(op, pb.MsgUnjailValidator(operator=op.address)))
    for _ in range(4):
        chain.ok()
    assert validators(chain)["v3"].status == ACTIVE and validators(chain)["v3"].power > 0


def test_a_block_every_validator_signed_writes_nothing(tmp_path: Path) -> None:
    """Liveness was a record rewritten for every validator every block, so the app hash changed every block and
    CometBFT, which makes a block whenever the app hash changed (create_empty_blocks = false), never paused
    between txs: an idle localnet kept a core busy. A signed height now writes nothing."""
    chain = bonded_chain(tmp_path)
    for _ in range(3):
        chain.ok()  # every validator observed once: its record written
    hashes = {chain.finalize([]).app_hash for _ in range(5)}
    assert len(hashes) == 1
    chain.finalize([], signers=[0, 1, 2])
    assert chain.finalize([]).app_hash not in hashes  # a miss is a write


def test_misses_count_only_while_they_are_in_the_window(tmp_path: Path) -> None:
    """Window 10, at most 5 misses: five misses, then ten signed heights (they leave the window), then five
    misses again is no jailing; the sixth in ten heights is. The query shows the count as of the last miss: a
    count kept, so that a query costs one read however many misses a window holds."""
    chain = bonded_chain(tmp_path)
    window = PARAMS["signed_blocks_window"]
    for _ in range(window):
        chain.ok()
    operator = operators()[3].address

    def missed() -> int:
        return chain.query("Validator", q.ValidatorRequest(address=operator), q.ValidatorResponse).signing.missed

    for _ in range(5):
        chain.finalize([], signers=[0, 1, 2])
    assert missed() == 5
    for _ in range(window):
        chain.ok()
    assert missed() == 5 and validators(chain)["v3"].status == ACTIVE  # the count as of its last miss
    for _ in range(5):
        chain.finalize([], signers=[0, 1, 2])
    assert validators(chain)["v3"].status == ACTIVE and missed() == 5  # the first five left the window
    chain.finalize([], signers=[0, 1, 2])
    assert validators(chain)["v3"].status == JAILED


def test_signers_are_not_jailed_and_nil_votes_count_as_present(tmp_path: Path) -> None:
    chain = bonded_chain(tmp_path)
    for _ in range(3 * PARAMS["signed_blocks_window"]):
        chain.ok()
    assert {v.status for v in validators(chain).values()} == {ACTIVE}


def test_fixed_genesis_validators_keep_their_power(tmp_path: Path) -> None:
    chain = DevChain(tmp_path / "f.db", [], 0)
    for _ in range(15):
        chain.finalize([], signers=[0, 1, 2])
    vals = chain.query("Validators", q.ValidatorsRequest(), q.ValidatorsResponse)
    assert [v.power for v in vals.validators] == [10, 10, 10, 10] and vals.total_power == 40
    assert all(not v.operator for v in vals.validators)


def test_the_validator_query_takes_either_address(tmp_path: Path) -> None:
    chain = bonded_chain(tmp_path)
    chain.ok()
    by_op = chain.query("Validator", q.ValidatorRequest(address=operators()[1].address), q.ValidatorResponse)
    by_cons = chain.query("Validator", q.ValidatorRequest(address=by_op.validator.address.hex()), q.ValidatorResponse)
    assert by_op.validator == by_cons.validator and by_op.validator.moniker == "v1"
    with pytest.raises(AssertionError, match="operates no validator"):
        chain.query("Validator", q.ValidatorRequest(address=seeded_key("joiner").address), q.ValidatorResponse)
    with pytest.raises(AssertionError, match="address"):
        chain.query("Validator", q.ValidatorRequest(address="nonsense"), q.ValidatorResponse)
    op = operators()[2]
    chain.ok(chain.tx(op, pb.MsgUnbondValidator(operator=op.address)))
    every = chain.query("Validators", q.ValidatorsRequest(), q.ValidatorsResponse)
    in_set = chain.query("Validators", q.ValidatorsRequest(in_set_only=True), q.ValidatorsResponse)
    assert len(every.validators) == 4 and sorted(v.moniker for v in in_set.validators) == ["v0", "v1", "v3"]
    first = chain.query("Validators", q.ValidatorsRequest(limit=2), q.ValidatorsResponse)
    rest = chain.query("Validators", q.ValidatorsRequest(limit=2, cursor=first.next_cursor), q.ValidatorsResponse)
    assert first.next_cursor and not rest.next_cursor
    assert {v.moniker for v in [*first.validators, *rest.validators]} == {"v0", "v1", "v2", "v3"}


def test_two_apps_fed_the_same_blocks_agree(tmp_path: Path) -> None:
    hashes = []
    for name in ("a", "b"):
        chain = bonded_chain(tmp_path / name if (tmp_path / name).mkdir() is None else tmp_path)
        joiner = seeded_key("joiner")
        chain.ok(chain.tx(joiner, create(chain, joiner, SigningKey(b"\x07" * 32), "j", BOND)))
        for _ in range(4):
            chain.finalize([], signers=[0, 1, 2, 3])
        hashes.append(chain.app.committed.app_hash)
    assert hashes[0] == hashes[1]


powers = st.dictionaries(st.binary(min_size=1, max_size=2), st.integers(0, 1000), max_size=8)


@settings(max_examples=300, deadline=None)
@given(current=powers, wanted=powers)
def test_one_step_never_moves_more_than_a_third_and_always_approaches(current: dict[bytes, int],
                                                                     wanted: dict[bytes, int]) -> None:
    current = {a: p for a, p in current.items() if p}
    wanted = {a: p for a, p in wanted.items() if p}
    changes = power.step(current, wanted)
    total = sum(current.values())
    assert 3 * sum(abs(p - current.get(a, 0)) for a, p in changes.items()) <= total
    for a, p in changes.items():  # every change goes toward the target, never past it
        target, now = wanted.get(a, 0), current.get(a, 0)
        assert min(now, target) <= p <= max(now, target) and p != now
    rises = any(p > current.get(a, 0) for a, p in wanted.items())
    if total >= 3 and current != wanted and (rises or total > power.MIN_TOTAL):
        assert changes  # progress whenever a third of the power is at least 1 (cuts stop at MIN_TOTAL)
