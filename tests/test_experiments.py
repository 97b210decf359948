"""Experiment definitions and assignment: stable, uniform, independent across layers."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from features.experiments import (
    BUCKETS,
    HOLDOUT,
    ExperimentPlan,
    ExperimentsError,
    assign,
    bucket,
    load_plan,
)

IDS = [f"c{i:07d}" for i in range(1_000_000)]


def plan(**overrides) -> ExperimentPlan:
    data = {"holdout": {"share": 0.05},
            "experiments": [
                {"name": "ranker", "layer": "home", "traffic": 0.5,
                 "variants": [{"name": "A", "weight": 1}, {"name": "B", "weight": 1}]},
                {"name": "diversity", "layer": "home", "traffic": 0.5,
                 "variants": [{"name": "A", "weight": 3}, {"name": "B", "weight": 1}]},
                {"name": "offers", "layer": "offers", "traffic": 1.0,
                 "variants": [{"name": "A", "weight": 1}, {"name": "B", "weight": 1}]}]}
    data.update(overrides)
    return ExperimentPlan.model_validate(data)


def test_the_hash_is_blake2b_and_the_same_everywhere():
    """Reference values computed once; a change of hash or encoding would reshuffle every
    running experiment, so it must fail here first."""
    assert [bucket("ranker", c) for c in ("c0000001", "c0000002", "alice")] == [9484, 8728, 4626]
    digest = hashlib.blake2b(b"ranker:c0000001", digest_size=8).digest()
    assert int.from_bytes(digest, "big") % BUCKETS == 9484


def test_buckets_are_uniform_over_a_million_ids():
    counts = np.bincount([bucket("ranker", c) % 100 for c in IDS], minlength=100)
    assert stats.chisquare(counts).pvalue > 0.001


def test_variants_follow_their_weights():
    experiment_plan = plan(holdout={"share": 0.0})
    got = [assign(experiment_plan, c).variants.get("diversity") for c in IDS[:200_000]]
    a, b = got.count("A"), got.count("B")
    assert stats.chisquare([a, b], [0.75 * (a + b), 0.25 * (a + b)]).pvalue > 0.001
    assert abs((a + b) / 200_000 - 0.5) < 0.01  # its half of the layer


def test_experiments_of_one_layer_never_share_a_customer_and_layers_are_independent():
    experiment_plan = plan(holdout={"share": 0.0})
    rows = [assign(experiment_plan, c).variants for c in IDS[:100_000]]
    assert not any("ranker" in r and "diversity" in r for r in rows)
    table = np.zeros((3, 2))
    for r in rows:  # home layer's experiment x offers variant
        home = 0 if "ranker" in r else 1 if "diversity" in r else 2
        table[home, r["offers"] == "B"] += 1
    table = table[table.sum(axis=1) > 0]
    assert stats.chi2_contingency(table).pvalue > 0.001


def test_the_holdout_takes_its_share_and_gets_no_variant():
    experiment_plan = plan()
    held = [a for a in (assign(experiment_plan, c) for c in IDS[:100_000]) if a.held_out]
    assert abs(len(held) / 100_000 - 0.05) < 0.003
    assert all(a.variants == {} and a.variant_of("ranker") == HOLDOUT for a in held)


def test_an_experiment_outside_its_window_assigns_no_one():
    experiment_plan = plan(experiments=[{
        "name": "later", "traffic": 1, "start": "2030-01-01T00:00:00Z",
        "variants": [{"name": "A", "weight": 1}, {"name": "B", "weight": 1}]}])
    now = datetime(2026, 12, 1, tzinfo=UTC)
    assert assign(experiment_plan, "c1", now).variants == {}
    assert "later" in assign(experiment_plan, "c1", datetime(2030, 2, 1, tzinfo=UTC)).variants


@given(st.text(min_size=1, max_size=40))
def test_assignment_is_a_function_of_the_plan_and_the_id(customer):
    experiment_plan = plan()
    assert assign(experiment_plan, customer) == assign(experiment_plan, customer)


@pytest.mark.parametrize(("experiments", "message"), [
    ([{"name": "x", "traffic": 0.7, "variants": [{"name": "A", "weight": 1},
                                                 {"name": "B", "weight": 1}]},
      {"name": "y", "traffic": 0.6, "variants": [{"name": "A", "weight": 1},
                                                 {"name": "B", "weight": 1}]}],
     "layer 'default': its experiments take 130% of its customers"),
    ([{"name": "x", "traffic": 1, "variants": [{"name": "A", "weight": 1}]}],
     "experiments.'x'.variants: List should have at least 2 items"),
    ([{"name": "x", "traffic": 1, "variants": [{"name": "A", "weight": 1},
                                               {"name": "A", "weight": 2}]}],
     "variant names must be unique; repeated: A"),
    ([{"name": "x", "traffic": 1, "start": "2026-12-02T00:00:00Z",
       "stop": "2026-12-01T00:00:00Z",
       "variants": [{"name": "A", "weight": 1}, {"name": "B", "weight": 1}]}],
     "stop 2026-12-01T00:00:00\\+00:00 is not after start"),
])
def test_a_wrong_file_names_the_file_the_experiment_and_the_field(tmp_path, experiments, message):
    import yaml

    path = tmp_path / "experiments.yaml"
    path.write_text(yaml.safe_dump({"experiments": experiments}))
    with pytest.raises(ExperimentsError, match=message) as caught:
        load_plan(path)
    assert str(path) in str(caught.value)


def test_no_file_is_no_experiments(tmp_path):
    assert load_plan(tmp_path / "missing.yaml") == ExperimentPlan()


def test_create_adds_an_experiment_and_refuses_one_that_breaks_the_file(tmp_path):
    from tests.test_cli import run

    created = run("experiments", "create", "diversity", "--variants", "A,B", "--traffic", "0.5",
                  "--layer", "home", "--data-dir", str(tmp_path))
    assert created.exit_code == 0, created.output
    plan = load_plan(tmp_path / "experiments.yaml")
    assert [e.name for e in plan.experiments] == ["diversity"]
    assert plan.experiments[0].start is not None
    too_big = run("experiments", "create", "big", "--traffic", "0.7", "--layer", "home",
                  "--data-dir", str(tmp_path))
    assert too_big.exit_code == 2
    assert "layer 'home': its experiments take 120%" in too_big.output
    assert str(tmp_path / "experiments.yaml") in too_big.output
    assert [e.name for e in load_plan(tmp_path / "experiments.yaml").experiments] == [
        "diversity"]  # the file as it was
