"""Propensity families and their choice: the logistic model wins where the truth is linear in
transformed RFM and data are few, LightGBM where it is not; every family explains its scores
exactly and survives a save."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from training.propensity.model import PropensityModel
from training.propensity.selection import candidates, choose

RFM_COLUMNS = ["days_since_last_purchase", "purchases_365d", "orders_365d", "revenue_365d",
               "tenure_days"]


def rfm_shop(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Customers whose odds of buying are linear in log recency and log frequency (plus noise
    columns that carry nothing), as in a small shop with only purchases."""
    rng = np.random.default_rng(seed)
    orders = rng.poisson(rng.gamma(0.8, 2.0, n))
    tenure = rng.uniform(30, 365, n)
    since = np.where(orders > 0, rng.uniform(0, 1, n) * tenure, np.nan)
    X = pd.DataFrame({"days_since_last_purchase": since, "purchases_365d": orders * 1.3,
                      "orders_365d": orders, "revenue_365d": orders * rng.gamma(2, 20, n),
                      "tenure_days": tenure})
    for j in range(12):
        X[f"noise_{j}"] = rng.normal(size=n)
    logit = -1.0 + 0.9 * np.log1p(orders) - 0.5 * np.log1p(np.nan_to_num(since, nan=3650) / 30)
    return X, (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)


def interaction_shop(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Customers who buy when exactly one of two signals is high: no linear model can see it."""
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(rng.normal(size=(n, 4)), columns=["a", "b", "c", "d"])
    xor = (X["a"] > 0) ^ (X["b"] > 0)
    return X, (rng.random(n) < np.where(xor, 0.7, 0.2)).astype(int)


def chosen(shop, n_train: int, n_validation: int):
    X, y = shop(n_train, 1)
    X_validation, y_validation = shop(n_validation, 2)
    fitted = {name: (params, PropensityModel(**params).fit(X, y, X_validation, y_validation))
              for name, params in candidates({}).items()}
    return choose(fitted, X_validation, y_validation), fitted


def test_on_few_customers_with_a_linear_truth_the_logistic_model_is_chosen():
    choice, fitted = chosen(rfm_shop, 600, 2000)
    assert choice.name == "logistic", choice.validation
    X_test, y_test = rfm_shop(4000, 9)  # and the choice holds on customers it never saw
    free = fitted["lightgbm"][1]
    assert (roc_auc_score(y_test, choice.model.raw_score(X_test))
            > roc_auc_score(y_test, free.raw_score(X_test)))


def test_with_an_interaction_and_many_customers_lightgbm_is_chosen():
    choice, _ = chosen(interaction_shop, 8000, 4000)
    assert choice.model.config.family == "lightgbm", choice.validation
    assert choice.validation[choice.name] > choice.validation["logistic"] + 0.2


def test_naming_a_family_skips_the_choice():
    assert candidates({"family": "logistic", "C": 0.5}) == {"logistic": {"family": "logistic",
                                                                         "C": 0.5}}


@pytest.fixture(scope="module")
def families():
    X, y = rfm_shop(3000, 3)
    X_cal, y_cal = rfm_shop(1500, 4)
    return {family: PropensityModel(family=family, monotone=True, n_estimators=100)
            .fit(X, y, X_cal, y_cal) for family in ("lightgbm", "logistic", "blend")}, X_cal


@pytest.mark.parametrize("family", ["lightgbm", "logistic", "blend"])
def test_every_familys_contributions_add_up_to_its_raw_score(families, family):
    models, X = families
    contributions = models[family].contributions(X)
    assert {"bgnbd_p_alive", "bgnbd_expected_purchases_30d"} <= set(contributions.columns)
    np.testing.assert_allclose(contributions.sum(axis=1), models[family].raw_score(X),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("family", ["lightgbm", "logistic", "blend"])
def test_every_family_scores_the_same_after_a_save(families, family, tmp_path):
    models, X = families
    loaded = PropensityModel.load(models[family].save(tmp_path / family))
    np.testing.assert_allclose(loaded.predict_proba(X), models[family].predict_proba(X))
    np.testing.assert_allclose(loaded.contributions(X), models[family].contributions(X))


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 1499), st.integers(1, 20))
def test_a_monotone_model_never_scores_a_customer_lower_for_buying_more(families, row, more):
    models, X = families
    customer = X.iloc[[row]]
    busier = customer.assign(purchases_365d=customer["purchases_365d"] + more)
    model = models["lightgbm"]
    assert model.raw_score(busier)[0] >= model.raw_score(customer)[0] - 1e-9
