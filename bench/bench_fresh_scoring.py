"""Customers active now: the service's float32 catalog pass against an int8-first exact scan and
against approximate indexes, on trained factors.

    python bench/bench_fresh_scoring.py                  # 40,000 customers, 100,000 products
    python bench/bench_fresh_scoring.py --customers 5000 --products 10000 --no-record

A customer with events newer than the model is scored over the whole catalog from a re-derived
vector. This measures, on ALS factors trained on the synthetic shop (64 factors; a catalog with
the long tail of a real one, which random Gaussian factors lack), for 200 such customers (their
history plus two fresh items each), the pass from their vector to their top 200:

* the float32 pass (one matrix-vector product over the item factors, then the partial sort):
  what the service does, the baseline;
* an int8-first exact scan (``bench/quantized_scan.py``, not shipped): recall@200 and time,
  and how many items it scores again in float32;
* an HNSW index over the item factors by inner product (faiss, when installed:
  ``pip install faiss-cpu``; not a dependency of nextbest), at several search depths, the best
  400 found re-ranked exactly: recall@200 against the exact top 200, and time.

Each pass is timed twice per customer, in turns: back to back (its arrays stay in the cache),
and after 16 MB of other memory was read (as the rest of a request and the other worker do to
the cache between two customers active now). Prints a table and a JSON line; records into
docs/benchmarks.md unless --no-record.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.quantized_scan import QuantizedScan  # noqa: E402
from bench.record import record_section  # noqa: E402
from features.synthetic import ShopConfig, generate_shop  # noqa: E402
from training.interactions import build_interactions  # noqa: E402
from training.recommenders import make_recommender  # noqa: E402
from training.recommenders.base import _top_n  # noqa: E402

N = 200
TARGET_RECALL = 0.99
OTHER_WORK = np.ones(16 * 2**20 // 8)
"""Read between two timed passes in the "after other work" column."""


def fresh_customers(matrix: sp.csr_matrix, count: int, rng) -> tuple[np.ndarray, sp.csr_matrix]:
    rows = rng.choice(matrix.shape[0], count, replace=False)
    history = matrix[rows].tolil()
    for k in range(count):
        for column in rng.integers(0, matrix.shape[1], 2):
            history[k, column] = 1.0
    return rows, sp.csr_matrix(history, dtype=np.float32)


def recall(found: list[np.ndarray], exact: list[np.ndarray]) -> tuple[float, float]:
    each = [len(set(f.tolist()) & set(e.tolist())) / N for f, e in zip(found, exact, strict=True)]
    return float(np.mean(each)), float(np.min(each))


def timed(passes: dict[str, Callable[[np.ndarray], np.ndarray]], vectors: np.ndarray
          ) -> dict[str, tuple[list[np.ndarray], float, float]]:
    """Each pass's answers, and its median ms back to back and after other work, the passes
    taking turns on each customer so that all see the same machine."""
    answers = {name: [] for name in passes}
    hot = {name: [] for name in passes}
    cold = {name: [] for name in passes}
    for vector in vectors:
        for name, run in passes.items():
            run(vector)  # warm: the back-to-back figure
            started = time.perf_counter()
            answers[name].append(run(vector))
            hot[name].append(time.perf_counter() - started)
            OTHER_WORK.sum()
            started = time.perf_counter()
            run(vector)
            cold[name].append(time.perf_counter() - started)
    return {name: (answers[name], float(np.median(hot[name])) * 1e3,
                   float(np.median(cold[name])) * 1e3) for name in passes}


def float_pass(items: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    return lambda vector: _top_n((items @ vector)[None, :], N)[0][0]


def hnsw_passes(items: np.ndarray) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    try:
        import faiss
    except ImportError:
        print("faiss is not installed (pip install faiss-cpu): the HNSW rows are left out")
        return {}
    faiss.omp_set_num_threads(1)
    index = faiss.IndexHNSWFlat(items.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 400
    index.add(items)
    passes = {}
    for ef in (256, 512, 1024):
        def search(vector: np.ndarray, ef: int = ef) -> np.ndarray:
            index.hnsw.efSearch = ef
            keys = index.search(vector[None, :], 2 * N)[1][0]
            keys = keys[keys >= 0]
            return keys[np.argsort(-(items[keys] @ vector), kind="stable")[:N]]

        passes[f"HNSW by inner product (faiss, M 32, ef {ef}), best 400 re-ranked"] = search
    return passes


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
    rows, histories = fresh_customers(interactions.matrix, args.queries, rng)
    vectors = model.user_vectors(rows, histories, recalculate_user=True).astype(np.float32)
    exact = [np.argsort(-(items.astype(np.float64) @ v), kind="stable")[:N] for v in vectors]

    scan = QuantizedScan(items)
    rescored = [len(scan.candidates(v, N)[0]) for v in vectors]
    scan_name = (f"int8-first exact scan ({int(np.median(rescored))} items scored again in "
                 f"float32, at most {max(rescored)})")
    passes = {"float32 pass (the service's)": float_pass(items),
              scan_name: lambda vector: scan.top(vector, N)[0], **hnsw_passes(items)}
    results = timed(passes, vectors)
    rows_out = [(name, *recall(found, exact), hot, cold)
                for name, (found, hot, cold) in results.items()]

    table = ("| | recall@200 (mean / worst) | ms per customer, back to back | ms, after other "
             "work |\n|---|---|---|---|\n" + "\n".join(
                 f"| {name} | {mean:.4f} / {low:.3f} | {hot:.2f} | {cold:.2f} |"
                 for name, mean, low, hot, cold in rows_out))
    print(table)
    print(json.dumps({"bench": "fresh_scoring", "customers": args.customers,
                      "items": int(items.shape[0]),
                      "rows": [{"name": n, "recall": round(r, 4), "worst": round(w, 3),
                                "ms": round(hot, 3), "ms_after_other_work": round(cold, 3)}
                               for n, r, w, hot, cold in rows_out]}))
    if not args.no_record:
        record_section("fresh_scoring", "Customers active now: the catalog pass",
                       " ".join(["python bench/bench_fresh_scoring.py", *sys.argv[1:]]),
                       f"ALS, 64 factors, trained on the synthetic shop ({args.customers:,} "
                       f"customers, {items.shape[0]:,} products with history); "
                       f"{len(vectors)} customers re-scored from their history plus two fresh "
                       f"items; each pass timed back to back and after 16 MB of other memory "
                       f"was read. Target for an index: recall@200 >= {TARGET_RECALL}."
                       f"\n\n{table}\n")


if __name__ == "__main__":
    main()
