"""Buy again on the synthetic shop: does blending it with collaborative filtering find more of
what customers buy next, without losing discovery?

    python bench/bench_buy_again.py             # records docs/benchmarks.md
    python bench/bench_buy_again.py --no-record

A 3,000-customer, 180-day synthetic shop (consumables restocked on each customer's own cycle).
The last 14 days are the test; the 14 days before them are the validation window on which the
blend learns what each source's rank r is worth (``rank_hit_rates``); every model is then
refitted on everything before the test. Models: popularity, EASE, item-kNN, buy again alone,
and the blend of buy again with the better of EASE and item-kNN on validation.

Two views at k = 20: **all items** (what the customer bought in the test, repeats included,
nothing filtered) and **new items** (items they never interacted with before: discovery).
Targets: the blend's all-items recall@20 >= 1.1 x the best single model's, and its new-items
recall@20 not lower than the best single model's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

K = 20


def run(customers: int, seed: int) -> dict:
    from features.synthetic import ShopConfig, generate_shop
    from training.evaluate import evaluate, time_split
    from training.interactions import InteractionConfig, build_interactions
    from training.recommender_job import fit_model
    from training.recommenders import make_recommender
    from training.recommenders.buy_again import BuyAgain, RankBlend, rank_hit_rates

    shop = generate_shop(ShopConfig(n_customers=customers, days=180, seed=seed))
    events, items = shop.events, shop.items
    split = time_split(events, test_days=14)
    inner = time_split(split.train, test_days=14)
    config = InteractionConfig()

    def fitted(name: str, train: pd.DataFrame, interactions):
        if name == "buy_again":
            cutoff = train["timestamp"].max() + pd.Timedelta(seconds=1)
            return BuyAgain(horizon_days=14).fit(train[train["event_type"] == "purchase"],
                                                 interactions, cutoff, items)
        return fit_model(make_recommender(name), interactions, items)

    # Validation: which collaborative model for all items and which for new ones, and what
    # each source's ranks are worth.
    interactions = build_interactions(inner.train, config, items)
    rates, new_rates = {}, {}
    for name in ("ease", "itemknn", "buy_again"):
        model = fitted(name, inner.train, interactions)
        rates[name] = rank_hit_rates(model, interactions, inner.test, K, exclude_seen=False)
        if name != "buy_again":
            new_rates[name] = rank_hit_rates(model, interactions, inner.test, K,
                                             exclude_seen=True).sum()
    collaborative = max(("ease", "itemknn"), key=lambda name: rates[name].sum())
    discovery = max(new_rates, key=new_rates.get)

    started = time.perf_counter()
    interactions = build_interactions(split.train, config, items)
    models = {name: fitted(name, split.train, interactions)
              for name in ("popularity", "ease", "itemknn", "buy_again")}
    models["blend"] = RankBlend(models[collaborative], models["buy_again"],
                                {"collaborative": rates[collaborative],
                                 "buy_again": rates["buy_again"]}, models[discovery])
    results = {}
    for name, model in models.items():
        all_items = evaluate(model, interactions, split.test, k=K, exclude_seen=False).metrics
        new_items = evaluate(model, interactions, split.test, k=K, exclude_seen=True).metrics
        results[name] = {"all_recall": all_items[f"recall@{K}"],
                         "all_ndcg": all_items[f"ndcg@{K}"],
                         "all_customers": int(all_items["customers_evaluated"]),
                         "new_recall": new_items[f"recall@{K}"],
                         "new_ndcg": new_items[f"ndcg@{K}"],
                         "new_customers": int(new_items["customers_evaluated"])}
    ceiling = union_recall(models[collaborative], models["buy_again"], interactions, split.test)
    purchases = split.test[split.test["event_type"] == "purchase"]
    bought = split.train[split.train["event_type"] == "purchase"]
    seen = pd.MultiIndex.from_frame(bought[["customer_id", "item_id"]])
    repeat_share = float(pd.MultiIndex.from_frame(purchases[["customer_id", "item_id"]])
                         .isin(seen).mean())
    return {"results": results, "collaborative": collaborative, "discovery": discovery,
            "repeat_share": repeat_share, "ceiling": ceiling,
            "seconds": time.perf_counter() - started, "events": len(events)}


def union_recall(collaborative, buy_again, interactions, test: pd.DataFrame) -> float:
    """All-items recall of the two sources' top-K lists together (up to 2K items): no merge of
    the two into K items can find more."""
    import numpy as np

    from training.evaluate import _relevance

    relevant, unknown = _relevance(interactions, test, ("purchase",), exclude_seen=False)
    per_customer = np.diff(relevant.indptr) + unknown
    users = np.flatnonzero(per_customer > 0)
    cf, _ = collaborative.recommend(users, interactions.matrix[users], N=K,
                                    filter_already_liked_items=False)
    again, _ = buy_again.recommend(users, N=K)
    found = [len(set(relevant[u].indices) & (set(a) | set(b[b >= 0])))
             for u, a, b in zip(users, cf, again, strict=True)]
    return float(np.mean(np.array(found) / per_customer[users]))


def render(outcome: dict, customers: int) -> tuple[str, dict]:
    results = outcome["results"]
    singles = {k: v for k, v in results.items() if k != "blend"}
    best_all = max(singles, key=lambda k: singles[k]["all_recall"])
    best_new = max(singles, key=lambda k: singles[k]["new_recall"])
    blend = results["blend"]
    ratio = blend["all_recall"] / singles[best_all]["all_recall"]
    met = {"all_items": ratio >= 1.1,
           "new_items": blend["new_recall"] >= singles[best_new]["new_recall"] - 1e-12}
    lines = [f"{customers:,} customers, {outcome['events']:,} events; test: the last 14 days "
             f"({outcome['repeat_share']:.0%} of its purchase lines are items the customer "
             f"bought before); blend = buy again + {outcome['collaborative']} for all items, "
             f"{outcome['discovery']} for new items (each the better on validation).", "",
             f"| model | all items recall@{K} | all items nDCG@{K} | new items recall@{K} | "
             f"new items nDCG@{K} |", "|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['all_recall']:.4f} | {r['all_ndcg']:.4f} | "
                     f"{r['new_recall']:.4f} | {r['new_ndcg']:.4f} |")
    lines += ["", f"Customers evaluated: {blend['all_customers']:,} (all items), "
              f"{blend['new_customers']:,} (new items). The two sources' top-{K} lists together "
              f"(up to {2 * K} items) hold {outcome['ceiling']:.4f} of what was bought: no merge "
              f"of them into {K} can find more ({outcome['ceiling'] / singles[best_all]['all_recall']:.2f}"
              f" x the best single model).", "",
              f"Targets: all-items recall@{K} of the blend >= 1.1 x the best single model's "
              f"({best_all}): {ratio:.2f} x — {'met' if met['all_items'] else 'not met'}; "
              f"new-items recall@{K} not lower than the best single model's ({best_new}, "
              f"{singles[best_new]['new_recall']:.4f}): {blend['new_recall']:.4f} — "
              f"{'met' if met['new_items'] else 'not met'}."]
    return "\n".join(lines), {"ratio_all": round(ratio, 3), "met": met}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    outcome = run(args.customers, args.seed)
    text, verdict = render(outcome, args.customers)
    print(text)
    print(json.dumps({"bench": "buy_again", **verdict,
                      "results": {k: {m: round(v, 4) for m, v in r.items()}
                                  for k, r in outcome["results"].items()}}))
    if not args.no_record:
        from bench.record import record_section

        record_section("bench_buy_again", "Buy again on the synthetic shop",
                       "python bench/bench_buy_again.py", text)


if __name__ == "__main__":
    main()
