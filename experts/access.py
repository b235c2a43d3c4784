"""Who may ask this expert: the requester of a paid, open chain query that drew this expert.

A request carries the query id, the requester's public key and its signature over
AccessSignDoc{chain_id, query_id, expert}. The chain (through the node's gRPC API) is the judge of
whether the query exists, is still open (its fee is escrowed until settlement) and names this expert.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc

from abci_app.crypto import address_of, verify
from llmnet.client.keys import Key
from llmnet.client.sdk import ClientError
from wire.llmnet.expert.v1 import expert_pb2 as pb
from wire.llmnet.inference.v1 import inference_pb2 as inf
from wire.llmnet.query.v1 import query_pb2


class AccessDenied(Exception):
    pass


def access_sign_bytes(chain_id: str, query_id: int, expert: str) -> bytes:
    return pb.AccessSignDoc(chain_id=chain_id, query_id=query_id, expert=expert).SerializeToString(deterministic=True)


def sign_access(requester: Key, chain_id: str, query_id: int, expert: str) -> tuple[bytes, bytes]:
    """(public key, signature) to put into a GenerateRequest for query_id."""
    return requester.public_key, requester.sign(access_sign_bytes(chain_id, query_id, expert))


class ChainAccess:
    """Checks requests against chain state; `status` is a QueryStatus lookup such as
    llmnet.client.sdk.Client.query_status (raising ClientError with NOT_FOUND for unknown ids)."""

    def __init__(self, status: Callable[[int], query_pb2.QueryStatusResponse], chain_id: str, expert: str) -> None:
        self.status, self.chain_id, self.expert = status, chain_id, expert

    def check(self, request: pb.GenerateRequest) -> inf.Query:
        """Returns the query the request is for; raises AccessDenied saying why not."""
        if request.query_id == 0:
            raise AccessDenied("this expert serves chain queries only: set query_id and sign the request")
        if len(request.requester_public_key) != 32 or not request.requester_signature:
            raise AccessDenied("request is not signed: set requester_public_key and requester_signature")
        signed = access_sign_bytes(self.chain_id, request.query_id, self.expert)
        if not verify(request.requester_public_key, signed, request.requester_signature):
            raise AccessDenied(f"bad requester signature for query {request.query_id} on {self.chain_id}")
        try:
            query = self.status(request.query_id).query
        except ClientError as err:
            if err.status == grpc.StatusCode.NOT_FOUND:
                raise AccessDenied(f"query {request.query_id} does not exist") from None
            raise  # the node is unreachable: UNAVAILABLE, not a refusal
        if address_of(request.requester_public_key) != query.requester:
            raise AccessDenied(f"query {query.id} belongs to {query.requester}, not to the signing key")
        if query.phase == inf.PHASE_SETTLED:
            raise AccessDenied(f"query {query.id} is already settled")
        if self.expert not in query.respondents:
            raise AccessDenied(f"query {query.id} did not draw this expert ({self.expert})")
        if request.domain and request.domain != query.domain:
            raise AccessDenied(f"query {query.id} is in domain {query.domain!r}, not {request.domain!r}")
        return query
