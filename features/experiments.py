"""Experiments as data, and which variant each customer gets.

An experiments file (YAML, like the contact policy) declares a global holdout and experiments
in layers. Assignment is a pure function of the file and the customer id, evaluated locally
wherever nextbest acts on a customer (``recommend``, the journeys, the propensity export), so
every place agrees without asking anyone:

* the **hash** is BLAKE2b (``hashlib.blake2b``, 8-byte digest) of ``"<salt>:<customer_id>"``,
  read as an unsigned big-endian integer; its bucket is that integer modulo ``BUCKETS``
  (10,000). The same file and id give the same bucket in every process, after every restart and
  on every machine (Python's ``hash`` would not: it is salted per process);
* the **global holdout** takes the customers whose bucket under the holdout's salt falls below
  its share: they get no personalization and no journey messages, to measure what nextbest
  adds at all;
* each **layer** (namespace) hashes with its own salt and gives disjoint ranges of buckets to
  its experiments, so experiments on different surfaces run side by side, independent of each
  other, and two experiments of one layer never share a customer;
* within its range, an experiment's **traffic share** decides who takes part, and the variant
  weights split those, each by a second hash under the experiment's own salt.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_right
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from features.config_files import load_model, unique_names

BUCKETS = 10_000
"""Hash buckets: shares are honoured to 0.01 %."""
HOLDOUT = "holdout"
"""The variant name a holdout customer is reported under."""
INTERLEAVED = "interleaved"
"""The variant name of a customer in an interleaving experiment (they see both rankers)."""


@dataclass(frozen=True)
class Metric:
    """What an experiment can be judged on, per customer from their first exposure on.

    ``numerator`` (and ``denominator``) name per-customer counts the report computes
    (``training.experiment_report``): a proportion is the share of customers whose numerator is
    above zero, a mean is its average per customer (CUPED-adjusted when ``cuped``), a ratio is
    sum(numerator) / sum(denominator) over customers (delta method)."""

    description: str
    kind: Literal["proportion", "mean", "ratio"]
    numerator: str
    denominator: str | None = None
    lower_is_better: bool = False
    cuped: bool = False
    """Adjusted by the same count over the ``covariate_days`` before the first exposure."""


METRICS: dict[str, Metric] = {
    "conversion": Metric("share of customers who bought anything", "proportion", "purchases"),
    "revenue": Metric("net revenue (purchases minus returns) per customer", "mean", "revenue",
                      cuped=True),
    "ctr": Metric("clicks credited to the experiment's exposures per item shown", "ratio",
                  "clicks", "impressions"),
    "purchases": Metric("purchased lines per customer", "mean", "purchases", cuped=True),
    "orders": Metric("orders per customer (a session with a purchase, or a purchase outside "
                     "one)", "mean", "orders", cuped=True),
    "quantity": Metric("units bought per customer", "mean", "quantity", cuped=True),
    "average_order_value": Metric("net revenue per order", "ratio", "revenue", "orders"),
    "add_to_cart": Metric("share of customers who added anything to their cart", "proportion",
                          "carts"),
    "clicks": Metric("credited clicks per customer", "mean", "clicks"),
    "views": Metric("product views per customer", "mean", "views", cuped=True),
    "redemption": Metric("share of customers who redeemed an offer", "proportion",
                         "redemptions"),
    "return_rate": Metric("returned lines per purchased line", "ratio", "returns", "purchases",
                          lower_is_better=True),
    "opt_out": Metric("share of customers who withdrew consent on a contact channel",
                      "proportion", "opt_outs", lower_is_better=True),
}
"""Every metric an experiment may name as primary or secondary."""
MetricName = Literal[tuple(METRICS)]  # type: ignore[valid-type]


def bucket(salt: str, unit: str) -> int:
    """The customer's bucket in [0, BUCKETS) under ``salt`` (see the module docstring)."""
    digest = hashlib.blake2b(f"{salt}:{unit}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Name = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")


class RankingChanges(_Strict):
    """Ranking settings a variant changes; what it leaves out keeps the service's setting."""

    max_category_share: float | None = Field(None, gt=0, le=1)


class Variant(_Strict):
    name: str = Name
    weight: float = Field(gt=0, description="Relative share of the experiment's customers.")
    ranking: RankingChanges = Field(default_factory=RankingChanges)
    recommender: str | None = Field(
        None, pattern=r"^[0-9]+$", description="A registered version of the recommender to "
        "answer this variant with (loaded beside the champion); none: the champion.")
    personalized: bool = Field(True, description="False: answered as an unknown customer "
                                                 "(popular items), as the holdout is.")
    triggers: bool = Field(True, description="Whether triggered messages are sent.")


