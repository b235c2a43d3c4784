"""Unsigned-varint length-prefixed framing, as CometBFT's socket client writes it.

Decoder is incremental and pure: feed it whatever the socket returned, get back every complete
message. A length above the limit or a varint longer than 10 bytes is a protocol error raised at
once, never a wait for bytes that will not come.
"""

from __future__ import annotations

from abci_app.encoding import uvarint as encode_uvarint

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
_MAX_VARINT_BYTES = 10


class FramingError(Exception):
    pass


def frame(payload: bytes) -> bytes:
    return encode_uvarint(len(payload)) + payload


class Decoder:
    def __init__(self, max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self._buf = bytearray()
        self._max = max_message_bytes

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out: list[bytes] = []
        while True:
            header = self._length()
            if header is None:
                return out
            length, used = header
            if len(self._buf) < used + length:
                return out
            out.append(bytes(self._buf[used : used + length]))
            del self._buf[: used + length]

    def _length(self) -> tuple[int, int] | None:
        value = 0
        for i, byte in enumerate(self._buf[:_MAX_VARINT_BYTES]):
            value |= (byte & 0x7F) << (7 * i)
            if value > self._max:
                raise FramingError(f"message length {value} exceeds the limit of {self._max} bytes")
            if not byte & 0x80:
                return value, i + 1
        if len(self._buf) >= _MAX_VARINT_BYTES:
            raise FramingError("length prefix is not a valid varint (more than 10 bytes)")
        return None

    @property
    def pending(self) -> int:
        return len(self._buf)
