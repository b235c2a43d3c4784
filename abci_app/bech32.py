"""Bech32 (BIP-173) encoding of 20-byte account addresses."""

from __future__ import annotations

CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_GEN = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)


def _polymod(values: list[int]) -> int:
    chk = 1
    for v in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ v
        for i in range(5):
            if (top >> i) & 1:
                chk ^= _GEN[i]
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _convert_bits(data: bytes | list[int], from_bits: int, to_bits: int, pad: bool) -> list[int]:
    acc = 0
    bits = 0
    out: list[int] = []
    maxv = (1 << to_bits) - 1
    for value in data:
        if value < 0 or value >> from_bits:
            raise ValueError("invalid data value")
        acc = (acc << from_bits) | value
        bits += from_bits
        while bits >= to_bits:
            bits -= to_bits
            out.append((acc >> bits) & maxv)
    if pad:
        if bits:
            out.append((acc << (to_bits - bits)) & maxv)
    elif bits >= from_bits or ((acc << (to_bits - bits)) & maxv):
        raise ValueError("invalid padding")
    return out


def encode(hrp: str, data: bytes) -> str:
    values = _convert_bits(data, 8, 5, True)
    polymod = _polymod(_hrp_expand(hrp) + values + [0] * 6) ^ 1
    checksum = [(polymod >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(CHARSET[d] for d in values + checksum)


def decode(text: str) -> tuple[str, bytes]:
    """Return (hrp, data). Raises ValueError with a readable reason on any defect."""
    if len(text) > 90:
        raise ValueError("bech32 string longer than 90 characters")
    if not text.isascii():  # str.lower maps some non-ASCII letters to ASCII ones (Kelvin sign -> k)
        raise ValueError("bech32 string has a non-ASCII character")
    if text.lower() != text and text.upper() != text:
        raise ValueError("bech32 string mixes upper and lower case")
    text = text.lower()
    sep = text.rfind("1")
    if sep < 1 or sep + 7 > len(text):
        raise ValueError("bech32 separator '1' missing or misplaced")
    hrp, rest = text[:sep], text[sep + 1 :]
    if any(ord(c) < 33 or ord(c) > 126 for c in hrp):
        raise ValueError("bech32 prefix has invalid characters")
    try:
        values = [CHARSET.index(c) for c in rest]
    except ValueError:
        raise ValueError("bech32 data has a character outside the alphabet") from None
    if _polymod(_hrp_expand(hrp) + values) != 1:
        raise ValueError("bech32 checksum mismatch")
    return hrp, bytes(_convert_bits(values[:-6], 5, 8, False))
