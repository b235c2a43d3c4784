"""The importable client: talk to a node's gRPC API, sign and send transactions.

    client = Client("127.0.0.1:9090")
    sender = Sender(client, keyring.load("alice"))
    result = sender.send([send_msg(alice, bob, 5)])
    committed = client.wait_tx(result.tx_hash)
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from abci_app.x.auth.types import required_fee
from llmnet.client.comet import CometError, comet_get
from llmnet.client.keys import Key
from llmnet.client.txbuilder import DEFAULT_GAS_LIMIT, build_tx
from wire.llmnet.node.v1 import node_pb2, node_pb2_grpc
from wire.llmnet.query.v1 import query_pb2, query_pb2_grpc
from wire.llmnet.tx.v1 import service_pb2, service_pb2_grpc

WRONG_SEQUENCE = ("tx", 3)
FEE_UNPAID = ("tx", 12)
SIMULATION_GAS = (2_000_000, DEFAULT_GAS_LIMIT)
"""Gas limits a simulation runs with, the larger first (its fee must be payable for the ante to pass)."""
GAS_ADJUSTMENT = 1.3
GAS_MARGIN = 5_000
R = TypeVar("R", bound=Message)
_EXPECTED = re.compile(r"expected (\d+), got (\d+)")
MEMPOOL_PAGE = 100
"""The most unconfirmed txs CometBFT lists in one answer (it has no lookup by hash before v1)."""
MAX_TX_FEE = 100_000
"""The most a Sender pays for a tx whose fee it works out itself (gas limit x the node's minimum gas price),
unless told otherwise. The node reports both the price and, under --gas auto, the gas: a hostile one asked
98.75% of a balance to send 1 ullm. Typical fees are a few thousand ullm."""


def hash_of(tx: bytes) -> str:
    """A tx's hash as CometBFT shows it: sha256 of the tx bytes, uppercase hex."""
    return hashlib.sha256(tx).hexdigest().upper()


class ClientError(Exception):
    """A request failed; `status` is the gRPC status code when the node answered."""

    def __init__(self, message: str, status: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.status = status


class NodeUnreachable(ClientError):
    pass


class FeeTooHigh(ClientError):
    pass


class WrongChain(ClientError):
    """The node is on another chain than the one the client was told to use (--chain-id)."""


class TxRejected(ClientError):
    def __init__(self, tx_hash: str, code: int, codespace: str, log: str) -> None:
        super().__init__(f"tx rejected: {log}")
        self.tx_hash, self.code, self.codespace, self.log = tx_hash, code, codespace, log


@dataclass(frozen=True)
class Broadcast:
    tx_hash: str
    sequence: int
    seen: str = ""
    """Empty when CheckTx accepted this broadcast; otherwise where the chain already had these exact bytes:
    "committed", "mempool", or "cache" (CometBFT's cache keeps only txs that passed CheckTx)."""
    fee: int = 0
    """What the tx offers to pay (set by Sender.send)."""


class Client:
    def __init__(self, node: str = "127.0.0.1:9090", timeout: float = 10.0, chain_id: str = "") -> None:
        """chain_id: the chain this client works on; a node that reports another is refused (WrongChain). Txs
        are signed for the chain id status() gives, so without it the node names the chain: a hostile node
        could have a transfer meant for a test chain signed for another chain where the same key holds funds,
        and broadcast it there."""
        self.node = node
        self.timeout = timeout
        self.chain_id = chain_id
        self._channel = grpc.insecure_channel(node)
        self._stubs(self._channel)

    def _stubs(self, channel: grpc.Channel) -> None:
        self.tx = service_pb2_grpc.TxServiceStub(channel)
        self.query = query_pb2_grpc.QueryServiceStub(channel)
        self.node_api = node_pb2_grpc.NodeServiceStub(channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, fn: Callable[..., object], request: Message, expect: type[R]) -> R:
        """One unary call; gRPC failures become ClientError (NodeUnreachable when the node is not there)."""
        try:
            response = fn(request, timeout=self.timeout)
        except grpc.RpcError as err:
            code, details = err.code(), err.details()
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise NodeUnreachable(f"node {self.node} unreachable: {details}", code) from None
            raise ClientError(details, code) from None
        if not isinstance(response, expect):
            raise ClientError(f"node answered {type(response).__name__}, expected {expect.__name__}")
        return response

    def status(self) -> node_pb2.StatusResponse:
        status = self._call(self.node_api.Status, node_pb2.StatusRequest(), node_pb2.StatusResponse)
        if self.chain_id and status.chain_id != self.chain_id:
            raise WrongChain(f"node {self.node} is on chain {status.chain_id!r}, not {self.chain_id!r} (--chain-id): "
                             "nothing was signed")
        return status

    def account(self, address: str) -> query_pb2.AccountResponse:
        return self._call(self.query.Account, query_pb2.AccountRequest(address=address), query_pb2.AccountResponse)

    def balance(self, address: str) -> query_pb2.BalanceResponse:
        return self._call(self.query.Balance, query_pb2.BalanceRequest(address=address), query_pb2.BalanceResponse)

    def supply(self) -> query_pb2.SupplyResponse:
        return self._call(self.query.Supply, query_pb2.SupplyRequest(), query_pb2.SupplyResponse)

    def params(self) -> query_pb2.ParamsResponse:
        return self._call(self.query.Params, query_pb2.ParamsRequest(), query_pb2.ParamsResponse)

    def expert(self, address: str) -> query_pb2.ExpertResponse:
        return self._call(self.query.Expert, query_pb2.ExpertRequest(address=address), query_pb2.ExpertResponse)

    def experts(self, domain: str, max_pages: int = 100) -> query_pb2.ExpertsByDomainResponse:
        """Every expert of a domain, best reputation first (the node answers a page at a time)."""
        out = query_pb2.ExpertsByDomainResponse()
        req = query_pb2.ExpertsByDomainRequest(domain=domain)
        for _ in range(max_pages):
            page = self._call(self.query.ExpertsByDomain, req, query_pb2.ExpertsByDomainResponse)
            out.experts.extend(page.experts)
            out.height = page.height
            if not page.next_after:
                break
            req.after = page.next_after
        out.experts.sort(key=lambda r: (-r.reputation, r.expert.address))
        return out

    def reputation_history(self, address: str, max_pages: int = 20) -> query_pb2.ReputationHistoryResponse:
        """An expert's reputation history, oldest first (up to max_pages pages of 500 points)."""
        out = query_pb2.ReputationHistoryResponse()
        req = query_pb2.ReputationHistoryRequest(address=address)
        for _ in range(max_pages):
            page = self._call(self.query.ReputationHistory, req, query_pb2.ReputationHistoryResponse)
            out.points.extend(page.points)
            out.height = page.height
            if not page.next_cursor:
                break
            req.cursor = page.next_cursor
        return out

    def validators(self, max_pages: int = 20) -> query_pb2.ValidatorsResponse:
        """Every validator record, highest power (then bond) first (the node answers 100 at a time)."""
        out = query_pb2.ValidatorsResponse()
        req = query_pb2.ValidatorsRequest()
        for _ in range(max_pages):
            page = self._call(self.query.Validators, req, query_pb2.ValidatorsResponse)
            out.validators.extend(page.validators)
            out.height, out.total_power = page.height, page.total_power
            if not page.next_cursor:
                break
            req.cursor = page.next_cursor
        out.validators.sort(key=lambda v: (-v.power, -v.bond, v.address))
        return out

    def validator(self, address: str) -> query_pb2.ValidatorResponse:
        """One validator by its operator's llm1... address or its hex consensus address."""
        return self._call(self.query.Validator, query_pb2.ValidatorRequest(address=address),
                          query_pb2.ValidatorResponse)

    def query_status(self, query_id: int) -> query_pb2.QueryStatusResponse:
        req = query_pb2.QueryStatusRequest(query_id=query_id)
        return self._call(self.query.QueryStatus, req, query_pb2.QueryStatusResponse)

    def recent_queries(self, limit: int = 20, before_id: int = 0) -> query_pb2.RecentQueriesResponse:
        req = query_pb2.RecentQueriesRequest(limit=limit, before_id=before_id)
        return self._call(self.query.RecentQueries, req, query_pb2.RecentQueriesResponse)

    def receipt(self, query_id: int) -> query_pb2.ReceiptResponse:
        return self._call(self.query.Receipt, query_pb2.ReceiptRequest(query_id=query_id), query_pb2.ReceiptResponse)

    def explain_payout(self, query_id: int) -> query_pb2.ExplainPayoutResponse:
        req = query_pb2.ExplainPayoutRequest(query_id=query_id)
        return self._call(self.query.ExplainPayout, req, query_pb2.ExplainPayoutResponse)

    def explain_selection(self, query_id: int) -> query_pb2.ExplainSelectionResponse:
        req = query_pb2.ExplainSelectionRequest(query_id=query_id)
        return self._call(self.query.ExplainSelection, req, query_pb2.ExplainSelectionResponse)

    def sequence(self, address: str) -> int:
        try:
            return int(self.account(address).account.sequence)
        except ClientError as err:
            if err.status == grpc.StatusCode.NOT_FOUND:
                return 0
            raise

    def broadcast(self, tx: bytes) -> service_pb2.BroadcastTxResponse:
        return self._call(self.tx.BroadcastTx, service_pb2.BroadcastTxRequest(tx=tx), service_pb2.BroadcastTxResponse)

    def simulate(self, tx: bytes) -> service_pb2.SimulateResponse:
        return self._call(self.tx.Simulate, service_pb2.SimulateRequest(tx=tx), service_pb2.SimulateResponse)

    def get_tx(self, tx_hash: str) -> service_pb2.GetTxResponse:
        return self._call(self.tx.GetTx, service_pb2.GetTxRequest(tx_hash=tx_hash), service_pb2.GetTxResponse)

    def in_mempool(self, tx_hash: str) -> bool:
        """Whether the node's CometBFT holds the tx unconfirmed (among the first MEMPOOL_PAGE it lists).
        False, not an error, when its RPC cannot be reached: callers use it only to avoid a resend."""
        try:
            listed = comet_get(self.status().cometbft_rpc, "unconfirmed_txs", timeout=self.timeout,
                               limit=MEMPOOL_PAGE).get("txs") or []
        except CometError:
            return False
        try:
            return any(hash_of(base64.b64decode(t)) == tx_hash.upper() for t in listed)
        except (TypeError, ValueError):  # a list of something else: it says nothing either way
            return False

    def wait_tx(self, tx_hash: str, timeout: float = 30.0, poll: float = 0.05) -> service_pb2.GetTxResponse:
        """Poll until the tx is in a committed block. Raises ClientError on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.get_tx(tx_hash)
            except ClientError as err:
                if err.status != grpc.StatusCode.NOT_FOUND or time.monotonic() > deadline:
                    if err.status == grpc.StatusCode.NOT_FOUND:
                        raise ClientError(f"tx {tx_hash} not committed within {timeout:.0f}s",
                                          grpc.StatusCode.DEADLINE_EXCEEDED) from None
                    raise
            time.sleep(poll)


class Sender:
    """Signs and broadcasts txs for one key, tracking its sequence locally so that several txs
    can be sent before the next block (pipelining). Re-reads the sequence from the node when
    the node says it is wrong, and retries once."""

    def __init__(self, client: Client, key: Key, chain_id: str | None = None, max_fee: int = MAX_TX_FEE) -> None:
        self.client = client
        self.key = key
        self.max_fee = max_fee
        self.chain_id = chain_id or client.status().chain_id
        self._sequence: int | None = None
        self._min_gas_price: int | None = None

    def fee_for(self, gas_limit: int) -> int:
        if self._min_gas_price is None:
            self._min_gas_price = int(self.client.params().auth.min_gas_price_micro)
        return required_fee(gas_limit, self._min_gas_price)

    def sign(self, msgs: list[Message], sequence: int, fee: int | None = None,
             gas_limit: int = DEFAULT_GAS_LIMIT, memo: str = "", timeout_height: int = 0,
             for_simulation: bool = False) -> bytes:
        fee = self.fee_for(gas_limit) if fee is None else fee
        return build_tx(self.key, self.chain_id, sequence, msgs, fee, gas_limit, memo, timeout_height, for_simulation)

    def estimate_gas(self, msgs: list[Message], memo: str = "", timeout_height: int = 0) -> int:
        """Gas for msgs as the Cosmos convention has it: what a simulation used, times GAS_ADJUSTMENT.
        Raises TxRejected when the simulation fails (the tx would fail in a block too)."""
        if self._sequence is None:
            self._sequence = self.client.sequence(self.key.address)
        result = self._simulate(msgs, self._sequence, memo, timeout_height)
        match = _EXPECTED.search(result.log)
        if (result.codespace, result.code) == WRONG_SEQUENCE and match:
            # Another client used the key (the node expects more: adopt it), or our last txs have not
            # reached this node yet (it expects less: simulate where it stands; send() waits for it).
            expected = int(match.group(1))
            self._sequence = max(self._sequence, expected)
            result = self._simulate(msgs, expected, memo, timeout_height)
        if result.code:
            raise TxRejected("", result.code, result.codespace, result.log)
        return int(result.gas_used * GAS_ADJUSTMENT) + GAS_MARGIN

    def _simulate(self, msgs: list[Message], sequence: int, memo: str, timeout_height: int) -> Any:
        result = None
        for ceiling in SIMULATION_GAS:  # a poor account may not cover the larger simulation's fee
            tx = self.sign(msgs, sequence, None, ceiling, memo, timeout_height, for_simulation=True)
            result = self.client.simulate(tx).result
            if (result.codespace, result.code) != FEE_UNPAID:
                break
        assert result is not None
        return result

    def send(self, msgs: list[Message], fee: int | None = None, gas_limit: int | None = DEFAULT_GAS_LIMIT,
             memo: str = "", timeout_height: int = 0, attempts: int = 20) -> Broadcast:
        """Broadcast; returns once CheckTx accepted it, or once the chain is seen to hold it already.
        Raises TxRejected with the app's code. gas_limit None means auto: simulate first (estimate_gas),
        so a tx whose cost grew is not sent short of gas, and a tx that would fail is refused before it
        costs a fee.

        On a sequence mismatch the node's log names the sequence it expects. If it expects more, either
        our own tx already landed (a node that restarted has forgotten it saw it) or another client used
        the key: the tx is looked up by hash, and re-signed for the later sequence only if the chain does
        not show it. If it expects less, our earlier txs have not reached that node's mempool yet, so the
        same tx is retried after a short wait. Only bytes already signed are ever sent again, and the
        sequence lets one copy in: a tx is never paid twice.
        """
        if gas_limit is None:
            gas_limit = self.estimate_gas(msgs, memo, timeout_height)
        if fee is None:  # worked out from what the node says: never more than max_fee
            fee = self.fee_for(gas_limit)
            if fee > self.max_fee:
                raise FeeTooHigh(f"the fee would be {fee} (gas limit {gas_limit} at the node's minimum gas price "
                                 f"{self._min_gas_price}/1e6), over the cap of {self.max_fee}: refused. The node "
                                 "reports the price and the gas; if you trust it, raise the cap (--max-tx-fee)")
        if self._sequence is None:
            self._sequence = self.client.sequence(self.key.address)
        seq = self._sequence
        tx = self.sign(msgs, seq, fee, gas_limit, memo, timeout_height)
        refused: TxRejected | None = None
        for _ in range(attempts):
            res = self._broadcast(tx, seq)
            if isinstance(res, Broadcast):
                self._sequence = seq + 1
                return replace(res, fee=fee)
            if res is None:
                continue  # the outcome was unknown and the chain does not show the tx: the same bytes again
            refused = TxRejected(res.tx_hash, res.check.code, res.check.codespace, res.check.log)
            match = _EXPECTED.search(res.check.log)
            if (res.check.codespace, res.check.code) != WRONG_SEQUENCE or match is None:
                raise refused
            expected = int(match.group(1))
            if expected <= seq:
                time.sleep(0.1)
            elif seen := self.find(tx, settle=1.0):
                self._sequence = seq + 1
                return Broadcast(hash_of(tx), seq, seen, fee)
            else:
                seq = expected
                tx = self.sign(msgs, seq, fee, gas_limit, memo, timeout_height)
        raise refused or NodeUnreachable(f"tx {hash_of(tx)}: no node took it in {attempts} attempts")

    def _broadcast(self, tx: bytes, seq: int) -> service_pb2.BroadcastTxResponse | Broadcast | None:
        """One broadcast. A Broadcast when CheckTx accepted it or the chain already holds these bytes; None
        when the outcome is unknown (the node went away mid-call) and the chain does not show the tx; the
        node's answer when CheckTx refused it."""
        try:
            res = self.client.broadcast(tx)
        except NodeUnreachable:
            seen = self.find(tx)
            return Broadcast(hash_of(tx), seq, seen) if seen else None
        except ClientError as err:
            if err.status != grpc.StatusCode.ALREADY_EXISTS:  # CometBFT: "tx already exists in cache"
                raise
            return Broadcast(hash_of(tx), seq, self.find(tx) or "cache")
        return Broadcast(res.tx_hash, seq) if res.check.code == 0 else res

    def find(self, tx: bytes, settle: float = 0.0) -> str:
        """Where the chain holds these exact bytes: "committed", "mempool", or "" when it shows neither.
        settle: keep looking this long, since a tx leaves the mempool before its block is indexed."""
        deadline = time.monotonic() + settle
        while True:
            if self._committed(hash_of(tx)):
                return "committed"
            if self.client.in_mempool(hash_of(tx)):
                return "mempool"
            if time.monotonic() >= deadline:
                return ""
            time.sleep(0.2)

    def _committed(self, tx_hash: str) -> bool:
        try:
            self.client.get_tx(tx_hash)
            return True
        except ClientError as err:
            if err.status == grpc.StatusCode.NOT_FOUND:
                return False
            raise
