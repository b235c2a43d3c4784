"""How the set CometBFT is told moves toward the bonds: computed apart from applying it.

CometBFT's light clients trust a new validator set while a third of the old one's power signs it; a block
that moved more than a third at once could leave them behind and make a takeover cheap. So one block's
updates move at most a third of the current total power (sum of |change|): removals and cuts first (a
leaving or punished validator loses its say soonest), then increases, biggest target first.
"""

from __future__ import annotations

from collections.abc import Mapping


def targets(ranked: list[tuple[bytes, int]], max_validators: int, power_reduction: int) -> dict[bytes, int]:
    """address -> power it should have: bond // power_reduction for the max_validators highest bonds
    (ranked is (address, bond), highest bond first, ties by address), nothing for the rest."""
    out = {}
    for address, bond in ranked[:max_validators]:
        power = bond // power_reduction
        if power > 0:
            out[address] = power
    return out


def step(current: Mapping[bytes, int], wanted: Mapping[bytes, int]) -> dict[bytes, int]:
    """The powers to change this block (address -> new power, 0 = leaves the set), never moving more
    than a third of sum(current) in all."""
    budget = sum(current.values()) // 3
    addresses = sorted(set(current) | set(wanted))
    cuts = sorted((wanted.get(a, 0), a) for a in addresses if wanted.get(a, 0) < current.get(a, 0))
    rises = sorted((-wanted[a], a) for a in addresses if wanted.get(a, 0) > current.get(a, 0))
    out: dict[bytes, int] = {}
    for _, a in cuts:
        move = min(current[a] - wanted.get(a, 0), budget)
        if move:
            out[a], budget = current[a] - move, budget - move
    for _, a in rises:
        move = min(wanted[a] - current.get(a, 0), budget)
        if move:
            out[a], budget = current.get(a, 0) + move, budget - move
    return out
