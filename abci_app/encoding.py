"""Byte encodings shared by the transport and the Merkle tree."""

from __future__ import annotations


def uvarint(n: int) -> bytes:
    """Unsigned LEB128 varint, as Go's binary.PutUvarint writes it."""
    if n < 0:
        raise ValueError("uvarint cannot encode a negative number")
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)
