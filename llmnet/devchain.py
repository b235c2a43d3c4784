"""An in-process chain (the real state machine, no network) for simulations and tests.

It plays CometBFT's part: one FinalizeBlock and Commit per block, block hashes and times derived
from the height, so a run is repeatable. Like a real network with vote extensions on, it has consensus
validators (seeded keys) and starts every block after the first with the beacon their extension
signatures make, signed over the same bytes CometBFT signs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from nacl.signing import SigningKey

from abci_app.app import Application
from abci_app.crypto import address_bytes
from abci_app.queries import QUERY_SERVICE
from abci_app.x.beacon.keeper import extension_sign_bytes
from abci_app.x.beacon.types import encode_tx as encode_beacon
from abci_app.x.beacon.types import extension_at, from_last_commit
from llmnet.client.events import query_ids
from llmnet.client.keys import Key
from llmnet.client.txbuilder import build_tx
from wire.llmnet.query.v1 import query_pb2 as q
from wire.tendermint.abci import types_pb2 as abci
from wire.tendermint.crypto import keys_pb2
from wire.tendermint.types import params_pb2 as abci_params

CHAIN_ID = "devchain"
TX_FEE = 5_000
TX_GAS = 500_000
VALIDATORS = 4


def seeded_key(name: str) -> Key:
    """A key derived from its name alone, so runs repeat. Never hold real funds with one."""
    return Key(name, hashlib.sha256(name.encode()).digest())


class DevChain:
    def __init__(self, db: Path, funded: list[Key], funds: int, app_state: dict[str, Any] | None = None,
                 chain_id: str = CHAIN_ID) -> None:
        genesis = dict(app_state or {})
        genesis["bank"] = {"balances": [{"address": k.address, "amount": str(funds)} for k in funded]}
        self.chain_id = chain_id
        self.keys = list(funded)
        self.app = Application(db)
        self.validators = [SigningKey(hashlib.sha256(b"validator%d" % i).digest()) for i in range(VALIDATORS)]
        params = abci_params.ConsensusParams()
        params.abci.vote_extensions_enable_height = 1
        given = [abci.ValidatorUpdate(pub_key=keys_pb2.PublicKey(ed25519=bytes(v.verify_key)), power=10)
                 for v in self.validators]
        resp = self.app.init_chain(abci.RequestInitChain(
            chain_id=chain_id, app_state_bytes=json.dumps(genesis).encode(), initial_height=1,
            time=Timestamp(seconds=1_700_000_000), consensus_params=params, validators=given))
        first = {address_bytes(u.pub_key.ed25519): u.power for u in (resp.validators or given)}
        self._sets: dict[int, dict[bytes, int]] = {1: first, 2: dict(first)}
        """The consensus set signing each height, as CometBFT keeps it: block H's updates count from H+2."""
        self.height = 0
        self.sequences: dict[str, int] = {}
        self.last: abci.ResponseFinalizeBlock = abci.ResponseFinalizeBlock()

    def tx(self, key: Key, *msgs: Message, fee: int = TX_FEE, gas_limit: int = TX_GAS) -> bytes:
        """Sign msgs with key's next sequence (assumes the tx will pass the ante checks)."""
        seq = self.sequences.get(key.address, 0)
        self.sequences[key.address] = seq + 1
        return build_tx(key, self.chain_id, seq, list(msgs), fee=fee, gas_limit=gas_limit)

    def set_at(self, height: int) -> dict[bytes, int]:
        """address -> power of the validators signing `height`."""
        return self._sets[max(h for h in self._sets if h <= max(height, 1))]

    def _members(self, height: int, signers: list[int] | None) -> list[tuple[SigningKey, int, bool]]:
        """(key, power, signed) of each validator of `height` (signers: indices into self.validators)."""
        members = self.set_at(height)
        return [(v, members[a], signers is None or i in signers) for i, v in enumerate(self.validators)
                if (a := address_bytes(bytes(v.verify_key))) in members]

    def beacon_key(self, validator: SigningKey) -> bytes:
        """The beacon key the node of one of the chain's validators keeps (here derived from its key)."""
        return hashlib.sha256(b"devchain-beacon-key" + bytes(validator)).digest()

    def extension(self, validator: SigningKey, height: int, round_: int = 0) -> tuple[bytes, bytes]:
        """(vote extension, its signature) a validator makes at height, as its app and CometBFT would."""
        extension = extension_at(self.beacon_key(validator), self.chain_id, height)
        return extension, validator.sign(extension_sign_bytes(self.chain_id, height, round_, extension)).signature

    def beacon(self, height: int, signers: list[int] | None = None) -> bytes:
        """The beacon tx a proposer of `height` makes from its validators' extensions on height - 1."""
        votes = [(address_bytes(bytes(v.verify_key)), *self.extension(v, height - 1))
                 for v, _, signed in self._members(height - 1, signers) if signed]
        return encode_beacon(from_last_commit(votes, height - 1, 0))

    def extended_commit(self, garbage: frozenset[int] = frozenset(), round_: int = 0) -> abci.ExtendedCommitInfo:
        """The last height's extended commit as CometBFT hands it to the next proposer; validators (indices)
        in `garbage` carry an extension signature this app does not accept."""
        votes = []
        for i, v in enumerate(self.validators):
            power = self.set_at(self.height).get(address_bytes(bytes(v.verify_key)))
            if power is None:
                continue
            extension, signature = self.extension(v, self.height, round_)
            votes.append(abci.ExtendedVoteInfo(
                validator=abci.Validator(address=address_bytes(bytes(v.verify_key)), power=power),
                vote_extension=extension, extension_signature=bytes(64) if i in garbage else signature,
                block_id_flag=2))
        return abci.ExtendedCommitInfo(round=round_, votes=votes)

    def last_commit(self, signers: list[int] | None = None, block: int | None = None) -> abci.CommitInfo:
        """The previous height's commit as CometBFT reports it in a block (default the next one): round 0,
        `signers` precommitted (default all)."""
        block = self.height + 1 if block is None else block
        return abci.CommitInfo(round=0, votes=[
            abci.VoteInfo(validator=abci.Validator(address=address_bytes(bytes(v.verify_key)), power=power),
                          block_id_flag=2 if signed else 1)
            for v, power, signed in self._members(block - 1, signers)])

    def finalize(self, txs: list[bytes], signers: list[int] | None = None,
                 misbehavior: list[abci.Misbehavior] | None = None) -> abci.ResponseFinalizeBlock:
        """One block: the beacon (of `signers`' extensions, default all), then txs; FinalizeBlock then
        Commit, with a hash and time derived from the height. The beacon's own result is left out of
        the response, so results line up with txs. Validator updates count from two heights on."""
        self.height += 1
        beacon = [self.beacon(self.height, signers)] if self.height > 1 else []
        self.last = self.app.finalize_block(abci.RequestFinalizeBlock(
            txs=beacon + txs, height=self.height, hash=hashlib.sha256(b"block%d" % self.height).digest(),
            time=Timestamp(seconds=1_700_000_000 + self.height),
            decided_last_commit=self.last_commit(signers, self.height), misbehavior=misbehavior or []))
        del self.last.tx_results[:len(beacon)]
        self.app.commit(abci.RequestCommit())
        following = dict(self.set_at(self.height + 1))
        for update in self.last.validator_updates:
            address = address_bytes(update.pub_key.ed25519)
            if update.power:
                following[address] = update.power
            else:
                following.pop(address, None)
        self._sets[self.height + 2] = following
        return self.last

    def block(self, *txs: bytes) -> list[abci.ExecTxResult]:
        return list(self.finalize(list(txs)).tx_results)

    def ok(self, *txs: bytes) -> list[abci.ExecTxResult]:
        results = self.block(*txs)
        failed = [r.log for r in results if r.code]
        if failed:
            raise AssertionError(f"txs failed: {failed}")
        return results

    def query(self, method: str, request: Message, response: type[Message]) -> Any:
        resp = self.app.query(abci.RequestQuery(path=f"/{QUERY_SERVICE}/{method}", data=request.SerializeToString()))
        if resp.code:
            raise AssertionError(resp.log)
        return response.FromString(resp.value)

    def status(self, query_id: int) -> q.QueryStatusResponse:
        return self.query("QueryStatus", q.QueryStatusRequest(query_id=query_id), q.QueryStatusResponse)

    def advance_until(self, query_id: int, phase: int, round_: int | None = None, limit: int = 20) -> None:
        """Empty blocks until the query reaches phase (and round)."""
        for _ in range(limit):
            st = self.status(query_id).query
            if st.phase == phase and (round_ is None or st.round == round_):
                return
            self.block()
        raise AssertionError(f"query {query_id} never reached phase {phase}")

    def key_of(self, address: str) -> Key:
        return next(k for k in self.keys if k.address == address)


def submitted_ids(results: list[abci.ExecTxResult]) -> list[int]:
    """Query ids announced by query_submitted events, in tx order."""
    return [i for r in results for i in query_ids(r.events)]
