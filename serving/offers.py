"""P(redeem) for a customer and the offers they may get, from the registered offer-response model.

The offer model (``propensity-offer``, trained by ``nextbest train propensity --kind offer``) was
fitted on rows of customer features as of a cutoff plus the offer's terms (value, minimum basket,
days left). At serving time the customer part is computed once per load for every customer, the
offer part per request; a request builds one small float matrix and calls the booster directly.
Customers the snapshot does not know get missing values, which LightGBM routes like any other
customer with no history.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd

from serving.shop import Item
from training.propensity.model import PropensityModel

OFFER_FEATURES = ("offer_value", "offer_min_basket", "offer_days_left")


class OfferScorer:
    def __init__(self, model: PropensityModel, version: str, customer_features: pd.DataFrame
                 ) -> None:
        names = model.feature_names_
        missing_offer_terms = [f for f in OFFER_FEATURES if f not in names]
        if missing_offer_terms:
            raise ValueError(f"the offer model (version {version}) lacks "
                             f"{', '.join(missing_offer_terms)}: is it an offer-response model?")
        self.model, self.version = model, version
        customer_columns = [f for f in names if f not in OFFER_FEATURES]
        self._customers = customer_features.reindex(columns=customer_columns).to_numpy(float)
        self._row = {customer: i for i, customer in enumerate(customer_features.index)}
        self._customer_slots = [names.index(f) for f in customer_columns]
        self._offer_slots = [names.index(f) for f in OFFER_FEATURES]

    def redeem_probability(self, customer_id: str, offers: list[Item],
                           now: datetime) -> np.ndarray:
        """P(customer redeems each offer if shown now), in the order of ``offers``."""
        rows = np.full((len(offers), len(self.model.feature_names_)), np.nan)
        row = self._row.get(customer_id)
        if row is not None:
            rows[:, self._customer_slots] = self._customers[row]
        for i, offer in enumerate(offers):
            days_left = (np.nan if offer.valid_to is None
                         else (offer.valid_to - now) / pd.Timedelta(days=1))
            rows[i, self._offer_slots] = (offer.offer_value or 0.0, offer.min_basket, days_left)
        return self.model.predict_proba_rows(rows)[:, 1]
