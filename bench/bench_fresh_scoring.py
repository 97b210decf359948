"""Customers active now: the exact pass over the catalog against an approximate index, on
trained factors.

    python bench/bench_fresh_scoring.py                  # 40,000 customers, 100,000 products
    python bench/bench_fresh_scoring.py --customers 5000 --products 10000 --no-record

A customer with events newer than the model is scored over the whole catalog from a re-derived
vector. This measures, on ALS factors trained on the synthetic shop (64 factors; a catalog with
the long tail of a real one, which random Gaussian factors lack), for 200 such customers (their
history plus two fresh items each):

* the service's exact pass (``recommend(..., recalculate_user=True)``), time per customer;
* an HNSW index over the item factors by inner product (faiss, when installed:
  ``pip install faiss-cpu``; not a dependency of nextbest), at several search depths, the best
  400 found re-ranked exactly: recall@200 against the exact top 200, and time;
* a pass over int8-quantized factors (compiled), its best 1,000 re-ranked exactly.

Prints a table and a JSON line; records into docs/benchmarks.md unless --no-record.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from numba import njit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.record import record_section  # noqa: E402
from features.synthetic import ShopConfig, generate_shop  # noqa: E402
from serving.kernels import best_first  # noqa: E402
from training.interactions import build_interactions  # noqa: E402
from training.recommenders import make_recommender  # noqa: E402

N = 200
TARGET_RECALL = 0.99


@njit(fastmath=True, nogil=True, cache=True)
def int8_scores(quantized: np.ndarray, scales: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """Approximate inner products with int8 item factors (a scale per item)."""
    n, d = quantized.shape
    out = np.empty(n)
    for i in range(n):
        total = np.float32(0)
        for j in range(d):
            total += np.float32(quantized[i, j]) * vector[j]
        out[i] = total * scales[i]
    return out


def fresh_customers(model, matrix: sp.csr_matrix, count: int, rng) -> tuple[np.ndarray, sp.csr_matrix]:
    rows = rng.choice(matrix.shape[0], count, replace=False)
    history = matrix[rows].tolil()
    for k in range(count):
        for column in rng.integers(0, matrix.shape[1], 2):
            history[k, column] = 1.0
    return rows, sp.csr_matrix(history, dtype=np.float32)


def recall(found: list[np.ndarray], exact: list[np.ndarray]) -> tuple[float, float]:
    each = [len(set(f.tolist()) & set(e.tolist())) / N for f, e in zip(found, exact, strict=True)]
    return float(np.mean(each)), float(np.min(each))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=40_000)
    parser.add_argument("--products", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    shop = generate_shop(ShopConfig(n_customers=args.customers, n_products=args.products,
                                    days=60, seed=5))
    interactions = build_interactions(shop.events)
    model = make_recommender("als", factors=64, iterations=10).fit(interactions.matrix)
    items = np.ascontiguousarray(model.model_.item_factors, dtype=np.float32)
    rows, histories = fresh_customers(model, interactions.matrix, args.queries, rng)
    vectors = model.user_vectors(rows, histories, recalculate_user=True).astype(np.float32)
    exact = [np.argsort(-(items @ v), kind="stable")[:N] for v in vectors]

    model.recommend(0, histories[0], N=N, recalculate_user=True)  # warm
    started = time.perf_counter()
    for k in range(len(rows)):
        model.recommend(int(rows[k]), histories[k], N=N, filter_already_liked_items=False,
                        recalculate_user=True)
    rows_out = [("exact pass (the service's)", 1.0, 1.0,
                 (time.perf_counter() - started) / len(rows) * 1e3)]

    scales = (np.abs(items).max(axis=1) / 127).astype(np.float32)
    scales[scales == 0] = 1.0
    quantized = np.round(items / scales[:, None]).astype(np.int8)
    int8_scores(quantized, scales, vectors[0])
    found, started = [], time.perf_counter()
    for v in vectors:
        head = best_first(int8_scores(quantized, scales, v), 1000)
        found.append(head[np.argsort(-(items[head] @ v), kind="stable")[:N]])
    rows_out.append(("int8 pass, best 1,000 re-ranked", *recall(found, exact),
                     (time.perf_counter() - started) / len(vectors) * 1e3))

    try:
        import faiss
    except ImportError:
        print("faiss is not installed (pip install faiss-cpu): the HNSW rows are left out")
    else:
        faiss.omp_set_num_threads(1)
        index = faiss.IndexHNSWFlat(items.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 400
        index.add(items)
        for ef in (256, 512, 1024):
            index.hnsw.efSearch = ef
            found, started = [], time.perf_counter()
            for v in vectors:
                keys = index.search(v[None, :], 400)[1][0]
                keys = keys[keys >= 0]
                found.append(keys[np.argsort(-(items[keys] @ v), kind="stable")[:N]])
            rows_out.append((f"HNSW by inner product (faiss, M 32, ef {ef}), best 400 re-ranked",
                             *recall(found, exact),
                             (time.perf_counter() - started) / len(vectors) * 1e3))

    table = "| | recall@200 (mean / worst) | ms per customer |\n|---|---|---|\n" + "\n".join(
        f"| {name} | {mean:.4f} / {low:.3f} | {ms:.2f} |" for name, mean, low, ms in rows_out)
    print(table)
    print(json.dumps({"bench": "fresh_scoring", "customers": args.customers,
                      "items": int(items.shape[0]),
                      "rows": [{"name": n, "recall": round(r, 4), "worst": round(w, 3),
                                "ms": round(ms, 3)} for n, r, w, ms in rows_out]}))
    if not args.no_record:
        record_section("fresh_scoring", "Customers active now: the catalog pass against an index",
                       "python bench/bench_fresh_scoring.py " + " ".join(sys.argv[1:]).strip(),
                       f"ALS, 64 factors, trained on the synthetic shop ({args.customers:,} "
                       f"customers, {items.shape[0]:,} products with history); "
                       f"{len(vectors)} customers re-scored from their history plus two fresh "
                       f"items. Target for an index: recall@200 >= {TARGET_RECALL}.\n\n{table}\n")


if __name__ == "__main__":
    main()
