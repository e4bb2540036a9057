"""amcl.stats against hand-computed cases. With two degrees of freedom Student's t has a closed form,
F(t) = 1/2 + t / (2 sqrt(2 + t^2)), so three differences give intervals and p-values written out here."""

from __future__ import annotations

import math

import pytest

from amcl.stats import holm, paired_test, verdict


def t2_cdf(t: float) -> float:
    return 0.5 + t / (2 * math.sqrt(2 + t * t))


def t2_quantile(q: float) -> float:  # F(t) = q solved for t
    r = 2 * q - 1
    return math.copysign(math.sqrt(2 * r * r / (1 - r * r)), r)


def test_the_interval_and_p_of_three_differences_by_hand():
    test = paired_test([1.0, 2.0, 3.0])
    se = 1 / math.sqrt(3)  # std 1
    assert (test.n, test.mean, test.std) == (3, 2.0, 1.0)
    assert t2_quantile(0.975) == pytest.approx(4.302652729911275)
    assert test.low == pytest.approx(2 - 4.302652729911275 * se) and test.high == pytest.approx(2 + 4.30265273 * se)
    assert test.p == pytest.approx(2 * (1 - t2_cdf(2 / se)))  # 0.0742: not below 0.05 with 3 seeds
    assert test.p == pytest.approx(0.0741799)
    assert paired_test([-3.0, -2.0, -1.0]).p == pytest.approx(test.p)


def test_the_interval_covers_zero_exactly_when_p_is_at_least_alpha():
    for data in ([0.5, 1.5, 0.8, 1.1], [0.2, -0.1, 0.4, 0.0, 0.3], [2.0, 2.1, 1.9], [-1.0, 3.0, 0.5]):
        test = paired_test(data)
        assert (test.low <= 0 <= test.high) == (test.p >= 0.05), data


def test_equivalence_by_two_one_sided_tests_by_hand():
    se = 1 / math.sqrt(3)
    test = paired_test([0.0, 1.0, 2.0], margin=3.0)  # mean 1
    assert test.equivalence_p == pytest.approx(max(1 - t2_cdf((1 + 3) / se), t2_cdf((1 - 3) / se)))
    assert test.equivalence_p == pytest.approx(0.03709, abs=1e-5)
    assert verdict(test, True, margin_text="3") == "equivalent within ±3"
    narrower = paired_test([0.0, 1.0, 2.0], margin=2.0)
    assert narrower.equivalence_p == pytest.approx(t2_cdf((1 - 2) / se))  # 0.113
    assert verdict(narrower, True, margin_text="2") == "no difference detected"
    for margin in (0.3, 0.5, 0.8, 1.5):  # TOST at 0.05 <=> the 90% interval inside (-M, M)
        data = [0.1, -0.2, 0.3, 0.05, 0.2]
        inside = paired_test(data, confidence=0.90)
        assert (paired_test(data, margin=margin).equivalence_p < 0.05) == (-margin < inside.low and
                                                                        inside.high < margin)


def test_holm_by_hand():
    assert holm([0.01, 0.04, 0.03, None]) == pytest.approx([0.03, 0.06, 0.06, None])
    assert holm([0.5, 0.5]) == [1.0, 1.0] and holm([]) == [] and holm([None]) == [None]
    assert holm([0.04]) == [0.04]  # one test: unchanged


def test_verdicts_follow_the_metric_direction():
    gain = paired_test([1.0, 1.2, 0.9, 1.1])
    assert verdict(gain, higher_is_better=True) == "better" and verdict(gain, higher_is_better=False) == "worse"
    assert verdict(gain, True, p=0.2) == "no difference detected"  # e.g. after Holm
    assert verdict(paired_test([0.5]), True) == "too few seeds (1)" and paired_test([]).mean is None


def test_identical_differences_have_no_spread():
    assert paired_test([0.0, 0.0, 0.0]).p == 1.0
    same = paired_test([0.5, 0.5, 0.5], margin=1.0)
    assert (same.p, same.low, same.high, same.equivalence_p) == (0.0, 0.5, 0.5, 0.0)
