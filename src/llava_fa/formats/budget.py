"""Fitting a layer into a bit budget: the largest rank whose stored layer fits.

Shared by the `lowrank` format (asvd / svd-llm `bpw`) and the `fourier` planner of `fa` (`bpw`):
each passes how many bits its layer stores at a given rank, everything else fixed.
"""

from __future__ import annotations

from typing import Callable


def largest_rank_within(bits_of: Callable[[int], float], budget_bits: float, max_rank: int) -> int:
    """The largest rank r in [0, max_rank] with bits_of(r) <= budget_bits (0 when none fits).

    Stored bits never fall as the rank grows, so a binary search finds it in log2(max_rank) calls.
    """
    lo, hi = 0, max_rank
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if bits_of(mid) <= budget_bits:
            lo = mid
        else:
            hi = mid - 1
    return lo
