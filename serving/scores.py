"""The service's ``propensity`` answer: scores looked up, reasons computed for the ids asked."""

from __future__ import annotations

from training.propensity.scoring import ScoredCustomers


def propensity_answer(scored: ScoredCustomers, customer_ids: list[str]) -> dict:
    """Score, decile (over all customers) and reasons per known id; unknown ids listed."""
    asked = list(dict.fromkeys(customer_ids))
    known = [c for c in asked if c in scored.scores.index]
    reasons = scored.reasons(known) if known else None
    return {
        "model_version": scored.version,
        "scored_as_of": scored.as_of.isoformat(),
        "scores": [{"customer_id": c, "score": round(float(scored.scores[c]), 6),
                    "decile": int(scored.deciles[c]),
                    "reasons": [r for r in reasons.loc[c].tolist() if r]} for c in known],
        "unknown": [c for c in asked if c not in scored.scores.index],
    }
