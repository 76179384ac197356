#!/usr/bin/env bash
# The main job on the embedded default: real MovieLens-100K (from the installed
# recbole package) -> examples. Installs what it needs into .venv first.
#   bash scripts/demo.sh            # writes runs/demo/data
MINIVZ_EXTRAS="models"
. "$(dirname "$0")/_venv.sh"
OUT="${1:-runs/demo}"
minivz env
minivz data prepare --source movielens-100k --out "$OUT/data"
minivz data show "$OUT/data" --split test -n 1 --max-events 10
