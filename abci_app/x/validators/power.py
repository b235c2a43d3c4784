"""How the set CometBFT is told moves toward the bonds: computed apart from applying it.

CometBFT's light clients trust a new validator set while a third of the old one's power signs it; a block
that moved more than a third at once could leave them behind and make a takeover cheap. So one block's
updates move at most a third of the current total power (sum of |change|), in this order: validators being
punished lose their power first (jailed or tombstoned: their say must go soonest), then newcomers and bond
increases arrive (biggest target first), and only then do voluntary leavers lose theirs, so that a set whose
members all leave at once hands over to its replacements instead of shrinking to nothing. Cuts never take the
total below MIN_TOTAL: under it a third rounds to zero and the set could never change again.
"""

from __future__ import annotations

from collections.abc import Mapping, Set

MIN_TOTAL = 3


def targets(ranked: list[tuple[bytes, int]], max_validators: int, power_reduction: int) -> dict[bytes, int]:
    """address -> power it should have: bond // power_reduction for the max_validators highest bonds
    (ranked is (address, bond), highest bond first, ties by address), nothing for the rest."""
    out = {}
    for address, bond in ranked[:max_validators]:
        power = bond // power_reduction
        if power > 0:
            out[address] = power
    return out


def step(current: Mapping[bytes, int], wanted: Mapping[bytes, int], punished: Set[bytes] = frozenset()
         ) -> dict[bytes, int]:
    """The powers to change this block (address -> new power, 0 = leaves the set), never moving more than a
    third of sum(current) in all; punished addresses are cut first."""
    total = sum(current.values())
    budget = total // 3
    addresses = sorted(set(current) | set(wanted))
    cuts = [a for a in addresses if wanted.get(a, 0) < current.get(a, 0)]
    urgent = sorted((wanted.get(a, 0), a) for a in cuts if a in punished)
    voluntary = sorted((wanted.get(a, 0), a) for a in cuts if a not in punished)
    rises = sorted((-wanted[a], a) for a in addresses if wanted.get(a, 0) > current.get(a, 0))
    out: dict[bytes, int] = {}
    for kind, queue in (("cut", urgent), ("rise", rises), ("cut", voluntary)):
        for _, a in queue:
            now = current.get(a, 0)
            if kind == "cut":
                move = min(now - wanted.get(a, 0), budget, max(0, total - MIN_TOTAL))
                out_power = now - move
            else:
                move = min(wanted[a] - now, budget)
                out_power = now + move
            if move:
                out[a], budget = out_power, budget - move
                total += out_power - now
    return out
