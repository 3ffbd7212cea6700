"""Poisson upper tail, P(X >= k) for X ~ Poisson(lam), summed in log space (no SciPy needed)."""
from __future__ import annotations

import math


def upper_tail(k: int, lam: float) -> float:
    if k <= 0:
        return 1.0
    if lam <= 0:
        return 0.0
    log_lam = math.log(lam)
    total = 0.0
    i = k
    stop = k + 50 + int(20 * math.sqrt(lam + k))
    while i <= stop:
        term = math.exp(i * log_lam - lam - math.lgamma(i + 1))
        total += term
        if i > lam and term < total * 1e-16:
            break
        i += 1
    return min(1.0, total)
