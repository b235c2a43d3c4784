"""Attacks on x/validators, each performed against the real state machine (DevChain plays CometBFT).

Found by a review: a set that froze when all its members left at once, bonds paid back while CometBFT still
counted the power they backed, unbonding around the offence to dodge the double-sign slash, a full slash that
halted the chain, someone else's consensus key bonded first, old evidence punishing a key's new owner, and
genesis params or sets the module could not survive."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from abci_app.app import Application
from abci_app.crypto import address_bytes
from abci_app.x.validators import power
from abci_app.x.validators.types import check_params, default_params
from llmnet.devchain import DevChain, seeded_key
from tests.test_validators import (
    ACTIVE,
    BOND,
    FUNDS,
    PARAMS,
    TOMBSTONED,
    bonded_chain,
    chain_keys,
    create,
    operators,
    validators,
)
from wire.llmnet.query.v1 import query_pb2 as q
from wire.llmnet.validators.v1 import validators_pb2 as pb
from wire.tendermint.abci import types_pb2 as abci
from wire.tendermint.types import params_pb2


def evidence(key: SigningKey, height: int) -> abci.Misbehavior:
    return abci.Misbehavior(type=abci.DUPLICATE_VOTE, height=height,
                            validator=abci.Validator(address=address_bytes(bytes(key.verify_key)), power=10))


def test_a_set_whose_members_all_leave_hands_over_to_the_newcomer(tmp_path: Path) -> None:
    current, wanted = {b"old": 10}, {b"new": 10}
    for _ in range(50):
        for a, p in power.step(current, wanted).items():
            current[a] = p
            current = {k: v for k, v in current.items() if v}
    assert current == wanted
    chain = bonded_chain(tmp_path)
    joiner, key = seeded_key("joiner"), SigningKey(hashlib.sha256(b"joiner-consensus").digest())
    chain.ok(*[chain.tx(op, pb.MsgUnbondValidator(operator=op.address)) for op in operators()],
             chain.tx(joiner, create(chain, joiner, key, "joiner", BOND)))
    chain.validators.append(key)
    for _ in range(40):
        chain.ok()
    assert validators(chain)["joiner"].power == 10
    assert chain.set_at(chain.height) == {address_bytes(bytes(key.verify_key)): 10}


def test_a_bond_is_not_paid_back_while_cometbft_counts_its_power(tmp_path: Path) -> None:
    chain = bonded_chain(tmp_path)
    joiner, key = seeded_key("joiner"), SigningKey(hashlib.sha256(b"joiner-consensus").digest())
    chain.ok(chain.tx(joiner, create(chain, joiner, key, "joiner", 100 * BOND)))
    chain.validators.append(key)
    for _ in range(40):
        chain.ok()
    assert validators(chain)["joiner"].power == 1000  # 1000 of 1040: leaving takes many blocks of cuts
    chain.ok(chain.tx(joiner, pb.MsgUnbondValidator(operator=joiner.address)))
    address = address_bytes(bytes(key.verify_key))
    for _ in range(60):
        chain.ok()
        paid = chain.query("Balance", q.BalanceRequest(address=joiner.address), q.BalanceResponse).amount
        if paid > FUNDS - 100 * BOND:
            assert address not in chain.set_at(chain.height + 1)
            return
    raise AssertionError("the bond was never paid back")


@pytest.mark.parametrize("offence_after_unbond", [0, 1])
def test_unbonding_just_before_the_offence_does_not_dodge_the_slash(tmp_path: Path, offence_after_unbond: int) -> None:
    chain = bonded_chain(tmp_path)
    for _ in range(3):
        chain.ok()
    op = operators()[1]
    chain.ok(chain.tx(op, pb.MsgUnbondValidator(operator=op.address)))
    offence = chain.height + offence_after_unbond
    assert chain.set_at(offence)[address_bytes(bytes(chain_keys()[1].verify_key))] == 10
    chain.ok()
    chain.finalize([], misbehavior=[evidence(chain_keys()[1], offence)])
    v = validators(chain)["v1"]
    assert v.status == TOMBSTONED and v.slashed == BOND * 50_000 // 1_000_000


def test_a_whole_bond_slashed_does_not_halt_the_chain(tmp_path: Path) -> None:
    chain = bonded_chain(tmp_path, {"double_sign_slash_ppm": 1_000_000})
    chain.ok()
    offence = chain.height
    op = operators()[1]
    chain.ok(chain.tx(op, pb.MsgUnbondValidator(operator=op.address)))
    chain.finalize([], misbehavior=[evidence(chain_keys()[1], offence)])
    for _ in range(PARAMS["unbonding_blocks"] + 4):
        chain.ok()
    assert validators(chain)["v1"].slashed == BOND and validators(chain)["v1"].unbonding == 0


def test_nobody_can_bond_a_consensus_key_they_do_not_hold(tmp_path: Path) -> None:
    chain = bonded_chain(tmp_path)
    owner_key = SigningKey(hashlib.sha256(b"owner-node").digest())
    squatter = seeded_key("joiner")
    stolen = create(chain, squatter, owner_key, "squat", BOND)
    stolen.key_proof = b"\x00" * 64
    replayed = create(chain, operators()[0], owner_key, "mine", BOND)  # a proof made for another operator
    replayed.operator = squatter.address
    for msg in (stolen, replayed):
        result = chain.block(chain.tx(squatter, msg))[0]
        assert result.code and "key_proof" in result.log
    assert "squat" not in validators(chain) and "mine" not in validators(chain)


def test_old_evidence_does_not_punish_a_key_bonded_since(tmp_path: Path) -> None:
    chain = bonded_chain(tmp_path)
    chain.ok()
    offence = chain.height
    op = operators()[3]
    chain.ok(chain.tx(op, pb.MsgUnbondValidator(operator=op.address)))
    for _ in range(PARAMS["unbonding_blocks"] + 4):
        chain.ok()
    assert "v3" not in validators(chain)
    newcomer = seeded_key("joiner")
    chain.ok(chain.tx(newcomer, create(chain, newcomer, chain_keys()[3], "new", BOND)))
    chain.finalize([], misbehavior=[evidence(chain_keys()[3], offence)])
    v = validators(chain)["new"]
    assert v.status == ACTIVE and v.slashed == 0


def init_chain(tmp_path: Path, app_state: str, evidence_age: int = 0, validators: int = 4,
               evidence_seconds: int = 0) -> None:
    params = params_pb2.ConsensusParams()
    params.evidence.max_age_num_blocks = evidence_age
    params.evidence.max_age_duration.seconds = evidence_seconds
    keys = [SigningKey(bytes([i + 1]) * 32) for i in range(validators)]
    Application(tmp_path / "g.db").init_chain(abci.RequestInitChain(
        chain_id="g", app_state_bytes=app_state.encode(), initial_height=1, consensus_params=params,
        validators=[abci.ValidatorUpdate(pub_key={"ed25519": bytes(k.verify_key)}, power=10) for k in keys]))


def test_genesis_refuses_evidence_that_outlives_the_unbonding(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_age_num_blocks"):
        init_chain(tmp_path, '{"validators": {"params": {"unbonding_blocks": 50}}}', evidence_age=100)


def test_genesis_refuses_evidence_kept_by_time_past_the_unbonding(tmp_path: Path) -> None:
    """CometBFT expires evidence only once both its ages pass: with CometBFT's default 48 h, a double-signer on
    a chain of fast blocks would unbond, be paid back, and meet its evidence with nothing left to slash."""
    with pytest.raises(ValueError, match="max_age_duration"):
        init_chain(tmp_path, '{"validators": {"params": {"unbonding_blocks": 50}}}', evidence_age=50,
                   evidence_seconds=48 * 3600)
    init_chain(tmp_path, '{"validators": {"params": {"unbonding_blocks": 50}}}', evidence_age=50, evidence_seconds=1)


def test_genesis_refuses_a_liveness_window_no_block_could_write() -> None:
    """When every block rewrote each validator's bitmap of signed_blocks_window bits, a 2^40 window stopped every
    node at block 1 (MemoryError), and 2^28 wrote 128 MiB a block. The bound stays: a jailing deletes up to a
    window's missed heights in one block."""
    p = default_params()
    p.signed_blocks_window = 1 << 28
    with pytest.raises(ValueError, match="signed_blocks_window must be at most"):
        check_params(p)
    p.signed_blocks_window = 100_000
    check_params(p)


