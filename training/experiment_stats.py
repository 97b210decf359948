"""The statistics of an experiment report: is B better than A, by how much, and can we tell yet?

scipy and statsmodels do every test they provide (chi-square, proportions, Welch's t, multiple
testing); this module writes only what they lack, each checked in tests/test_experiment_stats.py
against an independent computation:

* **sample-ratio mismatch**: chi-square of the units per variant against the configured weights
  (``scipy.stats.chisquare``); below ``SRM_ALPHA`` the assignment is broken and no verdict is
  given;
* **conversion** (a proportion per unit): the relative effect B/A - 1 with its interval
  (statsmodels' ``confint_proportions_2indep``, ratio, log-adjusted) and the two-sided test
  (``test_proportions_2indep``);
* **means per unit** (revenue per customer): Welch's t (``scipy.stats.ttest_ind``,
  ``equal_var=False``); the relative effect's interval by the delta method;
* **ratio metrics** (click-through: clicks / impressions, both summed per unit): the delta method
  for a ratio of means (Deng et al., "Applying the Delta Method in Metric Analytics", 2018);
* **CUPED** (Deng et al., 2013): each unit's metric minus theta x (its pre-exposure covariate
  minus the covariate's mean), theta = cov(Y, X) / var(X) over both arms; same expected effect,
  less variance;
* **peeking-safe**: the mixture sequential probability ratio test (mSPRT, Johari et al., "Always
  Valid Inference", 2017) with a normal mixture of variance ``tau2`` over the effect: an
  always-valid p-value and confidence sequence that keep their error rate however often the
  report is read; the fixed-horizon interval is shown beside it;
* **several variants and metrics**: Holm's correction (``statsmodels.stats.multitest``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

SRM_ALPHA = 0.001


@dataclass(frozen=True)
class SampleRatio:
    counts: dict[str, int]
    expected: dict[str, float]
    p_value: float

    @property
    def mismatch(self) -> bool:
        return self.p_value < SRM_ALPHA


def sample_ratio(counts: dict[str, int], weights: dict[str, float]) -> SampleRatio:
    """Chi-square of the units each variant got against the weights configured."""
    total = sum(counts.values())
    weight = sum(weights[v] for v in counts)
    expected = {v: total * weights[v] / weight for v in counts}
    p_value = float(stats.chisquare(list(counts.values()), list(expected.values())).pvalue)
    return SampleRatio(dict(counts), expected, p_value)


@dataclass(frozen=True)
class Effect:
    """B against A on one metric: the relative effect (B / A - 1) and its interval."""

    metric: str
    control: float
    treatment: float
    relative: float
    low: float
    high: float
    p_value: float
    units: tuple[int, int]

    def significant(self, alpha: float = 0.05) -> bool:
        return self.p_value < alpha


def conversion_effect(metric: str, converted: tuple[int, int], units: tuple[int, int],
                      alpha: float = 0.05) -> Effect:
    """Proportions of units that converted, control first."""
    from statsmodels.stats.proportion import (
        confint_proportions_2indep,
        test_proportions_2indep,
    )

    (x_a, x_b), (n_a, n_b) = converted, units
    low, high = confint_proportions_2indep(x_b, n_b, x_a, n_a, compare="ratio",
                                           method="log-adjusted", alpha=alpha)
    p_value = test_proportions_2indep(x_b, n_b, x_a, n_a, compare="diff").pvalue
    rate_a, rate_b = x_a / n_a, x_b / n_b
    return Effect(metric, rate_a, rate_b, rate_b / rate_a - 1 if rate_a else math.nan,
                  float(low) - 1, float(high) - 1, float(p_value), (n_a, n_b))


def mean_effect(metric: str, control: np.ndarray, treatment: np.ndarray,
                alpha: float = 0.05) -> Effect:
    """Means per unit (Welch), with the relative effect's delta-method interval."""
    control, treatment = np.asarray(control, float), np.asarray(treatment, float)
    test = stats.ttest_ind(treatment, control, equal_var=False)
    mean_a, mean_b = control.mean(), treatment.mean()
    var_a = control.var(ddof=1) / len(control)
    var_b = treatment.var(ddof=1) / len(treatment)
    relative, se = _relative(mean_a, mean_b, var_a, var_b)
    z = stats.norm.ppf(1 - alpha / 2)
    return Effect(metric, float(mean_a), float(mean_b), relative, relative - z * se,
                  relative + z * se, float(test.pvalue), (len(control), len(treatment)))


