import pytest

from llmnet.node.abci.framing import Decoder, FramingError, encode_uvarint, frame

ROUNDTRIP = [b"", b"x", b"a" * 127, b"b" * 128, b"c" * 300, bytes(range(256)) * 40]


@pytest.mark.parametrize("payload", ROUNDTRIP, ids=lambda p: f"len{len(p)}")
def test_frame_roundtrip(payload: bytes) -> None:
    assert Decoder().feed(frame(payload)) == [payload]


def test_partial_reads_byte_by_byte() -> None:
    stream = b"".join(frame(p) for p in ROUNDTRIP)
    decoder, out = Decoder(), []
    for i in range(len(stream)):
        out += decoder.feed(stream[i : i + 1])
    assert out == ROUNDTRIP
    assert decoder.pending == 0


def test_incomplete_message_waits() -> None:
    decoder = Decoder()
    assert decoder.feed(frame(b"hello")[:-1]) == []
    assert decoder.feed(b"o") == [b"hello"]


def test_huge_length_prefix_is_an_error_not_a_hang() -> None:
    with pytest.raises(FramingError, match="exceeds the limit"):
        Decoder(max_message_bytes=1024).feed(encode_uvarint(10**12))


def test_overlong_varint_is_an_error() -> None:
    with pytest.raises(FramingError):
        Decoder().feed(b"\x80" * 11)


def test_negative_length_cannot_be_encoded() -> None:
    with pytest.raises(ValueError):
        encode_uvarint(-1)
