"""Inference module: keys, errors, params, commitments and stateless message checks."""

from __future__ import annotations

import hashlib

from abci_app.crypto import check_address, module_address
from abci_app.errors import AppError, Missing
from abci_app.x.experts.types import DOMAIN_RE
from wire.llmnet.inference.v1 import inference_pb2 as pb

STORE = "inference"
NEXT_ID_KEY = b"next_id"
QUERY_PREFIX = b"q/"
ANSWER_PREFIX = b"a/"
SCORE_PREFIX = b"s/"
RECEIPT_PREFIX = b"r/"
DEADLINE_PREFIX = b"dl/"
DRAW_PREFIX = b"dr/"
EQUIVOCATION_PREFIX = b"eq/"
MODELS_PREFIX = b"m/"
MIN_ANSWER_BYTES = 64
DUTIES = (pb.MsgCommitAnswer, pb.MsgRevealAnswer, pb.MsgCommitScores, pb.MsgRevealScores)
"""A drawn expert's part in a query, which its fee pays for (MsgSpec.duty): the handlers mark these, and the
daemon sends them without a fee."""
"""The least max_answer_bytes a genesis may set: room for a short answer (and for the daemon's "(no answer)")."""
ESCROW = module_address("inference/escrow")
MAX_SCORE = 100
# Domain-separation tags: bytes hashed or signed for one purpose never equal those of another.
ANSWER_COMMITMENT_TAG = b"llmnet/answer-commitment/v1\x00"
SCORES_COMMITMENT_TAG = b"llmnet/scores-commitment/v1\x00"
ANSWER_SIGN_TAG = b"llmnet/answer-evidence/v1\x00"

Phase = pb.Phase

# Events, and the attribute names other processes read (expert daemons, llmnet ask, the explorer).
EV_QUERY_SUBMITTED = "query_submitted"
EV_QUERY_ASSIGNED = "query_assigned"
"""Respondents drawn: query_id, respondents (comma-separated), scorers, round, deadline."""
EV_ANSWER_COMMITTED = "answer_committed"
EV_ANSWER_REVEALED = "answer_revealed"
EV_ROUND_STARTED = "round_started"
EV_SCORING_STARTED = "scoring_started"
"""The scorers' turn: query_id, scorers (comma-separated), deadline."""
EV_SCORES_COMMITTED = "scores_committed"
EV_SCORES_REVEALED = "scores_revealed"
EV_QUERY_SETTLED = "query_settled"
EV_EQUIVOCATION = "equivocation"
ATTR_QUERY_ID = "query_id"
ATTR_RESPONDENTS = "respondents"
ATTR_SCORERS = "scorers"


class InferenceError(AppError):
    codespace = "inference"


class ErrInvalidQuery(InferenceError):
    code = 2


class ErrTooFewExperts(InferenceError):
    code = 3


class ErrUnknownQuery(InferenceError, Missing):
    code = 4


class ErrNotAssigned(InferenceError):
    code = 5


class ErrWrongPhase(InferenceError):
    code = 6


class ErrDuplicate(InferenceError):
    code = 7


class ErrCommitMismatch(InferenceError):
    code = 8


class ErrInvalidScores(InferenceError):
    code = 9


class ErrInvalidEvidence(InferenceError):
    code = 10


class ErrFeeTooLow(InferenceError):
    code = 11


def default_params() -> pb.Params:
    return pb.Params(
        max_prompt_bytes=4096,
        max_answer_bytes=4096,
        max_k=5,
        max_rounds=3,
        scorers=3,
        commit_blocks=5,
        reveal_blocks=5,
        min_fee_per_respondent=1_000,
        quality_threshold=50,
        scorer_share_ppm=200_000,
        clip_distance=10,
        evidence_max_age_blocks=100,
        max_scorer_weight_ppm=1_000_000,
        max_closes_per_block=500,
        submit_gas_per_task=5_000,
    )


def query_life_blocks(params: pb.Params) -> int:
    """The most blocks a query can stay open: the block that draws it, every answer round's windows, then
    scoring's."""
    return 1 + (params.max_rounds + 1) * (params.commit_blocks + params.reveal_blocks)


def be8(n: int) -> bytes:
    return n.to_bytes(8, "big")


def query_key(query_id: int) -> bytes:
    return QUERY_PREFIX + be8(query_id)


def answer_key(query_id: int, round_: int, respondent: bytes) -> bytes:
    return ANSWER_PREFIX + be8(query_id) + round_.to_bytes(2, "big") + respondent