class Experiment(_Strict):
    name: str = Name
    kind: Literal["ab", "interleaving"] = Field(
        "ab", description="ab: customers split between variants; interleaving: two variants' "
                          "recommenders merged in every answer (team draft), clicks credited to "
                          "the one that placed the item.")
    layer: str = Field("default", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    salt: str | None = Field(None, description="Hash salt; default: the experiment's name. A "
                                               "new salt reshuffles who gets what.")
    traffic: float = Field(gt=0, le=1, description="Share of the layer this experiment takes.")
    variants: list[Variant] = Field(min_length=2)
    start: datetime | None = None
    stop: datetime | None = None
    primary_metric: MetricName = Field(
        "conversion", description="What the verdict is about: one of METRICS (conversion: "
                                  "bought after the first exposure).")
    secondary_metrics: list[MetricName] = Field(
        default_factory=lambda: ["revenue", "ctr"], description="Also reported, and corrected "
        "for together with the primary metric (Holm).")
    guardrails: list[Literal["latency", "errors", "opt_outs"]] = Field(
        default_factory=lambda: ["latency", "errors", "opt_outs"], description="Checked beside "
        "the verdict: latency (a variant's p99 ranking time at most 20 % and 5 ms above the "
        "control's), errors (its share of failed requests not significantly above the "
        "control's by more than 0.1 point) and opt_outs (its share of customers who withdrew "
        "consent not significantly above the control's by more than 0.1 point).")
    minimum_detectable_effect: float | None = Field(
        None, gt=0, description="Relative effect the power estimate is for, e.g. 0.05 (5 %).")

    @field_validator("variants")
    @classmethod
    def _unique_variants(cls, value: list[Variant]) -> list[Variant]:
        names = unique_names([v.name for v in value], "variant")
        if HOLDOUT in names:
            raise ValueError(f"'{HOLDOUT}' is the global holdout's name; call the variant "
                             "something else")
        return value

    @model_validator(mode="after")
    def _interleaving_compares_two_rankers(self) -> Experiment:
        if self.kind == "interleaving" and len(self.variants) != 2:
            raise ValueError(f"an interleaving experiment compares two rankers; this one has "
                             f"{len(self.variants)} variants")
        return self

    @model_validator(mode="after")
    def _a_window_that_can_run(self) -> Experiment:
        for name, moment in (("start", self.start), ("stop", self.stop)):
            if moment is not None and moment.tzinfo is None:
                raise ValueError(f"{name} {moment.isoformat()} has no time zone; write it like "
                                 "2026-12-01T00:00:00Z")
        if self.start and self.stop and self.start >= self.stop:
            raise ValueError(f"stop {self.stop.isoformat()} is not after start "
                             f"{self.start.isoformat()}")
        return self

    @property
    def metrics(self) -> list[str]:
        """The primary metric, then the secondary ones, each once."""
        return list(dict.fromkeys([self.primary_metric, *self.secondary_metrics]))

    @property
    def hash_salt(self) -> str:
        return self.salt or self.name

    def running(self, now: datetime) -> bool:
        return (self.start is None or self.start <= now) and (self.stop is None or now < self.stop)


class Holdout(_Strict):
    share: float = Field(0.0, ge=0, lt=1, description="Share of all customers held out of "
                                                       "personalization and messages.")
    salt: str = Field("global-holdout", min_length=1)


class ExperimentPlan(_Strict):
    """Everything an experiments file declares."""

    holdout: Holdout = Field(default_factory=Holdout)
    experiments: list[Experiment] = Field(default_factory=list)

    def experiment(self, name: str) -> Experiment:
        """The experiment called ``name``, or an error that lists the ones there are."""
        for experiment in self.experiments:
            if experiment.name == name:
                return experiment
        raise ValueError(f"no experiment {name!r}; the experiments file has: "
                         f"{', '.join(e.name for e in self.experiments) or 'none'} "
                         "('nextbest experiments list')")

    @property
    def recommender_versions(self) -> set[str]:
        """Recommender versions the variants name (A/B and interleaving): each is loaded beside
        the champion."""
        return {v.recommender for e in self.experiments for v in e.variants if v.recommender}

    @cached_property
    def ranges(self) -> tuple[_Ranges, ...]:
        return _ranges(self.experiments)

    @field_validator("experiments")
    @classmethod
    def _layers_fit(cls, value: list[Experiment]) -> list[Experiment]:
        unique_names([e.name for e in value], "experiment")
        for layer in {e.layer for e in value}:
            taken = sum(e.traffic for e in value if e.layer == layer)
            if taken > 1 + 1e-9:
                raise ValueError(f"layer {layer!r}: its experiments take {taken:.0%} of its "
                                 "customers; together they may take at most 100 %, or put one "
                                 "in another layer")
        return value


@dataclass(frozen=True)
class Assignment:
    """What one customer gets: held out, or a variant per running experiment (by name)."""

    customer_id: str
    held_out: bool
    variants: dict[str, str]
    chosen: tuple[Variant, ...] = ()
    """The variants themselves, in the plan's order (what they change)."""
    interleaved: tuple[Experiment, ...] = ()
    """Interleaving experiments the customer takes part in (the first one applies)."""

    def variant_of(self, experiment: str) -> str | None:
        return HOLDOUT if self.held_out else self.variants.get(experiment)

    @property
    def personalized(self) -> bool:
        return not self.held_out and all(v.personalized for v in self.chosen)

    @property
    def messages(self) -> bool:
        """Whether triggered messages may be sent to this customer."""
        return not self.held_out and all(v.triggers for v in self.chosen)

    @property
    def recommender(self) -> str | None:
        """The recommender version a variant names (the first one that does), if any."""
        return next((v.recommender for v in self.chosen if v.recommender), None)

    def max_category_share(self, default: float) -> float:
        for variant in self.chosen:
            if variant.ranking.max_category_share is not None:
                return variant.ranking.max_category_share
        return default

    def labels(self) -> dict[str, str]:
        """experiment -> variant, as answers and exposures carry it (``{"holdout": "holdout"}``
        for a held-out customer)."""
        return {HOLDOUT: HOLDOUT} if self.held_out else dict(self.variants)




def assign(plan: ExperimentPlan, customer_id: str, now: datetime | None = None) -> Assignment:
    """The customer's holdout status and variants (see the module docstring); experiments not
    running at ``now`` are left out (all of them when ``now`` is None are considered)."""
    if plan.holdout.share and bucket(plan.holdout.salt, customer_id) < plan.holdout.share * BUCKETS:
        return Assignment(customer_id, True, {})
    if not plan.experiments:
        return Assignment(customer_id, False, {})
    variants: dict[str, str] = {}
    chosen: list[Variant] = []
    interleaved: list[Experiment] = []
    layer_buckets: dict[str, int] = {}
    for ranges in plan.ranges:
        experiment = ranges.experiment
        if now is not None and not experiment.running(now):
            continue
        if ranges.layer_salt not in layer_buckets:  # one hash per layer, not per experiment
            layer_buckets[ranges.layer_salt] = bucket(ranges.layer_salt, customer_id)
        if not ranges.low <= layer_buckets[ranges.layer_salt] < ranges.high:
            continue
        if experiment.kind == "interleaving":  # every participant sees both rankers
            variants[experiment.name] = INTERLEAVED
            interleaved.append(experiment)
            continue
        point = bucket(experiment.hash_salt, customer_id)
        variant = experiment.variants[bisect_right(ranges.cumulative, point)]
        variants[experiment.name] = variant.name
        chosen.append(variant)
    return Assignment(customer_id, False, variants, tuple(chosen), tuple(interleaved))


@dataclass(frozen=True)
class _Ranges:
    """An experiment's share of its layer's buckets, and its variants' buckets, computed once
    per plan (each request only compares numbers)."""

    experiment: Experiment
    layer_salt: str
    low: float
    high: float
    cumulative: tuple[float, ...]
    """Upper bucket bounds of every variant but the last."""


def _ranges(experiments: list[Experiment]) -> tuple[_Ranges, ...]:
    offsets: dict[str, float] = {}
    found = []
    for experiment in experiments:  # in file order: each takes the next range of its layer
        low = offsets.get(experiment.layer, 0.0)
        offsets[experiment.layer] = high = low + experiment.traffic * BUCKETS
        total = sum(v.weight for v in experiment.variants)
        bounds = np.cumsum([v.weight / total * BUCKETS for v in experiment.variants[:-1]])
        found.append(_Ranges(experiment, f"layer:{experiment.layer}", low, high,
                             tuple(float(b) for b in bounds)))
    return tuple(found)


def labels_text(labels: dict[str, str]) -> str | None:
    """'experiment=variant|...' sorted, as the exposures table's ``variants`` column holds it."""
    return "|".join(f"{e}={v}" for e, v in sorted(labels.items())) or None


def plan_path(settings) -> Path:
    """The experiments file: NEXTBEST_EXPERIMENTS_FILE, else <data_dir>/experiments.yaml."""
    return settings.experiments_file or settings.data_dir / "experiments.yaml"


class ExperimentsError(ValueError):
    """The experiments file is missing or wrong; the message names file, experiment and field."""


def load_plan(path: Path) -> ExperimentPlan:
    """The plan in ``path``; a file that does not exist is an empty plan (no experiments)."""
    return load_model(path, ExperimentPlan, ExperimentsError, "experiments file",
                      missing=ExperimentPlan())