def ratio_effect(metric: str, numerators: tuple[np.ndarray, np.ndarray],
                 denominators: tuple[np.ndarray, np.ndarray], alpha: float = 0.05) -> Effect:
    """A ratio of sums over units (clicks / impressions), control first: each arm's ratio and
    its variance by the delta method, then the relative effect as for means."""
    (num_a, num_b), (den_a, den_b) = numerators, denominators
    ratio_a, var_a = ratio_and_variance(num_a, den_a)
    ratio_b, var_b = ratio_and_variance(num_b, den_b)
    relative, se = _relative(ratio_a, ratio_b, var_a, var_b)
    z_stat = (ratio_b - ratio_a) / math.sqrt(var_a + var_b) if var_a + var_b > 0 else 0.0
    p_value = 2 * stats.norm.sf(abs(z_stat))
    z = stats.norm.ppf(1 - alpha / 2)
    return Effect(metric, ratio_a, ratio_b, relative, relative - z * se, relative + z * se,
                  float(p_value), (len(num_a), len(num_b)))


def ratio_and_variance(numerator: np.ndarray, denominator: np.ndarray) -> tuple[float, float]:
    """sum(numerator) / sum(denominator) over units, and the variance of that estimate:
    (var(N) - 2 R cov(N, D) + R^2 var(D)) / (n mean(D)^2), at least 0 (the terms cancel
    exactly when every unit has the same ratio, and rounding may leave a hair below)."""
    numerator, denominator = np.asarray(numerator, float), np.asarray(denominator, float)
    n = len(numerator)
    mean_n, mean_d = numerator.mean(), denominator.mean()
    ratio = mean_n / mean_d
    covariance = np.cov(numerator, denominator, ddof=1)
    variance = (covariance[0, 0] - 2 * ratio * covariance[0, 1]
                + ratio ** 2 * covariance[1, 1]) / (n * mean_d ** 2)
    return float(ratio), max(float(variance), 0.0)


def _relative(mean_a: float, mean_b: float, var_a: float, var_b: float) -> tuple[float, float]:
    """B / A - 1 and its standard error by the delta method (A and B independent)."""
    if mean_a == 0:
        return math.nan, math.nan
    relative = mean_b / mean_a - 1
    se = math.sqrt(var_b / mean_a ** 2 + mean_b ** 2 * var_a / mean_a ** 4)
    return relative, se


def cuped(values: np.ndarray, covariate: np.ndarray) -> tuple[np.ndarray, float]:
    """The metric adjusted by its pre-exposure covariate, and theta. Pass both arms together,
    so that they are adjusted by the same theta."""
    values, covariate = np.asarray(values, float), np.asarray(covariate, float)
    variance = covariate.var(ddof=1)
    theta = float(np.cov(values, covariate, ddof=1)[0, 1] / variance) if variance > 0 else 0.0
    return values - theta * (covariate - covariate.mean()), theta


@dataclass(frozen=True)
class Sequential:
    """The always-valid view of a difference in means (treatment minus control)."""

    difference: float
    low: float
    high: float
    p_value: float


