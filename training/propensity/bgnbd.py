"""BG/NBD: the classic "will this customer buy again?" model (Fader, Hardie & Lee 2005).

While alive, a customer buys at a Poisson rate λ ~ Gamma(r, α); after each purchase they drop
out with probability p ~ Beta(a, b). From each customer's repeat-purchase count ``x``, the time
of their last purchase ``t_x`` and their age ``T`` (all in the same time unit, measured from
their first purchase), the four parameters are fitted by maximum likelihood.

It is nextbest's reference for purchase propensity: the supervised models must beat it. It is
implemented here (log-likelihood and closed-form predictions, fitted with scipy) because the
maintained packages for it do not install cleanly with our stack.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.special import betaln, gammaln, hyp2f1


@dataclass(frozen=True)
class BGNBDParams:
    r: float
    alpha: float
    a: float
    b: float


def _check(x, t_x, T) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x, t_x, T = (np.asarray(v, dtype=float) for v in (x, t_x, T))
    if (x < 0).any() or (t_x < 0).any() or (t_x > T).any():
        raise ValueError("BG/NBD needs frequency >= 0 and 0 <= recency (t_x) <= age (T) for every "
                         "customer")
    return x, t_x, T


def log_likelihood(params: BGNBDParams, x, t_x, T) -> np.ndarray:
    """Per-customer log-likelihood (equation 6 of the paper)."""
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    a1 = gammaln(r + x) - gammaln(r) + r * np.log(alpha)
    a2 = betaln(a, b + x) - betaln(a, b)
    a3 = -(r + x) * np.log(alpha + T)
    a4 = np.where(x > 0,
                  np.log(a) - np.log(np.maximum(b + x - 1, 1e-12)) - (r + x) * np.log(alpha + t_x),
                  -np.inf)
    return a1 + a2 + np.logaddexp(a3, a4)


class BGNBD:
    """Fit with ``fit(x, t_x, T)``; then predict for the same or other customers."""

    def __init__(self, penalizer: float = 0.0) -> None:
        self.penalizer = penalizer

    def fit(self, x, t_x, T) -> BGNBD:
        x, t_x, T = _check(x, t_x, T)
        start = np.log([0.5, float(np.mean(T)) or 1.0, 1.0, 1.0])
        # customers with the same history have the same likelihood: each distinct one is
        # computed once and counted as often as it occurs (the same sum, far fewer terms)
        histories, counts = np.unique(np.column_stack([x, t_x, T]), axis=0, return_counts=True)
        x, t_x, T = histories.T
        total = counts.sum()

        def negative(log_params: np.ndarray) -> float:
            params = BGNBDParams(*np.exp(log_params))
            penalty = self.penalizer * float(np.sum(np.exp(log_params) ** 2))
            return -float(counts @ log_likelihood(params, x, t_x, T)) / total + penalty

        # the search passes through parameters whose likelihood overflows: those are infinite
        # (rejected by the optimizer), not something to warn a user about
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            result = minimize(negative, start, method="Nelder-Mead",
                              options={"maxiter": 8000, "xatol": 1e-7, "fatol": 1e-10})
            if not result.success:
                result = minimize(negative, result.x, method="L-BFGS-B")
        self.params_ = BGNBDParams(*np.exp(result.x))
        self.log_likelihood_ = -result.fun * len(x)
        return self

    def probability_alive(self, x, t_x, T) -> np.ndarray:
        x, t_x, T = _check(x, t_x, T)
        p = self.params_
        with np.errstate(over="ignore"):  # a long-silent frequent buyer: ratio inf, P(alive) 0
            ratio = np.where(x > 0, (p.a / (p.b + x - 1))
                             * ((p.alpha + T) / (p.alpha + t_x)) ** (p.r + x), 0.0)
        return 1.0 / (1.0 + ratio)

    def expected_purchases(self, t: float, x, t_x, T) -> np.ndarray:
        """Expected purchases in the next ``t`` for each customer (equation 10)."""
        x, t_x, T = _check(x, t_x, T)
        p = self.params_
        z = t / (p.alpha + T + t)
        head = (p.a + p.b + x - 1) / (p.a - 1) if p.a != 1 else np.inf
        body = 1 - ((p.alpha + T) / (p.alpha + T + t)) ** (p.r + x) * hyp2f1(
            p.r + x, p.b + x, p.a + p.b + x - 1, z)
        with np.errstate(over="ignore"):  # as in probability_alive: inf tail, 0 expected
            tail = 1 + np.where(x > 0, p.a / (p.b + x - 1) * ((p.alpha + T) / (p.alpha + t_x))
                                ** (p.r + x), 0.0)
        return head * body / tail

    def probability_of_purchase(self, t: float, x, t_x, T) -> np.ndarray:
        """P(at least one purchase in the next ``t``): alive, and the Poisson clock ticks."""
        x, t_x, T = _check(x, t_x, T)
        p = self.params_
        # Given alive, lambda | history ~ Gamma(r + x, alpha + T).
        none_if_alive = ((p.alpha + T) / (p.alpha + T + t)) ** (p.r + x)
        return self.probability_alive(x, t_x, T) * (1 - none_if_alive)

    @staticmethod
    def sample(params: BGNBDParams, n: int, T: float, seed: int = 0) -> tuple[np.ndarray, ...]:
        """Simulate ``n`` customers observed for ``T``: returns (x, t_x, T) — for tests."""
        rng = np.random.default_rng(seed)
        lam = rng.gamma(params.r, 1 / params.alpha, n)
        drop = rng.beta(params.a, params.b, n)
        x = np.zeros(n)
        t_x = np.zeros(n)
        for i in range(n):
            now = 0.0
            while True:
                now += rng.exponential(1 / lam[i]) if lam[i] > 0 else np.inf
                if now > T:
                    break
                x[i] += 1
                t_x[i] = now
                if rng.random() < drop[i]:
                    break
        return x, t_x, np.full(n, T)
