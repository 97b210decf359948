"""Propensity: no leakage, calibration that helps, reasons that add up, exports that filter,
BG/NBD that recovers its parameters, and clear errors for bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from features.settings import Settings
from features.synthetic import ShopConfig, generate_shop, store_shop
from features.warehouse import Warehouse
from serving.cli import app
from tests.conftest import promote_by_hand
from training.propensity.bgnbd import BGNBD, BGNBDParams
from training.propensity.datasets import (
    model_inputs,
    plan_cutoffs,
    purchase_snapshot,
)
from training.propensity.evaluate import classification_metrics, deciles, lift_table
from training.propensity.model import PropensityModel
from training.propensity.scoring import feature_phrase, reasons
from training.propensity_job import train_propensity

HORIZON = pd.Timedelta(days=14)


@pytest.fixture(scope="module")
def shop():
    return generate_shop(ShopConfig(n_customers=600, n_products=120, days=120, seed=5))


@pytest.fixture(scope="module")
def inputs(shop):
    """(X, y) of two early snapshots to train on, and of a third to calibrate on."""
    cutoffs = [pd.Timestamp(shop.config.start) + pd.Timedelta(days=d) for d in (40, 55, 70)]
    snaps = [purchase_snapshot(shop.events, shop.items, c, HORIZON) for c in cutoffs]
    return (*model_inputs(pd.concat(snaps[:2])), *model_inputs(snaps[2]))


@pytest.fixture(scope="module")
def fitted(inputs):
    """A model trained on two early snapshots and calibrated on a third."""
    X, y, X_cal, y_cal = inputs
    return PropensityModel(n_estimators=200).fit(X, y, X_cal, y_cal), X_cal


@pytest.fixture(scope="module")
def isotonic(inputs):
    """The same, calibrated by (centered) isotonic regression on its few hundred rows."""
    X, y, X_cal, y_cal = inputs
    return PropensityModel(n_estimators=200, calibration="isotonic").fit(X, y, X_cal, y_cal)


@hypothesis_settings(max_examples=25, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(day=st.integers(20, 90), shift_hours=st.integers(0, 40 * 24))
def test_events_after_the_cutoff_never_reach_the_features(shop, day, shift_hours):
    cutoff = pd.Timestamp(shop.config.start) + pd.Timedelta(days=day)
    snapshot = purchase_snapshot(shop.events, shop.items, cutoff, HORIZON)
    later = shop.events["timestamp"] >= cutoff
    moved = shop.events.copy()
    moved.loc[later, "timestamp"] += pd.Timedelta(hours=shift_hours)  # rewrite the future
    again = purchase_snapshot(moved, shop.items, cutoff, HORIZON)
    features = [c for c in snapshot.columns if c != "label"]
    pd.testing.assert_frame_equal(snapshot[features], again[features])


def test_labels_come_only_from_the_horizon_after_the_cutoff(shop):
    cutoff = pd.Timestamp(shop.config.start) + pd.Timedelta(days=60)
    snapshot = purchase_snapshot(shop.events, shop.items, cutoff, HORIZON)
    events = shop.events
    window = events[(events["timestamp"] >= cutoff) & (events["timestamp"] < cutoff + HORIZON)]
    buyers = set(window.loc[window["event_type"] == "purchase", "customer_id"])
    assert set(snapshot.index[snapshot["label"] == 1]) == buyers & set(snapshot.index)
    before = events[events["timestamp"] < cutoff]
    assert set(snapshot.index) == set(before["customer_id"])


def test_every_training_label_is_observed_before_the_test_snapshot_begins():
    first, last = pd.Timestamp("2024-01-01", tz="UTC"), pd.Timestamp("2024-07-01", tz="UTC")
    plan = plan_cutoffs(first, last, horizon_days=30, n_train=4, step_days=14)
    for cutoff in (*plan.train, plan.calibration):
        assert cutoff + plan.horizon <= plan.test
    assert plan.test + plan.horizon <= last


def test_a_plan_that_does_not_fit_the_history_says_why():
    first, last = pd.Timestamp("2024-01-01", tz="UTC"), pd.Timestamp("2024-03-01", tz="UTC")
    with pytest.raises(ValueError, match="the data starts 2024-01-01. Use fewer snapshots"):
        plan_cutoffs(first, last, horizon_days=30, n_train=4)


def test_a_negative_horizon_is_refused():
    with pytest.raises(ValueError, match="horizon must be a positive number of days, got -3"):
        plan_cutoffs(pd.Timestamp("2024-01-01", tz="UTC"), pd.Timestamp("2024-12-01", tz="UTC"),
                     horizon_days=-3)


def test_calibration_on_later_data_repairs_a_shifted_base_rate():
    # Training rows have twice the odds of buying that calibration and test rows have (a
    # seasonal shift). Calibrating on the later rows must improve the Brier score on the test.
    rng = np.random.default_rng(0)

    def draw(n, shift):
        X = pd.DataFrame(rng.normal(size=(n, 3)), columns=["a", "b", "c"])
        logit = 1.5 * X["a"] - X["b"] + shift
        return X, (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)

    X, y = draw(6000, 1.0)
    X_cal, y_cal = draw(3000, -1.0)
    X_test, y_test = draw(3000, -1.0)
    raw = PropensityModel(calibration="none").fit(X, y, X_cal, y_cal)
    calibrated = PropensityModel(calibration="isotonic").fit(X, y, X_cal, y_cal)
    raw_brier = classification_metrics(y_test, raw.predict_proba(X_test)[:, 1])["brier"]
    calibrated_brier = classification_metrics(y_test, calibrated.predict_proba(X_test)[:, 1])["brier"]
    assert calibrated_brier < raw_brier - 0.01


def test_contributions_add_up_to_the_raw_score(fitted):
    model, X = fitted
    contributions = model.contributions(X)
    np.testing.assert_allclose(contributions.sum(axis=1), model.raw_score(X), rtol=1e-6, atol=1e-6)


def test_shapley_contributions_add_up_to_the_raw_score_too(fitted):
    model, X = fitted
    shap = model.contributions(X.head(50), method="shap")
    np.testing.assert_allclose(shap.sum(axis=1), model.raw_score(X.head(50)), rtol=1e-6,
                               atol=1e-6)


def test_on_single_split_trees_path_attributions_are_the_shapley_values(inputs):
    X, y, X_cal, y_cal = inputs
    stumps = PropensityModel(num_leaves=2, n_estimators=50).fit(X, y, X_cal, y_cal)
    np.testing.assert_allclose(stumps.contributions(X_cal), stumps.contributions(X_cal, "shap"),
                               rtol=1e-6, atol=1e-9)


def test_reasons_name_the_features_that_moved_the_score_most(fitted):
    model, X = fitted
    row = X.iloc[[0]]
    contributions = model.contributions(row).drop(columns="bias").iloc[0]
    strongest = contributions.abs().idxmax()
    words = reasons(model, row)[0]
    assert len(words) == 3
    assert words[0].startswith(feature_phrase(strongest))
    direction = "raises" if contributions[strongest] > 0 else "lowers"
    assert f"({direction} the score)" in words[0]


def test_feature_names_read_as_plain_words():
    assert feature_phrase("purchases_30d") == "purchases in the last 30 days"
    assert feature_phrase("affinity_home") == "interest in home"
    assert feature_phrase("days_since_last_purchase") == "days since last purchase"


def test_a_saved_model_scores_exactly_like_the_original(fitted, tmp_path):
    model, X = fitted
    loaded = PropensityModel.load(model.save(tmp_path / "p"))
    np.testing.assert_allclose(loaded.predict_proba(X), model.predict_proba(X))


def test_a_single_class_label_is_refused_with_advice():
    X = pd.DataFrame({"a": range(100)})
    with pytest.raises(ValueError, match="y has a single class"):
        PropensityModel().fit(X, np.zeros(100))


def test_calibrated_scores_stay_strictly_inside_zero_and_one_and_keep_the_ranking(isotonic, shop):
    model = isotonic
    assert model.calibration_method_ == "centered_isotonic"
    cutoff = pd.Timestamp(shop.config.start) + pd.Timedelta(days=100)
    X, _ = model_inputs(purchase_snapshot(shop.events, shop.items, cutoff, HORIZON))
    scores, raw = model.predict_proba(X)[:, 1], model.raw_score(X)
    assert ((scores > 0) & (scores < 1)).all()
    order = np.argsort(raw, kind="stable")
    assert (np.diff(scores[order]) >= 0).all()  # never reorders the model's ranking
    assert len(np.unique(scores)) == len(np.unique(raw))  # and keeps every distinct score apart


@hypothesis_settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(z=st.lists(st.floats(-60, 60), min_size=1, max_size=50))
def test_the_calibration_map_rises_and_never_reaches_zero_or_one(isotonic, fitted, z):
    for model in (isotonic, fitted[0]):
        raw = np.sort(np.unique(np.asarray(z)))
        p = 1 / (1 + np.exp(-model._calibrated_logit(raw)))
        assert ((p > 0) & (p < 1)).all() and (np.diff(p) >= 0).all()


def test_tied_scores_share_a_decile_whatever_their_order():
    scores = np.array([0.9, 0.5, 0.5, 0.5, 0.5, 0.1, 0.1, 0.1, 0.1, 0.1])
    assert deciles(scores).tolist() == [1, 2, 2, 2, 2, 6, 6, 6, 6, 6]
    assert deciles(scores[::-1]).tolist() == [6, 6, 6, 6, 6, 2, 2, 2, 2, 1]


def test_deciles_and_lift_rank_the_best_scores_first():
    scores = np.linspace(1, 0, 100)
    y = (scores > 0.8).astype(int)
    assert deciles(scores)[:10].tolist() == [1] * 10 and deciles(scores)[-1] == 10
    table = lift_table(y, scores)
    assert table.loc[1, "lift"] == pytest.approx(10 / 2)
    assert table["cumulative_gain"].iloc[-1] == 1.0


def test_bgnbd_recovers_the_parameters_it_was_simulated_with():
    truth = BGNBDParams(r=0.24, alpha=4.41, a=0.79, b=2.43)
    x, t_x, T = BGNBD.sample(truth, 4000, T=39, seed=3)
    fitted = BGNBD().fit(x, t_x, T).params_
    assert fitted.r == pytest.approx(truth.r, rel=0.15)
    assert fitted.alpha == pytest.approx(truth.alpha, rel=0.2)
    assert fitted.a == pytest.approx(truth.a, rel=0.35)
    assert fitted.b == pytest.approx(truth.b, rel=0.35)


def test_bgnbd_predictions_are_probabilities_that_grow_with_the_window():
    x, t_x, T = BGNBD.sample(BGNBDParams(0.24, 4.41, 0.79, 2.43), 500, T=39, seed=4)
    model = BGNBD().fit(x, t_x, T)
    short = model.probability_of_purchase(10, x, t_x, T)
    long = model.probability_of_purchase(39, x, t_x, T)
    assert ((short >= 0) & (short <= long) & (long <= 1)).all()
    assert (model.expected_purchases(39, x, t_x, T) >= 0).all()


@pytest.fixture
def propensity_settings(tmp_path: Path, shop) -> Settings:
    store_shop(Warehouse(tmp_path / "warehouse"), shop)
    return Settings(data_dir=tmp_path)


def test_the_job_logs_registers_and_promotes_only_past_every_baseline(propensity_settings):
    outcome = train_propensity(propensity_settings, "purchase", {"n_estimators": 200},
                               horizon_days=14, n_snapshots=3)
    assert outcome.version == "1" and outcome.metrics["roc_auc"] > 0.65
    for key in ("brier", "ece", "log_loss", "pr_auc", "lift_top_decile", "recency/roc_auc",
                "rfm_logistic/roc_auc", "uncalibrated/brier"):
        assert key in outcome.metrics
    baselines = {b: outcome.metrics[f"{b}/roc_auc"] for b in ("recency", "rfm_logistic")}
    assert outcome.decision.baselines == baselines
    assert outcome.decision.promoted == all(outcome.metrics["roc_auc"] > b
                                            for b in baselines.values())


def test_the_export_has_its_columns_and_honours_filters(propensity_settings, tmp_path):
    outcome = train_propensity(propensity_settings, "purchase", {"n_estimators": 100},
                               horizon_days=14, n_snapshots=3)
    promote_by_hand(propensity_settings, "propensity", outcome.version)
    runner = CliRunner()
    base = ["--data-dir", str(propensity_settings.data_dir)]
    everyone = tmp_path / "all.csv"
    assert runner.invoke(app, ["scores", "export", "--out", str(everyone), *base]).exit_code == 0
    table = pd.read_csv(everyone)
    assert list(table.columns) == ["customer_id", "score", "decile", "segment", "experiments",
                                   "reason_1", "reason_2", "reason_3", "model_version",
                                   "scored_at"]
    assert table["score"].is_monotonic_decreasing and set(table["decile"]) == set(range(1, 11))
    assert (table["model_version"] == 1).all()
    some = tmp_path / "some.parquet"
    result = runner.invoke(app, ["scores", "export", "--out", str(some), "--format", "parquet",
                                 "--segment", "loyal", "--min-score", "0.2", "--top", "7", *base])
    assert result.exit_code == 0, result.output
    filtered = pd.read_parquet(some)
    assert len(filtered) <= 7 and (filtered["segment"] == "loyal").all()
    assert (filtered["score"] >= 0.2).all()


def test_scores_are_as_of_the_time_asked_and_say_so(propensity_settings, shop, tmp_path):
    outcome = train_propensity(propensity_settings, "purchase", {"n_estimators": 50},
                               horizon_days=14, n_snapshots=3)
    as_of = pd.Timestamp(shop.config.start) + pd.Timedelta(days=60)
    out = tmp_path / "then.csv"
    result = CliRunner().invoke(app, ["scores", "export", "--out", str(out), "--version",
                                      outcome.version, "--as-of", as_of.isoformat(),
                                      "--data-dir", str(propensity_settings.data_dir)])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out)
    assert (pd.to_datetime(table["scored_at"]) == as_of).all()
    before = shop.events[shop.events["timestamp"] < as_of]
    assert set(table["customer_id"]) == set(before["customer_id"])


def test_a_future_as_of_is_refused(propensity_settings, tmp_path):
    result = CliRunner().invoke(app, ["scores", "export", "--out", str(tmp_path / "x.csv"),
                                      "--as-of", "2999-01-01", "--data-dir",
                                      str(propensity_settings.data_dir)])
    assert result.exit_code == 2
    assert "as-of time 2999-01-01T00:00:00+00:00 is in the future" in " ".join(
        result.output.split())


def test_a_future_dated_event_never_moves_the_scoring_time_past_now(shop):
    from training.propensity.scoring import scoring_time

    events = shop.events.copy()
    events.loc[events.index[-1], "timestamp"] = pd.Timestamp("2030-01-01", tz="UTC")
    now = pd.Timestamp("2026-01-01", tz="UTC")
    assert scoring_time(events, now=now) == now
    assert scoring_time(shop.events, now=now) == shop.events["timestamp"].max() + pd.Timedelta(
        microseconds=1)


def test_export_errors_are_clear(propensity_settings, tmp_path):
    runner = CliRunner()
    base = ["--out", str(tmp_path / "x.csv"), "--data-dir", str(propensity_settings.data_dir)]
    empty = runner.invoke(app, ["scores", "export", "--segment", "nobody", *base])
    assert empty.exit_code == 2 and "no customer is in segment 'nobody'" in empty.output
    unknown = runner.invoke(app, ["scores", "export", "--model", "churn", *base])
    assert unknown.exit_code == 2 and "cannot export model 'churn'" in unknown.output
    untrained = runner.invoke(app, ["scores", "export", *base])
    assert untrained.exit_code == 2 and "has no champion" in untrained.output


def test_training_errors_are_clear(propensity_settings):
    runner = CliRunner()
    base = ["--data-dir", str(propensity_settings.data_dir)]
    negative = runner.invoke(app, ["train", "propensity", "--horizon", "-3", *base])
    assert negative.exit_code == 2 and "--horizon must be a positive number of days" in negative.output
    kind = runner.invoke(app, ["train", "propensity", "--kind", "churn", *base])
    assert kind.exit_code == 2 and "unknown propensity kind 'churn'" in kind.output


def test_the_feature_settings_reach_training_and_serving_alike(tmp_path, shop):
    """NEXTBEST_ABANDONED_CART_AFTER_MINUTES and NEXTBEST_RECENT_ITEMS: the training job
    computes features with them, the model records them, and scoring it (as the service and
    the export do) computes features the same way, whatever the scorer's own settings."""
    from features.point_in_time import FeatureOptions, compute_customer_features
    from training.propensity.datasets import numeric_features
    from training.propensity.export import load_version
    from training.propensity.scoring import ScoredCustomers

    store_shop(Warehouse(tmp_path / "warehouse"), shop)
    options = FeatureOptions(abandoned_cart_after_minutes=4320, recent_items=3)
    settings = Settings(data_dir=tmp_path, abandoned_cart_after_minutes=4320, recent_items=3)
    outcome = train_propensity(settings, "purchase", {"n_estimators": 30}, horizon_days=14,
                               n_snapshots=3)
    model, _ = load_version(settings, "propensity", outcome.version)
    assert model.feature_options_ == options
    served = ScoredCustomers.score(model, outcome.version, shop.events, shop.items)
    trained_way = numeric_features(
        compute_customer_features(shop.events, served.as_of, shop.items, options)).astype(float)
    pd.testing.assert_frame_equal(served.features, trained_way)
    default_way = numeric_features(
        compute_customer_features(shop.events, served.as_of, shop.items)).astype(float)
    assert not served.features.equals(default_way)  # the setting changes the features


def test_the_export_leaves_out_the_holdout_and_names_each_customers_variants(
        propensity_settings, tmp_path):
    import yaml

    from features.experiments import ExperimentPlan, assign

    outcome = train_propensity(propensity_settings, "purchase", {"n_estimators": 50},
                               horizon_days=14, n_snapshots=3)
    promote_by_hand(propensity_settings, "propensity", outcome.version)
    plan = {"holdout": {"share": 0.3}, "experiments": [
        {"name": "offers", "traffic": 1.0, "variants": [{"name": "A", "weight": 1},
                                                        {"name": "B", "weight": 1}]}]}
    data = propensity_settings.data_dir
    (data / "experiments.yaml").write_text(yaml.safe_dump(plan))
    out = tmp_path / "scores.csv"
    try:
        result = CliRunner().invoke(app, ["scores", "export", "--out", str(out),
                                          "--data-dir", str(data)])
    finally:
        (data / "experiments.yaml").unlink()
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out)
    expected = ExperimentPlan.model_validate(plan)
    assert not any(assign(expected, c).held_out for c in table["customer_id"])
    assert set(table["experiments"]) == {"offers=A", "offers=B"}