def score_key(query_id: int, scorer: bytes) -> bytes:
    return SCORE_PREFIX + be8(query_id) + scorer


def receipt_key(query_id: int) -> bytes:
    return RECEIPT_PREFIX + be8(query_id)


def models_key(query_id: int) -> bytes:
    return MODELS_PREFIX + be8(query_id)


def _field(data: bytes) -> bytes:
    """Length-prefixed, so no two different field lists hash alike."""
    return len(data).to_bytes(4, "big") + data


def answer_commitment(chain_id: str, query_id: int, round_: int, respondent: str, answer: str, salt: bytes) -> bytes:
    """What MsgCommitAnswer carries. It binds the chain, the query, the round and the committer, so a
    commitment copied from another expert (or another query or round) can never be revealed by the copier."""
    parts = (chain_id.encode(), be8(query_id), be8(round_), respondent.encode(), answer.encode(), salt)
    return hashlib.sha256(ANSWER_COMMITMENT_TAG + b"".join(_field(p) for p in parts)).digest()


def scores_commitment(chain_id: str, query_id: int, scorer: str, scores: list[int], salt: bytes) -> bytes:
    """What MsgCommitScores carries, bound like answer_commitment (scores as 2-byte big-endian each)."""
    packed = b"".join(s.to_bytes(2, "big") for s in scores)
    parts = (chain_id.encode(), be8(query_id), scorer.encode(), packed, salt)
    return hashlib.sha256(SCORES_COMMITMENT_TAG + b"".join(_field(p) for p in parts)).digest()


def answer_sign_bytes(chain_id: str, query_id: int, round_: int, answer: str) -> bytes:
    """The evidence doc: an expert's word that this is its answer of (query, round). Shipped software
    signs it for nothing but the answer it commits on chain; answers served off chain are signed under a
    different tag (ServedAnswerSignDoc), which no handler accepts as evidence."""
    doc = pb.AnswerSignDoc(chain_id=chain_id, query_id=query_id, round=round_,
                           answer_sha256=hashlib.sha256(answer.encode()).digest())
    return ANSWER_SIGN_TAG + doc.SerializeToString()


def validate_submit(msg: pb.MsgSubmitQuery) -> None:
    check_address("requester", msg.requester)
    if not DOMAIN_RE.fullmatch(msg.domain):
        raise ErrInvalidQuery(f"domain {msg.domain!r} is not a valid domain name")
    if not msg.prompt.strip():
        raise ErrInvalidQuery("prompt is empty")
    if msg.k < 1 or msg.rounds < 1:
        raise ErrInvalidQuery(f"k and rounds must be at least 1, got k={msg.k} rounds={msg.rounds}")
    if msg.max_fee == 0:
        raise ErrInvalidQuery("max_fee must be positive")


def _check_salt(salt: bytes) -> None:
    if not 16 <= len(salt) <= 64:
        raise ErrInvalidQuery(f"salt must be 16-64 bytes, got {len(salt)}")


def _check_commitment(commitment: bytes) -> None:
    if len(commitment) != 32:
        raise ErrInvalidQuery("commitment must be a 32-byte sha256")


def validate_commit_answer(msg: pb.MsgCommitAnswer) -> None:
    check_address("respondent", msg.respondent)
    _check_commitment(msg.commitment)


def validate_reveal_answer(msg: pb.MsgRevealAnswer) -> None:
    check_address("respondent", msg.respondent)
    _check_salt(msg.salt)


def validate_commit_scores(msg: pb.MsgCommitScores) -> None:
    check_address("scorer", msg.scorer)
    _check_commitment(msg.commitment)


def validate_reveal_scores(msg: pb.MsgRevealScores) -> None:
    check_address("scorer", msg.scorer)
    _check_salt(msg.salt)
    if any(s > MAX_SCORE for s in msg.scores):
        raise ErrInvalidScores(f"every score must be 0..{MAX_SCORE}")


def validate_equivocation(msg: pb.MsgReportEquivocation) -> None:
    check_address("reporter", msg.reporter)
    check_address("expert", msg.expert)
    if msg.answer_a == msg.answer_b:
        raise ErrInvalidEvidence("the two answers are identical: no equivocation")
    if len(msg.signature_a) != 64 or len(msg.signature_b) != 64:
        raise ErrInvalidEvidence("signatures must be 64 bytes of ed25519")
