"""Message builders for the LLM-Net protocol, for requesters and experts (client side)."""

from __future__ import annotations

import hashlib

from abci_app.x.inference.types import answer_commitment, answer_sign_bytes, scores_commitment
from llmnet.client.keys import Key
from wire.llmnet.experts.v1 import experts_pb2 as ex
from wire.llmnet.inference.v1 import inference_pb2 as inf


def salt_for(key: Key, chain_id: str, *parts: object) -> bytes:
    """A salt only the key holder can derive again (so a restarted expert can still reveal), for one chain: a key
    used on two chains (a test chain and its main chain) revealed on one the salt of the same query and round's
    commitment on the other, which then opened to a guess."""
    return hashlib.sha256(key.seed + repr((chain_id, *parts)).encode()).digest()


def register_expert(key: Key, domains: list[str], endpoint: str, base_model: str, adapter_sha256: str,
                    bond: int, capacity: int = 0) -> ex.MsgRegisterExpert:
    """capacity: assignments it works on at once (0: the chain's default_capacity)."""
    return ex.MsgRegisterExpert(address=key.address, domains=domains, endpoint=endpoint, bond=bond,
                                model=ex.ModelCommitment(base_model=base_model, adapter_sha256=adapter_sha256),
                                capacity=capacity)


def submit_query(key: Key, domain: str, prompt: str, max_fee: int, k: int, rounds: int) -> inf.MsgSubmitQuery:
    return inf.MsgSubmitQuery(requester=key.address, domain=domain, prompt=prompt, max_fee=max_fee, k=k,
                              rounds=rounds)


def commit_answer(key: Key, chain_id: str, query_id: int, round_: int, answer: str) -> inf.MsgCommitAnswer:
    salt = salt_for(key, chain_id, "answer", query_id, round_)
    return inf.MsgCommitAnswer(respondent=key.address, query_id=query_id, round=round_,
                               commitment=answer_commitment(chain_id, query_id, round_, key.address, answer, salt))


def reveal_answer(key: Key, chain_id: str, query_id: int, round_: int, answer: str) -> inf.MsgRevealAnswer:
    return inf.MsgRevealAnswer(respondent=key.address, query_id=query_id, round=round_, answer=answer,
                               salt=salt_for(key, chain_id, "answer", query_id, round_))


def commit_scores(key: Key, chain_id: str, query_id: int, scores: list[int]) -> inf.MsgCommitScores:
    salt = salt_for(key, chain_id, "scores", query_id)
    return inf.MsgCommitScores(scorer=key.address, query_id=query_id,
                               commitment=scores_commitment(chain_id, query_id, key.address, scores, salt))


def reveal_scores(key: Key, chain_id: str, query_id: int, scores: list[int]) -> inf.MsgRevealScores:
    return inf.MsgRevealScores(scorer=key.address, query_id=query_id, scores=scores,
                               salt=salt_for(key, chain_id, "scores", query_id))


def sign_answer(key: Key, chain_id: str, query_id: int, round_: int, answer: str) -> bytes:
    return key.sign(answer_sign_bytes(chain_id, query_id, round_, answer))


def report_equivocation(reporter: Key, expert: str, query_id: int, round_: int, answer_a: str, sig_a: bytes,
                        answer_b: str, sig_b: bytes) -> inf.MsgReportEquivocation:
    return inf.MsgReportEquivocation(reporter=reporter.address, expert=expert, query_id=query_id, round=round_,
                                     answer_a=answer_a, signature_a=sig_a, answer_b=answer_b, signature_b=sig_b)
