"""Random validator traffic on the real state machine (DevChain applies updates as CometBFT does): creates, bonds,
unbonds, unjails, double-sign evidence and validators going offline, with every invariant checked after each
block: CometBFT would accept the updates (no unknown removals, no duplicates, a non-empty set within its power
limit), the module pools hold exactly what the records say, the set the app has told equals CometBFT's set two
heights on, and the beacon judges each block against CometBFT's set of the previous height."""

from __future__ import annotations

import base64
import hashlib
import random
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from abci_app.context import BlockEnv, Ctx
from abci_app.crypto import address_bytes
from abci_app.store.state import State
from abci_app.x.validators.types import BONDED_POOL, STORE, UNBONDING_POOL, VALIDATOR_PREFIX
from llmnet.devchain import DevChain, seeded_key
from tests.test_validators import create
from wire.llmnet.validators.v1 import validators_pb2 as pb
from wire.tendermint.abci import types_pb2 as abci

MAX_TOTAL = ((1 << 63) - 1) // 8
BOND = 10_000_000
FUNDS = 10**13


@pytest.mark.parametrize("seed", range(8))
def test_random_validator_traffic_keeps_every_invariant(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    ops = [seeded_key(f"operator{i}") for i in range(10)]
    base = [SigningKey(hashlib.sha256(b"validator%d" % i).digest()) for i in range(4)]
    chain = DevChain(tmp_path / "r.db", ops, FUNDS, app_state={"validators": {
        "params": {"unbonding_blocks": rng.choice([1, 2, 5]), "signed_blocks_window": 6, "min_signed_ppm": 500_000,
                   "jail_blocks": rng.choice([0, 2]), "max_validators": rng.choice([3, 5, 100])},
        "validators": [{"operator": ops[i].address, "pub_key": base64.b64encode(bytes(base[i].verify_key)).decode(),
                        "bond": str(BOND * (i + 1))} for i in range(4)]}})
    keys = {address_bytes(bytes(k.verify_key)): k for k in base}
    pool = [SigningKey(hashlib.sha256(b"extra%d" % i).digest()) for i in range(8)]
    chain.validators.extend(pool)
    for k in pool:
        keys[address_bytes(bytes(k.verify_key))] = k
    allkeys = list(keys)
    for _ in range(200):
        txs = []
        for _ in range(rng.randint(0, 3)):
            op = rng.choice(ops)
            kind = rng.random()
            if kind < 0.3:
                k = rng.choice(pool + base)
                txs.append(chain.tx(op, create(chain, op, k, "m", BOND * rng.randint(1, 8))))
            elif kind < 0.5:
                txs.append(chain.tx(op, pb.MsgBondValidator(operator=op.address, amount=BOND * rng.randint(1, 5))))
            elif kind < 0.75:
                txs.append(chain.tx(op, pb.MsgUnbondValidator(operator=op.address,
                                                              amount=rng.choice([0, BOND, 2 * BOND]))))
            else:
                txs.append(chain.tx(op, pb.MsgUnjailValidator(operator=op.address)))
        misbehavior = []
        if rng.random() < 0.01 and chain.height > 2:
            a = rng.choice(allkeys)
            misbehavior.append(abci.Misbehavior(type=abci.DUPLICATE_VOTE, height=rng.randint(1, chain.height),
                                                validator=abci.Validator(address=a, power=1)))
        # somebody small goes offline sometimes; keep > 2/3 of the power signing
        members = chain.set_at(chain.height)
        total = sum(members.values())
        signers = []
        budget = total // 3 - 1
        for i, k in enumerate(chain.validators):
            a = address_bytes(bytes(k.verify_key))
            if a in members and rng.random() < 0.15 and members[a] <= budget:
                budget -= members[a]
                continue
            signers.append(i)
        before = dict(chain.set_at(chain.height + 2))  # NextValidators of the block being finalized
        resp = chain.finalize(txs, signers=signers, misbehavior=misbehavior)
        # 1. CometBFT would accept the updates
        seen = set()
        after = dict(before)
        for u in resp.validator_updates:
            a = address_bytes(u.pub_key.ed25519)
            assert a not in seen, "duplicate update"
            seen.add(a)
            assert u.power >= 0
            if u.power == 0:
                assert a in before, f"removing {a.hex()} which CometBFT does not have"
                del after[a]
            else:
                after[a] = u.power
        assert after, "empty validator set"
        assert sum(after.values()) <= MAX_TOTAL
        # 2. pools match records; 3. told set == CometBFT's set two heights on; 4. beacon's set == CometBFT's
        st = State(chain.app.committed)
        ctx = Ctx(st, BlockEnv(chain_id=chain.chain_id, height=chain.height + 1, time_ns=0, seed=b""))
        recs = [pb.Validator.FromString(v) for _, v in ctx.kv(STORE).iterate(VALIDATOR_PREFIX)]
        bank = chain.app.bank
        assert bank.balance(ctx, BONDED_POOL) == sum(v.bond for v in recs), "bonded pool != sum of bonds"
        assert bank.balance(ctx, UNBONDING_POOL) == sum(v.unbonding for v in recs), "unbonding pool != records"
        told = {v.address: v.power for v in recs if v.power}
        assert told == chain._sets[chain.height + 2], "app's told set != CometBFT's"
        beacon = {a: k.power for a, k in chain.app.beacon.validators(ctx).items()}
        assert beacon == chain.set_at(chain.height), "beacon set != CometBFT's set of the last height"

