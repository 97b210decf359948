"""Experiment statistics against reference values and independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from training.experiment_stats import (
    conversion_effect,
    cuped,
    holm,
    mean_effect,
    msprt,
    ratio_and_variance,
    ratio_effect,
    sample_ratio,
    units_needed,
)


def test_a_52_48_split_over_100k_units_is_a_sample_ratio_mismatch_and_50_50_is_not():
    assert sample_ratio({"A": 52_000, "B": 48_000}, {"A": 1, "B": 1}).mismatch
    even = sample_ratio({"A": 50_000, "B": 50_000}, {"A": 1, "B": 1})
    assert not even.mismatch and even.p_value == pytest.approx(1.0)


def test_fair_splits_are_flagged_in_under_one_percent_of_runs():
    rng = np.random.default_rng(0)
    flagged = sum(sample_ratio(dict(zip("AB", rng.multinomial(100_000, [0.5, 0.5]),
                                        strict=True)), {"A": 1, "B": 1}).mismatch
                  for _ in range(2000))
    assert flagged / 2000 < 0.01


def test_the_sample_ratio_check_uses_the_configured_weights():
    assert not sample_ratio({"A": 75_000, "B": 25_000}, {"A": 3, "B": 1}).mismatch
    assert sample_ratio({"A": 50_000, "B": 50_000}, {"A": 3, "B": 1}).mismatch


def test_conversion_interval_matches_the_katz_log_interval():
    effect = conversion_effect("conversion", (1000, 1100), (10_000, 10_000))
    se = math.sqrt((1 - 0.11) / 1100 + (1 - 0.10) / 1000)  # Katz et al. (1978)
    assert effect.relative == pytest.approx(0.10)
    assert effect.low == pytest.approx(math.exp(math.log(1.1) - 1.959964 * se) - 1, abs=2e-3)
    assert effect.high == pytest.approx(math.exp(math.log(1.1) + 1.959964 * se) - 1, abs=2e-3)
    pooled = 2100 / 20_000  # the two-proportion z-test by hand
    z = 0.01 / math.sqrt(pooled * (1 - pooled) * (2 / 10_000))
    assert effect.p_value == pytest.approx(2 * stats.norm.sf(z), rel=0.05)


def test_welch_matches_the_textbook_formula():
    rng = np.random.default_rng(1)
    a, b = rng.normal(10, 3, 400), rng.normal(10.6, 5, 300)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    t = (b.mean() - a.mean()) / math.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    assert mean_effect("revenue", a, b).p_value == pytest.approx(2 * stats.t.sf(abs(t), dof))


def test_the_ratio_variance_matches_a_bootstrap():
    rng = np.random.default_rng(2)
    impressions = rng.poisson(20, 2000) + 1
    clicks = rng.binomial(impressions, rng.beta(2, 30, 2000))
    ratio, variance = ratio_and_variance(clicks, impressions)
    draws = rng.integers(0, 2000, (2000, 2000))
    boot = clicks[draws].sum(axis=1) / impressions[draws].sum(axis=1)
    assert ratio == pytest.approx(clicks.sum() / impressions.sum())
    assert variance == pytest.approx(boot.var(), rel=0.1)


def test_ratio_effect_finds_a_planted_ctr_lift():
    rng = np.random.default_rng(3)
    shown = rng.poisson(20, (2, 20_000)) + 1
    clicks_a = rng.binomial(shown[0], 0.05)
    clicks_b = rng.binomial(shown[1], 0.055)
    effect = ratio_effect("ctr", (clicks_a, clicks_b), (shown[0], shown[1]))
    assert effect.low < 0.10 < effect.high and effect.significant()


def test_cuped_keeps_the_effect_and_removes_the_explained_variance():
    rng = np.random.default_rng(4)
    before = rng.gamma(2, 20, 20_000)
    after = 0.8 * before + rng.normal(0, 10, 20_000)
    arm = rng.random(20_000) < 0.5
    after[arm] += 2.0
    adjusted, theta = cuped(after, before)
    correlation = np.corrcoef(after, before)[0, 1]
    assert theta == pytest.approx(0.8, abs=0.05)
    assert adjusted.var() == pytest.approx(after.var() * (1 - correlation ** 2), rel=0.02)
    raw = after[arm].mean() - after[~arm].mean()
    assert adjusted[arm].mean() - adjusted[~arm].mean() == pytest.approx(raw, abs=0.5)


def test_msprt_matches_the_hand_computed_mixture_ratio_and_sequence():
    result = msprt(difference=3.0, variance=1.0, tau2=1.0, alpha=0.05)
    assert result.p_value == pytest.approx(math.exp(-(0.5 * math.log(0.5) + 9 / 4)), rel=1e-9)
    half = math.sqrt(2 * (math.log(2) + 2 * math.log(20)))
    assert (result.low, result.high) == pytest.approx((3 - half, 3 + half))


def test_peeking_every_day_keeps_the_sequential_false_positive_rate_and_breaks_the_fixed_one():
    """A/A tests read after each of 30 days: the fixed-horizon test declares a winner far more
    often than 5 %; the always-valid test stays under it."""
    rng = np.random.default_rng(5)
    runs, days, per_day = 400, 30, 200
    sequential = fixed = 0
    for _ in range(runs):
        a, b = rng.normal(0, 1, (2, days, per_day))
        seq_hit = fix_hit = False
        for day in range(1, days + 1):
            n = day * per_day
            difference = b[:day].mean() - a[:day].mean()
            variance = 2 / n
            seq_hit |= msprt(difference, variance, tau2=0.01).p_value < 0.05
            fix_hit |= 2 * stats.norm.sf(abs(difference) / math.sqrt(variance)) < 0.05
        sequential += seq_hit
        fixed += fix_hit
    assert sequential / runs <= 0.05
    assert fixed / runs > 0.15


def test_holm_matches_a_worked_example():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


def test_units_needed_for_a_ten_percent_lift_on_ten_percent_conversion():
    assert units_needed(0.10, 0.10) == pytest.approx(14_751, rel=0.01)  # Evan Miller's calculator


def test_alpha_spending_boundaries_match_published_obrien_fleming_values():
    """Lan-DeMets O'Brien-Fleming, five equal looks, two-sided alpha 0.05 (Jennison and
    Turnbull, Group Sequential Methods, table 2.x; ldbounds in R): 4.877, 3.357, 2.680,
    2.290, 2.031."""
    from training.experiment_stats import spending_boundaries

    bounds = spending_boundaries([0.2, 0.4, 0.6, 0.8, 1.0])
    assert bounds[1:] == pytest.approx([3.357, 2.680, 2.290, 2.031], abs=0.04)
    assert bounds[0] > 4.3


def test_a_group_sequential_test_read_daily_spends_its_whole_alpha():
    from training.experiment_stats import spending_boundaries

    looks = 14
    bounds = spending_boundaries([k / looks for k in range(1, looks + 1)])
    rng = np.random.default_rng(7)
    walk = np.cumsum(rng.standard_normal((20_000, looks)), axis=1)
    z = np.abs(walk / np.sqrt(np.arange(1, looks + 1)))
    rate = (z >= bounds).any(axis=1).mean()
    assert 0.04 < rate < 0.06
