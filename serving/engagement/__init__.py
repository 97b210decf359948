"""Engagement: what nextbest sends customers unasked, and the rules over it.

* ``policy``: the contact policy (consent, quiet hours and caps in the customer's own time zone,
  cross-channel memory, fatigue) that every message and every answer's shelves obey;
* ``journeys``: the journeys file (entries, steps, goals, priority, holdout);
* ``situations``: the situations journeys enter on (an abandoned cart, a category browsed);
* ``scheduler``: the one process per deployment that advances journeys exactly once and writes
  the outbox;
* ``cli``: ``nextbest policy`` and ``nextbest journeys``.

It builds on the ranking pipeline (``serving.pipeline``) for what a message sends; the API's
endpoints call into it, never the reverse. A journey's report is analytics and lives with the
other reports (``training.journey_report``).
"""
