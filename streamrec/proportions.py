"""Rates of yes/no outcomes (CTR, hit rate, conversion) and how sure we are of them.

One place for the statistics every comparison of arms uses: ``streamrec experiments
report`` prints Wilson intervals and a two-proportion test per arm, and the canary watch
(``online_models/drift/canary_loop.py``) rolls back a canary whose rate is significantly
below the control's. Wilson's interval rather than the normal one: it stays inside [0, 1]
and is honest for small counts and rates near 0, which is where CTRs live.

Pure: counts in, numbers out.

>>> low, high = wilson_interval(10, 100)
>>> round(low, 4), round(high, 4)
(0.0552, 0.1744)
>>> low, high = difference_interval(30, 1000, 50, 1000)
>>> round(low, 4), round(high, 4)
(-0.0377, -0.0028)
>>> test = two_proportion_z_test(30, 1000, 50, 1000)
>>> round(test.z, 3), round(test.p_less, 4), round(test.p_two_sided, 4)
(-2.282, 0.0112, 0.0225)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

_NORMAL = NormalDist()


def rate(successes: int, trials: int) -> float:
    """``successes / trials``; NaN without trials."""
    return successes / trials if trials else math.nan


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of the rate ``successes / trials`` ((0, 1) without trials)."""
    if trials <= 0:
        return 0.0, 1.0
    z = _NORMAL.inv_cdf(0.5 + confidence / 2)
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    spread = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - spread), min(1.0, centre + spread)


def difference_interval(
    successes_a: int, trials_a: int, successes_b: int, trials_b: int, confidence: float = 0.95
) -> tuple[float, float]:
    """An interval for rate a minus rate b: Newcombe's hybrid of the two Wilson intervals
    (keeps Wilson's good behaviour near 0 and for small counts)."""
    rate_a = rate(successes_a, trials_a) if trials_a else 0.0
    rate_b = rate(successes_b, trials_b) if trials_b else 0.0
    low_a, high_a = wilson_interval(successes_a, trials_a, confidence)
    low_b, high_b = wilson_interval(successes_b, trials_b, confidence)
    difference = rate_a - rate_b
    return (
        difference - math.hypot(rate_a - low_a, high_b - rate_b),
        difference + math.hypot(high_a - rate_a, rate_b - low_b),
    )


@dataclass(frozen=True, slots=True)
class ProportionTest:
    """Rate ``a`` against rate ``b`` (pooled two-proportion z-test).

    ``p_less``: the one-sided p-value of "a's rate is below b's"; ``p_two_sided``: of "they
    differ". Without trials in either group, or when every outcome is the same (no
    variance), ``z`` is 0 and both p-values are 1: no evidence either way.
    """

    rate_a: float
    rate_b: float
    z: float
    p_less: float
    p_two_sided: float

    @property
    def difference(self) -> float:
        return self.rate_a - self.rate_b


def two_proportion_z_test(
    successes_a: int, trials_a: int, successes_b: int, trials_b: int
) -> ProportionTest:
    """Compare ``successes_a / trials_a`` with ``successes_b / trials_b``."""
    rate_a, rate_b = rate(successes_a, trials_a), rate(successes_b, trials_b)
    if trials_a <= 0 or trials_b <= 0:
        return ProportionTest(rate_a, rate_b, 0.0, 1.0, 1.0)
    pooled = (successes_a + successes_b) / (trials_a + trials_b)
    variance = pooled * (1 - pooled) * (1 / trials_a + 1 / trials_b)
    if variance <= 0:
        return ProportionTest(rate_a, rate_b, 0.0, 1.0, 1.0)
    z = (rate_a - rate_b) / math.sqrt(variance)
    return ProportionTest(rate_a, rate_b, z, _NORMAL.cdf(z), 2 * _NORMAL.cdf(-abs(z)))
