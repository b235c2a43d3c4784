"""Building and signing transactions, the client's side of abci_app.tx."""

from __future__ import annotations

from google.protobuf import any_pb2
from google.protobuf.message import Message

from abci_app.tx import sign_bytes
from abci_app.x.auth.types import SIMULATION_SIGNATURE
from llmnet.client.keys import Key
from wire.llmnet.bank.v1 import bank_pb2
from wire.llmnet.tx.v1 import tx_pb2

DEFAULT_GAS_LIMIT = 200_000


def pack(msg: Message) -> any_pb2.Any:
    return any_pb2.Any(type_url="/" + msg.DESCRIPTOR.full_name, value=msg.SerializeToString())


def build_tx(
    key: Key,
    chain_id: str,
    sequence: int,
    msgs: list[Message],
    fee: int,
    gas_limit: int = DEFAULT_GAS_LIMIT,
    memo: str = "",
    timeout_height: int = 0,
    for_simulation: bool = False,
) -> bytes:
    """A signed tx; for_simulation: with SIMULATION_SIGNATURE instead (same size, so the same gas), which only
    Simulate takes: a node shown it cannot broadcast it."""
    body = tx_pb2.TxBody(messages=[pack(m) for m in msgs], memo=memo, timeout_height=timeout_height)
    auth = tx_pb2.AuthInfo(
        public_key=key.public_key, sequence=sequence, fee=tx_pb2.Fee(amount=fee, gas_limit=gas_limit)
    )
    body_bytes, auth_bytes = body.SerializeToString(), auth.SerializeToString()
    signature = SIMULATION_SIGNATURE if for_simulation else key.sign(sign_bytes(body_bytes, auth_bytes, chain_id))
    return tx_pb2.Tx(body_bytes=body_bytes, auth_info_bytes=auth_bytes, signature=signature).SerializeToString()


def send_msg(sender: str, recipient: str, amount: int) -> bank_pb2.MsgSend:
    return bank_pb2.MsgSend(from_address=sender, to_address=recipient, amount=amount)
