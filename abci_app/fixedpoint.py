"""Fixed-point arithmetic the modules share. Fractions are integers in parts per million (ppm);
every division floors, as Python's // does, so every node rounds the same way."""

from __future__ import annotations

PPM = 1_000_000
"""One whole, in parts per million."""


def ppm_of(amount: int, parts_ppm: int) -> int:
    """parts_ppm / 1e6 of amount, rounded down."""
    return amount * parts_ppm // PPM


def ema(current: int, target: int, alpha_ppm: int) -> int:
    """One step of an exponential moving average: current + alpha * (target - current)."""
    return current + alpha_ppm * (target - current) // PPM


def clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))