def msprt(difference: float, variance: float, tau2: float, alpha: float = 0.05) -> Sequential:
    """mSPRT with a normal mixture N(0, tau2) over the true difference, for an estimate
    ``difference`` whose variance is ``variance`` at this look.

    The mixture likelihood ratio against "no difference" is
    ``sqrt(V / (V + tau2)) * exp(tau2 * d^2 / (2 V (V + tau2)))``; its inverse (capped at 1) is
    the always-valid p-value at this look (a report keeps the smallest it has shown), and the
    differences it does not reject at ``alpha`` form the confidence sequence
    ``d +- sqrt(V (V + tau2) / tau2 * (log((V + tau2) / V) + 2 log(1 / alpha)))``."""
    if variance <= 0:
        return Sequential(difference, difference, difference, 0.0 if difference else 1.0)
    total = variance + tau2
    log_ratio = 0.5 * math.log(variance / total) + tau2 * difference ** 2 / (2 * variance * total)
    p_value = min(1.0, math.exp(-log_ratio))
    half = math.sqrt(variance * total / tau2 * (math.log(total / variance)
                                                + 2 * math.log(1 / alpha)))
    return Sequential(difference, difference - half, difference + half, p_value)


def holm(p_values: list[float], alpha: float = 0.05) -> list[float]:
    """Holm-adjusted p-values, for several variants or metrics read together."""
    from statsmodels.stats.multitest import multipletests

    if not p_values:
        return []
    return [float(p) for p in multipletests(p_values, alpha=alpha, method="holm")[1]]


def units_needed(baseline: float, relative_effect: float, alpha: float = 0.05,
                 power: float = 0.8) -> int:
    """Units per arm to detect a relative change in a conversion rate (two-sided, normal
    approximation with Cohen's h; statsmodels' power solver)."""
    from statsmodels.stats.power import NormalIndPower
    from statsmodels.stats.proportion import proportion_effectsize

    target = min(max(baseline * (1 + relative_effect), 1e-9), 1 - 1e-9)
    size = abs(proportion_effectsize(target, baseline))
    return math.ceil(NormalIndPower().solve_power(size, alpha=alpha, power=power, ratio=1.0))


def obrien_fleming_spent(fraction: float, alpha: float = 0.05) -> float:
    """Lan-DeMets O'Brien-Fleming alpha spending, two-sided: the alpha a test may have used by
    information fraction ``fraction`` (0..1), 4 - 4 Phi(z_{alpha/4} / sqrt(t)); all of it at
    t = 1."""
    if fraction <= 0:
        return 0.0
    return float(4 - 4 * stats.norm.cdf(stats.norm.isf(alpha / 4) / math.sqrt(min(fraction, 1))))


def spending_boundaries(fractions: list[float], alpha: float = 0.05, paths: int = 400_000,
                        seed: int = 0) -> np.ndarray:
    """Two-sided z boundaries for looks at increasing information ``fractions``, such that
    under no difference the first crossing at look k has probability spent(t_k) - spent(t_k-1)
    (group-sequential design, Lan and DeMets 1983). The joint law of the looks' z statistics
    (a standardized Brownian motion) is sampled rather than integrated; with the default paths
    a boundary is within a few hundredths of the exact one (tested against published values).
    Deterministic for a seed."""
    fractions = np.asarray(fractions, float)
    rng = np.random.default_rng(seed)
    increments = np.diff(np.r_[0.0, fractions])
    walk = np.cumsum(rng.standard_normal((paths, len(fractions))) * np.sqrt(increments), axis=1)
    z = np.abs(walk / np.sqrt(fractions))
    alive = np.ones(paths, dtype=bool)
    bounds, spent_before = [], 0.0
    for look, fraction in enumerate(fractions):
        spent = obrien_fleming_spent(fraction, alpha)
        crossing = (spent - spent_before) * paths  # paths this look may stop
        values = np.sort(z[alive, look])[::-1]
        count = int(round(crossing))
        bound = values[count - 1] if 0 < count <= len(values) else (
            values[0] + 1e-9 if len(values) else math.inf)
        if count == 0:
            bound = max(bound, float(values[0]) + 1e-9) if len(values) else math.inf
        bounds.append(float(bound))
        alive &= z[:, look] < bound
        spent_before = spent
    return np.array(bounds)
