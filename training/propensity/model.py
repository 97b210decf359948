"""A calibrated, explainable propensity classifier: a scorer, then calibration, then reasons.

* The scorer is one of three families (``family``): LightGBM with early stopping on a
  stratified slice of the training rows (``monotone`` constrains it to rise with frequency and
  money and fall with recency, which small shops need); a logistic model on transformed RFM
  features (``training.propensity.linear``); or a blend, the weighted mean of the two's
  log-odds. The training job picks the family that validates best
  (``training.propensity.selection``).
* With ``bgnbd``, BG/NBD's P(alive) and expected purchases (``training.propensity.rfm``),
  fitted on the training rows, are two more inputs for every family.
* Its probabilities are calibrated on rows it never trained on (the caller passes them — a later
  snapshot, in the jobs — or a held-out slice is used). With enough rows, by centered isotonic
  regression (Oron & Flournoy 2017): isotonic regression's blocks, each placed at the mean raw
  score of its rows, joined by straight lines in log-odds and continued past the ends with the
  slope of a logistic (Platt) fit. Plain isotonic regression is a step function: it gave
  thousands of customers the same score, some exactly 0 or 1, and deciles split ties by row
  order. This map rises strictly, so scores keep the model's ranking, and each block's rate is
  shrunk toward the base rate by one row, so no score is ever 0 or 1. With few rows, Platt
  scaling alone.
* Each score's reasons come from the scorer's per-row contributions in log-odds (LightGBM's path
  attributions, or SHAP values on request; the logistic model's terms; their weighted sum for the
  blend): they sum, with the bias, to the raw score, so the reasons are the model's own
  arithmetic.

Saved as plain arrays: the booster's text model, the logistic model's arrays, BG/NBD's four
parameters and the calibration map (no pickle).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Self

import lightgbm as lgb
import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from features.point_in_time import FeatureOptions
from training.propensity import rfm
from training.propensity.attribution import PathAttribution
from training.propensity.linear import LinearScorer
from training.recommenders.base import NotFittedError, _explain

LOGIT_LIMIT = 30.0
"""Calibrated log-odds are kept within ±30: probabilities strictly inside (0, 1) in float64."""


class PropensityConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    family: Literal["lightgbm", "logistic", "blend"] = Field(
        "lightgbm", description="The scorer: LightGBM, logistic on transformed RFM, or both "
        "blended.")
    monotone: bool = Field(False, description="LightGBM rises with purchase counts, orders, "
                           "money and BG/NBD's features, and falls with days since.")
    bgnbd: bool = Field(True, description="Add BG/NBD's P(alive) and expected purchases as "
                        "inputs, where the features allow (purchase and category propensity).")
    C: float = Field(1.0, gt=0, description="Inverse L2 strength of the logistic model.")
    blend_weight: float = Field(0.5, gt=0, lt=1, description="LightGBM's share of the blend's "
                                "log-odds.")
    n_estimators: int = Field(600, ge=1, le=20_000, description="Most boosting rounds.")
    learning_rate: float = Field(0.05, gt=0, le=1, description="Shrinkage per round.")
    num_leaves: int = Field(31, ge=2, le=4096, description="Leaves per tree.")
    min_child_samples: int = Field(40, ge=1, description="Fewest rows in a leaf.")
    subsample: float = Field(0.8, gt=0, le=1, description="Row fraction per tree.")
    colsample_bytree: float = Field(0.8, gt=0, le=1, description="Feature fraction per tree.")
    reg_lambda: float = Field(1.0, ge=0, description="L2 penalty on leaf values.")
    early_stopping_rounds: int = Field(30, ge=1, description="Stop after this many rounds "
                                                             "without improvement.")
    validation_fraction: float = Field(0.2, gt=0, lt=0.9, description="Share of training rows "
                                                                      "used for early stopping.")
    calibration: Literal["auto", "isotonic", "sigmoid", "none"] = Field(
        "auto", description="auto: (centered) isotonic with 1,000+ calibration rows, else sigmoid.")
    calibration_fraction: float = Field(0.25, gt=0, lt=0.9, description="Share held out for "
                                        "calibration when no calibration rows are given.")
    random_state: int = Field(42, description="Seed for sampling and splits.")


class PropensityModel:
    """scikit-learn style: hyperparameters in the constructor, ``fit`` returns ``self``."""

    def __init__(self, **params: Any) -> None:
        try:
            self.config = PropensityConfig(**params)
        except ValidationError as error:
            raise ValueError(_explain(type(self).__name__, PropensityConfig, error)) from None

    def get_params(self) -> dict[str, Any]:
        return self.config.model_dump()

    # ------------------------------------------------------------------ fit
    def fit(self, X: pd.DataFrame, y, X_calibration: pd.DataFrame | None = None,
            y_calibration=None, feature_options: FeatureOptions | None = None) -> Self:
        """Learn from ``X, y``; calibrate on ``X_calibration, y_calibration`` (disjoint rows).
        ``feature_options`` are those the features were computed with: saved with the model, so
        that whoever scores it computes them the same way."""
        y = _labels(y, "y")
        if len(np.unique(y)) < 2:
            raise ValueError("y has a single class; a propensity model needs buyers and "
                             "non-buyers — widen the horizon or add snapshots")
        c = self.config
        if X_calibration is None:
            X, X_calibration, y, y_calibration = train_test_split(
                X, y, test_size=c.calibration_fraction, stratify=y, random_state=c.random_state)
        y_calibration = _labels(y_calibration, "y_calibration")
        self.feature_names_ = list(X.columns)
        rows = X.to_numpy(dtype=float)
        self.bgnbd_ = (rfm.BGNBDFeatures().fit(rows, self.feature_names_)
                       if c.bgnbd and rfm.usable(self.feature_names_) else None)
        self.inputs_ = [*self.feature_names_, *(rfm.NAMES if self.bgnbd_ else ())]
        design = self._design(rows)
        self.best_iteration_ = 0
        self._path_attribution = None
        self.booster_ = self._fit_lightgbm(design, y) if c.family != "logistic" else None
        self.linear_ = (LinearScorer(c.C).fit(design, y, self.inputs_)
                        if c.family != "lightgbm" else None)
        self.feature_options_ = feature_options or FeatureOptions()
        self._calibrate(self.raw_score(X_calibration), y_calibration)
        return self

    def _fit_lightgbm(self, design: np.ndarray, y: np.ndarray) -> lgb.Booster:
        c = self.config
        fit_X, stop_X, fit_y, stop_y = train_test_split(
            design, y, test_size=c.validation_fraction, stratify=y, random_state=c.random_state)
        constraints = [_direction(name) for name in self.inputs_] if c.monotone else None
        classifier = lgb.LGBMClassifier(
            n_estimators=c.n_estimators, learning_rate=c.learning_rate, num_leaves=c.num_leaves,
            min_child_samples=c.min_child_samples, subsample=c.subsample, subsample_freq=1,
            colsample_bytree=c.colsample_bytree, reg_lambda=c.reg_lambda,
            monotone_constraints=constraints, random_state=c.random_state, n_jobs=2, verbose=-1)
        classifier.fit(fit_X, fit_y, eval_X=stop_X, eval_y=stop_y,
                       callbacks=[lgb.early_stopping(c.early_stopping_rounds, verbose=False)])
        self.best_iteration_ = int(classifier.best_iteration_ or c.n_estimators)
        return classifier.booster_

    def _design(self, rows: np.ndarray) -> np.ndarray:
        """The scorer's inputs: the features, then BG/NBD's two where the model has them."""
        if self.bgnbd_ is None:
            return rows
        return np.hstack([rows, self.bgnbd_.transform(rows, self.feature_names_)])

    def _calibrate(self, raw: np.ndarray, y: np.ndarray) -> None:
        """Fit the map from raw log-odds to probabilities (see the module docstring)."""
        method = self.config.calibration
        if method == "auto":
            method = "isotonic" if len(y) >= 1000 else "sigmoid"
        if method == "none" or len(np.unique(y)) < 2:
            self.calibration_method_, self.calibration_map_ = "none", np.empty((0, 2))
            self.tail_slope_ = 1.0
            return
        platt = LogisticRegression(C=1e6).fit(raw.reshape(-1, 1), y)
        slope, intercept = float(platt.coef_[0, 0]), float(platt.intercept_[0])
        self.tail_slope_ = max(slope, 1e-3)  # rising, whatever a degenerate fit says
        if method == "sigmoid":
            self.calibration_method_ = "sigmoid"
            self.calibration_map_ = np.array([[-slope, -intercept]])
            return
        self.calibration_method_ = "centered_isotonic"
        self.calibration_map_ = _centered_isotonic(raw, y)

    def _calibrated_logit(self, raw: np.ndarray) -> np.ndarray:
        if self.calibration_method_ == "isotonic":  # a step map, saved by nextbest before 0.2
            p = np.interp(raw, self.calibration_map_[:, 0], self.calibration_map_[:, 1])
            p = np.clip(p, 1e-6, 1 - 1e-6)
            return np.log(p / (1 - p))
        if self.calibration_method_ == "centered_isotonic":
            centers, logits = self.calibration_map_[:, 0], self.calibration_map_[:, 1]
            inner = np.interp(raw, centers, logits)
            below = logits[0] + self.tail_slope_ * (raw - centers[0])
            above = logits[-1] + self.tail_slope_ * (raw - centers[-1])
            logit = np.where(raw < centers[0], below, np.where(raw > centers[-1], above, inner))
        elif self.calibration_method_ == "sigmoid":
            a, b = self.calibration_map_[0]
            logit = -(a * raw + b)
        else:
            logit = raw
        return np.clip(logit, -LOGIT_LIMIT, LOGIT_LIMIT)

    # ------------------------------------------------------------------ predict
    def raw_score(self, X: pd.DataFrame) -> np.ndarray:
        """Uncalibrated log-odds, the scale the contributions add up to."""
        return self._raw(self._design(self._matrix(X)))

    def _raw(self, design: np.ndarray) -> np.ndarray:
        w = self.config.blend_weight
        if self.linear_ is None:
            return self._booster().predict(design, raw_score=True)
        if self.booster_ is None:
            return self.linear_.raw_score(design)
        return (w * self._booster().predict(design, raw_score=True)
                + (1 - w) * self.linear_.raw_score(design))

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        return self.predict_proba_rows(self._matrix(X))

    def predict_proba_rows(self, rows: np.ndarray) -> np.ndarray:
        """``predict_proba`` for a float matrix whose columns are ``feature_names_`` in order:
        for the serving path, where building a DataFrame per request would cost more than
        the prediction."""
        raw = self._raw(self._design(rows))
        p = 1 / (1 + np.exp(-self._calibrated_logit(raw)))
        return np.column_stack([1 - p, p])

    def contributions(self, X: pd.DataFrame, method: Literal["path", "shap"] = "path"
                      ) -> pd.DataFrame:
        """Per-row contribution of each input to the raw score, plus the ``bias`` column; they
        add up to ``raw_score``. LightGBM's part is path attribution (fast, what reasons use;
        ``training.propensity.attribution``) or TreeSHAP's Shapley values (``"shap"``)."""
        return self.explain(X, method)[0]

    def explain(self, X: pd.DataFrame, method: Literal["path", "shap"] = "path"
                ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """``contributions`` and what the scorer read for each row (the features and BG/NBD's),
        computed once: reasons name each input's value beside its effect."""
        if method not in ("path", "shap"):
            raise ValueError(f"method must be 'path' or 'shap', got {method!r}")
        design = self._design(self._matrix(X))
        inputs = pd.DataFrame(design, columns=self.inputs_, index=X.index)
        w = self.config.blend_weight
        parts = []
        if self.booster_ is not None:
            parts.append(self._booster().predict(design, pred_contrib=True) if method == "shap"
                         else self._paths()(design))
        if self.linear_ is not None:
            parts.append(np.column_stack([self.linear_.terms(design),
                                          np.full(len(design), self.linear_.intercept_)]))
        values = parts[0] if len(parts) == 1 else w * parts[0] + (1 - w) * parts[1]
        return pd.DataFrame(values, columns=[*self.inputs_, "bias"], index=X.index), inputs

    def _paths(self) -> PathAttribution:
        if getattr(self, "_path_attribution", None) is None:
            self._path_attribution = PathAttribution(self._booster(), self.best_iteration_)
        return self._path_attribution

    def _booster(self) -> lgb.Booster:
        if not hasattr(self, "feature_names_"):
            raise NotFittedError("this PropensityModel is not fitted yet; call fit(X, y) first")
        return self.booster_

    def _matrix(self, X: pd.DataFrame) -> np.ndarray:
        if not hasattr(self, "feature_names_"):
            raise NotFittedError("this PropensityModel is not fitted yet; call fit(X, y) first")
        missing = [f for f in self.feature_names_ if f not in X.columns]
        if missing:
            raise ValueError(f"X lacks feature(s) the model was trained on: {', '.join(missing)}")
        return X[self.feature_names_].to_numpy(dtype=float)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        self._matrix(pd.DataFrame(columns=self.feature_names_))  # fitted, or a clear error
        path = Path(path).with_suffix(".npz")
        header = {"params": self.get_params(), "features": self.feature_names_,
                  "inputs": self.inputs_, "calibration": self.calibration_method_,
                  "tail_slope": self.tail_slope_, "best_iteration": self.best_iteration_,
                  "feature_options": self.feature_options_.as_dict()}
        booster = ("" if self.booster_ is None
                   else self.booster_.model_to_string(num_iteration=self.best_iteration_))
        np.savez(path, header=np.array(json.dumps(header)), booster=np.array(booster),
                 calibration_map=self.calibration_map_,
                 linear=self.linear_.to_arrays() if self.linear_ else np.empty((9, 0)),
                 bgnbd=self.bgnbd_.params if self.bgnbd_ else np.empty(0))
        return path

    @classmethod
    def load(cls, path: str | Path) -> PropensityModel:
        with np.load(path, allow_pickle=False) as data:
            header = json.loads(str(data["header"]))
            params = header["params"]
            # models saved before the families were LightGBM on the plain features
            params.setdefault("bgnbd", False)
            model = cls(**params)
            booster = str(data["booster"])
            model.booster_ = lgb.Booster(model_str=booster) if booster else None
            model.calibration_map_ = data["calibration_map"]
            linear = data["linear"] if "linear" in data else np.empty((9, 0))
            bgnbd = data["bgnbd"] if "bgnbd" in data else np.empty(0)
        model.linear_ = LinearScorer.from_arrays(linear) if linear.shape[1] else None
        model.bgnbd_ = rfm.BGNBDFeatures.from_params(bgnbd) if bgnbd.size else None
        model.feature_names_ = header["features"]
        model.inputs_ = header.get("inputs", model.feature_names_)
        model.calibration_method_ = header["calibration"]
        model.tail_slope_ = header.get("tail_slope", 1.0)
        model.best_iteration_ = header["best_iteration"]
        # models saved before feature options were recorded used the defaults
        model.feature_options_ = FeatureOptions(**header.get("feature_options", {}))
        return model


def _direction(name: str) -> int:
    """LightGBM's monotone constraint for an input: recency lowers the odds, frequency, money
    and BG/NBD's features raise them, the rest is free."""
    if name.startswith("days_since"):
        return -1
    if name.startswith(("purchases_", "orders_", "revenue_", "bgnbd_")):
        return 1
    return 0


def _labels(y, name: str) -> np.ndarray:
    values = np.asarray(y)
    if values.size and not np.isin(values, [0, 1, True, False]).all():
        examples = values[~np.isin(values, [0, 1])][:3]
        raise ValueError(f"{name} must hold 0/1 labels, got values such as {examples}")
    return values.astype(int)


def _centered_isotonic(raw: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Knots (raw score, log-odds) of centered isotonic regression, strictly rising.

    Isotonic regression pools the calibration rows into blocks of equal fitted rate; each block
    becomes one knot at the mean raw score of its rows, its rate shrunk toward the base rate by
    one row (``(buyers + base) / (rows + 1)``), so no knot is 0 or 1. Knots of equal rate are
    merged, so the line through them rises strictly."""
    order = np.argsort(raw, kind="stable")
    raw, y = raw[order], np.asarray(y, dtype=float)[order]
    fitted = IsotonicRegression(out_of_bounds="clip").fit(raw, y).predict(raw)
    block = np.concatenate([[0], np.cumsum(np.diff(fitted) != 0)])
    rows = np.bincount(block)
    rates = (np.bincount(block, weights=y) + y.mean()) / (rows + 1)
    centers = np.bincount(block, weights=raw) / rows
    rates = np.maximum.accumulate(rates)  # the shrinkage may bend a step of a few rows
    logits = np.log(rates / (1 - rates))
    keep = np.concatenate([np.diff(logits) > 0, [True]])  # equal rates: one knot, at their mean
    group = np.concatenate([[0], np.cumsum(keep[:-1])])
    weights = np.bincount(group, weights=rows)
    merged = np.bincount(group, weights=centers * rows) / weights
    return np.column_stack([merged, logits[keep]])
