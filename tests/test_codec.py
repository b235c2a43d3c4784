import pytest

from abci_app import bech32
from abci_app.crypto import address_of, format_address, parse_address, verify
from abci_app.msgs import MsgRegistry
from abci_app.tx import decode_tx, sign_bytes
from abci_app.x.bank.handler import msg_specs
from abci_app.x.bank.keeper import BankKeeper
from llmnet.client.txbuilder import build_tx, send_msg
from tests.helpers import deterministic_key
from wire.llmnet.tx.v1 import tx_pb2


def registry() -> MsgRegistry:
    r = MsgRegistry()
    r.register_all(msg_specs(BankKeeper()))
    return r


def test_address_roundtrip() -> None:
    key = deterministic_key("a")
    assert format_address(parse_address(key.address)) == key.address
    assert address_of(key.public_key) == key.address
    assert key.address.startswith("llm1")


@pytest.mark.parametrize(
    "text, reason",
    [
        ("", "separator"),
        ("cosmos1qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqnrql8a", "prefix"),
        ("llm1qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq", "checksum"),
        ("llm1QQQqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq", "mixes"),
        ("llm1bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", "alphabet"),
        (bech32.encode("llm", b"\x01" * 19), "19 bytes"),
        (bech32.encode("llm", bytes(20)).upper().replace("K", "\u212a"), "non-ASCII"),
    ],
    ids=["empty", "wrong prefix", "bad checksum", "mixed case", "bad character", "short", "kelvin sign"],
)
def test_bad_addresses(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_address(text)


def test_tx_roundtrip_keeps_raw_bytes() -> None:
    key = deterministic_key("a")
    raw = build_tx(key, "chain-x", 7, [send_msg(key.address, key.address, 5)], fee=123, memo="hi", timeout_height=9)
    tx = decode_tx(raw, registry())
    assert tx.signer == key.address
    assert tx.auth.sequence == 7 and tx.auth.fee.amount == 123
    assert tx.body.memo == "hi" and tx.body.timeout_height == 9
    assert verify(key.public_key, tx.sign_bytes("chain-x"), tx.signature)
    assert not verify(key.public_key, tx.sign_bytes("chain-y"), tx.signature)


def test_sign_bytes_use_raw_body_not_reencoding() -> None:
    # Appending an unknown field to the body changes the bytes a signer signs even though the
    # decoded message is the same: the signature must cover exactly what was sent.
    body = tx_pb2.TxBody(memo="m").SerializeToString()
    padded = body + b"\xf8\x01\x01"  # field 31, varint 1 (unknown)
    assert tx_pb2.TxBody.FromString(padded).memo == "m"
    assert sign_bytes(body, b"", "c") != sign_bytes(padded, b"", "c")
