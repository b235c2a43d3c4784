"""Who may ask this expert: the requester of a paid, open chain query that drew this expert, once per
signature.

A request carries the query id, a nonce, the requester's public key and its signature over
AccessSignDoc{chain_id, query_id, expert, nonce, request_sha256} (llmnet/client/expert_api.py). The
chain (through the node's gRPC API) is the judge of whether the query exists, is still open (its fee is
escrowed until settlement) and names this expert. The expert remembers the nonces it has served for each
open query, so a signature seen on the wire cannot be replayed, and serves at most max_requests per query.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import grpc

from abci_app.crypto import address_of, verify
from llmnet.client.expert_api import access_sign_bytes
from llmnet.client.sdk import ClientError
from wire.llmnet.expert.v1 import expert_pb2 as pb
from wire.llmnet.inference.v1 import inference_pb2 as inf
from wire.llmnet.query.v1 import query_pb2

MAX_TRACKED_QUERIES = 10_000


class AccessDenied(Exception):
    pass


class NotYetKnown(Exception):
    """The expert's node has not seen the query drawn yet: it may be a block or two behind the requester's.
    Unlike a refusal this passes by itself, so the requester may ask again shortly."""


class ChainAccess:
    """Checks requests against chain state; `status` is a QueryStatus lookup such as
    llmnet.client.sdk.Client.query_status (raising ClientError with NOT_FOUND for unknown ids)."""

    def __init__(self, status: Callable[[int], query_pb2.QueryStatusResponse], chain_id: str, expert: str,
                 max_requests: int = 16) -> None:
        self.status, self.chain_id, self.expert = status, chain_id, expert
        self.max_requests = max_requests
        self._seen: dict[int, set[int]] = {}  # query id -> nonces served
        self._lock = threading.Lock()

    def check(self, request: pb.GenerateRequest) -> inf.Query:
        """Returns the query the request is for and spends its nonce; raises AccessDenied saying why not."""
        if request.query_id == 0:
            raise AccessDenied("this expert serves chain queries only: set query_id and sign the request")
        if len(request.requester_public_key) != 32 or not request.requester_signature:
            raise AccessDenied("request is not signed: set requester_public_key and requester_signature")
        signed = access_sign_bytes(self.chain_id, request, self.expert)
        if not verify(request.requester_public_key, signed, request.requester_signature):
            raise AccessDenied(f"bad requester signature for query {request.query_id} on {self.chain_id} "
                               "(it must cover this exact request, nonce and expert)")
        query = self._open_query(request)
        self._spend(query.id, request.access_nonce)
        return query

    def _open_query(self, request: pb.GenerateRequest) -> inf.Query:
        try:
            query = self.status(request.query_id).query
        except ClientError as err:
            if err.status == grpc.StatusCode.NOT_FOUND:
                raise NotYetKnown(f"query {request.query_id} does not exist on this expert's node (yet: "
                                  "it may be a block behind; ask again shortly)") from None
            raise  # the node is unreachable: UNAVAILABLE, not a refusal
        if address_of(request.requester_public_key) != query.requester:
            raise AccessDenied(f"query {query.id} belongs to {query.requester}, not to the signing key")
        if query.phase == inf.PHASE_SETTLED:
            self._forget(query.id)
            raise AccessDenied(f"query {query.id} is already settled")
        if query.phase == inf.PHASE_AWAITING_DRAW:
            raise NotYetKnown(f"query {query.id} has not drawn its respondents on this expert's node yet "
                              "(it may be a block behind; ask again shortly)")
        if self.expert not in query.respondents:
            raise AccessDenied(f"query {query.id} did not draw this expert ({self.expert})")
        if request.domain and request.domain != query.domain:
            raise AccessDenied(f"query {query.id} is in domain {query.domain!r}, not {request.domain!r}")
        if request.round > query.rounds:
            raise AccessDenied(f"query {query.id} has rounds 1..{query.rounds}, not {request.round}")
        return query

    def _spend(self, query_id: int, nonce: int) -> None:
        with self._lock:
            if query_id not in self._seen and len(self._seen) >= MAX_TRACKED_QUERIES:
                self._seen.pop(next(iter(self._seen)))  # the oldest query: long settled or abandoned
            used = self._seen.setdefault(query_id, set())
            if nonce in used:
                raise AccessDenied(f"nonce {nonce} of query {query_id} was already used: sign a fresh one")
            if len(used) >= self.max_requests:
                raise AccessDenied(f"query {query_id} already had {len(used)} requests served, the limit")
            used.add(nonce)

    def _forget(self, query_id: int) -> None:
        with self._lock:
            self._seen.pop(query_id, None)
