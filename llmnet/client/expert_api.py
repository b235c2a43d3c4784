"""The signed parts of ExpertService, for both sides: what a requester signs to be served once, and
what an expert signs for an answer it serves. Every doc is signed behind its own tag, so a signature
made for one purpose can never be presented as another (above all, never as equivocation evidence:
served answers are not llmnet.inference.v1.AnswerSignDoc)."""

from __future__ import annotations

import hashlib

from abci_app.crypto import address_of, verify
from llmnet.client.keys import Key
from wire.llmnet.expert.v1 import expert_pb2 as pb

ACCESS_TAG = b"llmnet/expert-access/v1\x00"
SERVED_ANSWER_TAG = b"llmnet/served-answer/v1\x00"


def request_sha256(request: pb.GenerateRequest) -> bytes:
    """The request as signed: every field but the requester's key and signature, deterministically encoded."""
    bare = pb.GenerateRequest()
    bare.CopyFrom(request)
    bare.ClearField("requester_public_key")
    bare.ClearField("requester_signature")
    return hashlib.sha256(bare.SerializeToString(deterministic=True)).digest()


def access_sign_bytes(chain_id: str, request: pb.GenerateRequest, expert: str) -> bytes:
    doc = pb.AccessSignDoc(chain_id=chain_id, query_id=request.query_id, expert=expert,
                           nonce=request.access_nonce, request_sha256=request_sha256(request))
    return ACCESS_TAG + doc.SerializeToString(deterministic=True)


def sign_access(requester: Key, chain_id: str, request: pb.GenerateRequest, expert: str) -> pb.GenerateRequest:
    """request, signed by the requester of its query for this expert (set access_nonce first)."""
    signed = pb.GenerateRequest()
    signed.CopyFrom(request)
    signed.requester_public_key = requester.public_key
    signed.requester_signature = requester.sign(access_sign_bytes(chain_id, request, expert))
    return signed


def served_answer_sign_bytes(chain_id: str, request: pb.GenerateRequest, expert: str, answer: str) -> bytes:
    doc = pb.ServedAnswerSignDoc(chain_id=chain_id, query_id=request.query_id, round=request.round, expert=expert,
                                 request_sha256=request_sha256(request),
                                 answer_sha256=hashlib.sha256(answer.encode()).digest())
    return SERVED_ANSWER_TAG + doc.SerializeToString(deterministic=True)


def verify_served(request: pb.GenerateRequest, response: pb.GenerateResponse, expert_public_key: bytes) -> bool:
    """True when response is signed by the holder of expert_public_key, for exactly this request."""
    if address_of(expert_public_key) != response.expert:
        return False
    message = served_answer_sign_bytes(response.chain_id, request, response.expert, response.text)
    return verify(expert_public_key, message, response.signature)
