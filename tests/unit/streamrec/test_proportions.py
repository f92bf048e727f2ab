"""Wilson intervals, Newcombe's difference interval and the two-proportion z-test, against
values computed by hand."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamrec.proportions import difference_interval, two_proportion_z_test, wilson_interval


def test_wilson_interval_of_20_in_200() -> None:
    # By hand: p = 0.1, z^2/n = 0.019207; centre 0.107537, half-width 0.041868.
    low, high = wilson_interval(20, 200)
    assert low == pytest.approx(0.06567, abs=1e-5)
    assert high == pytest.approx(0.14941, abs=1e-5)


def test_wilson_interval_at_the_edges_stays_in_0_1() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(0, 50)
    assert low == 0.0 and high == pytest.approx(0.07135, abs=1e-5)
    low, high = wilson_interval(50, 50)
    assert high == 1.0 and low == pytest.approx(1 - 0.07135, abs=1e-5)


def test_two_proportion_test_of_30_in_200_against_20_in_200() -> None:
    # By hand: pooled 0.125, se sqrt(0.125 * 0.875 * 0.01) = 0.033072, z = 1.5119,
    # two-sided p = erfc(1.5119 / sqrt 2) = 0.1306, one-sided "below" p = 0.9347.
    test = two_proportion_z_test(30, 200, 20, 200)
    assert test.difference == pytest.approx(0.05)
    assert test.z == pytest.approx(1.51186, abs=1e-4)
    assert test.p_two_sided == pytest.approx(0.13057, abs=1e-4)
    assert test.p_less == pytest.approx(0.93471, abs=1e-4)


def test_difference_interval_of_30_in_200_against_20_in_200() -> None:
    # Newcombe by hand from the Wilson intervals (0.107136, 0.206056) and (0.065670,
    # 0.149406): 0.05 -/+ hypot(0.042864, 0.049406) / hypot(0.056056, 0.034330).
    low, high = difference_interval(30, 200, 20, 200)
    assert low == pytest.approx(-0.015408, abs=1e-5)
    assert high == pytest.approx(0.115733, abs=1e-5)


def test_a_large_difference_is_significant_and_no_data_is_not() -> None:
    assert two_proportion_z_test(300, 1000, 200, 1000).p_two_sided < 1e-6
    assert two_proportion_z_test(0, 0, 5, 10).p_two_sided == 1.0
    assert two_proportion_z_test(0, 10, 0, 10).p_two_sided == 1.0


@given(st.integers(0, 500), st.integers(0, 500))
def test_the_interval_holds_the_rate(successes: int, failures: int) -> None:
    trials = successes + failures
    low, high = wilson_interval(successes, trials)
    assert 0.0 <= low <= high <= 1.0
    if trials:
        assert low - 1e-12 <= successes / trials <= high + 1e-12
        assert not math.isnan(low)