def test_genesis_refuses_more_fixed_validators_than_it_would_seat(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_validators"):
        init_chain(tmp_path, '{"validators": {"params": {"max_validators": 2}}}')


@pytest.mark.parametrize("field", ["unbonding_blocks", "jail_blocks", "signed_blocks_window"])
def test_genesis_refuses_heights_that_would_overflow(field: str) -> None:
    p = default_params()
    setattr(p, field, (1 << 63) - 1)
    with pytest.raises(ValueError, match=field):
        check_params(p)


def test_genesis_refuses_a_power_reduction_cometbft_could_not_sum() -> None:
    p = default_params()
    p.power_reduction = p.min_bond = 1
    with pytest.raises(ValueError, match="MaxTotalVotingPower"):
        check_params(p)


def test_fixed_validators_are_all_seated(tmp_path: Path) -> None:
    chain = DevChain(tmp_path / "f.db", [], 0)
    chain.ok()
    resp = chain.query("Validators", q.ValidatorsRequest(), q.ValidatorsResponse)
    assert {v.address: v.power for v in resp.validators} == chain.set_at(1)


@pytest.mark.parametrize("name, ok", [("node-1", True), ("n\u0153ud \u00e9toile", True), ("node-\U00011f00", True),
                                      ("node\n2", False), ("node\u200b", False), ("\u202enode", False),
                                      ("node\x85", False), ("node\u00a0A", False), ("node\U000e0041", False),
                                      ("node\ue000", False)])
def test_a_validator_name_is_judged_alike_on_every_python(name: str, ok: bool) -> None:
    """str.isprintable follows the interpreter's Unicode tables: U+11F00 (new in Unicode 15) was refused by
    Python 3.11 and accepted by 3.12, so nodes on the two split on one MsgCreateValidator. A literal table
    decides now: controls, spaces other than " ", invisible formatting, bidirectional overrides, tag and
    private-use characters are refused everywhere (on Python 3.11 exactly the assigned characters
    isprintable refuses)."""
    from abci_app.x.validators.types import ErrInvalidValidator, check_description

    if ok:
        check_description(name, name)
    else:
        with pytest.raises(ErrInvalidValidator, match="printable"):
            check_description(name, "")
        with pytest.raises(ErrInvalidValidator, match="printable"):
            check_description("node", name)


@pytest.mark.parametrize("section, reason", [
    ('{"auth": {"params": {"max_block_gas": "18446744073709551615"}}}', "max_block_gas"),  # "unlimited"
    ('{"inference": {"params": {"max_answer_bytes": "5"}}}', "max_answer_bytes"),
])
def test_genesis_refuses_limits_the_chain_could_not_live_with(tmp_path: Path, section: str, reason: str) -> None:
    """A block gas limit past int64 lets a tx's gas used overflow ABCI's result (every node stops on it); an
    answer limit too small for any answer makes every drawn expert miss."""
    with pytest.raises(ValueError, match=reason):
        init_chain(tmp_path, section)
