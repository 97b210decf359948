"""Team-draft interleaving: two rankers' product lists merged into one answer, each item
credited to the ranker that placed it (Radlinski, Kurup and Joachims, "How does clickthrough
data reflect retrieval quality?", 2008).

Each round a fair coin says which team picks first; each team then adds its best item not
already in the list, until the list is full. A customer who clicks more of one team's items
prefers that ranker; over many customers that preference is a far more sensitive comparison of
two rankings than splitting customers between them, because each customer sees both.

The coin is seeded by the answer's recommendation id, so an answer can be interleaved again
identically (in a test, or to audit it).
"""

from __future__ import annotations

import random

TEAMS = ("A", "B")


def team_draft(first: list[dict], second: list[dict], n: int, seed: str) -> list[dict]:
    """Up to ``n`` entries of ``first`` (team A) and ``second`` (team B), interleaved; each
    entry is a copy with ``team`` set."""
    coin = random.Random(seed)
    lists = (first, second)
    taken: set[str] = set()
    cursor = [0, 0]
    merged: list[dict] = []
    while len(merged) < n:
        order = (0, 1) if coin.random() < 0.5 else (1, 0)
        progressed = False
        for team in order:
            if len(merged) == n:
                break
            entries = lists[team]
            while cursor[team] < len(entries) and entries[cursor[team]]["item_id"] in taken:
                cursor[team] += 1
            if cursor[team] < len(entries):
                entry = entries[cursor[team]]
                merged.append({**entry, "team": TEAMS[team]})
                taken.add(entry["item_id"])
                cursor[team] += 1
                progressed = True
        if not progressed:
            break
    return merged


def interleaved_answer(states: tuple, request, now, max_category_share: float, live, policy,
                       placed, recommender_name: str) -> dict:
    """The answer of team A's state with its products replaced by the team draft of both
    teams' products (content and offers are team A's); both versions are named."""
    from features.contracts import ItemKind
    from serving.pipeline import recommend

    first = recommend(states[0], request, now, max_category_share, live, policy, placed)
    second = recommend(states[1], request, now, max_category_share, live, policy, placed)
    first["products"] = team_draft(first["products"], second["products"],
                                   request.n.get(ItemKind.PRODUCT, 0), first["recommendation_id"])
    first["model_versions"][f"{recommender_name} (team B)"] = \
        second["model_versions"][recommender_name]
    return first


def team_states(experiment, champion, variants: dict) -> tuple:
    """The two teams' serving states: each variant's recommender version, or the champion."""
    return tuple(variants.get(v.recommender, champion) if v.recommender else champion
                 for v in experiment.variants)
