#!/usr/bin/env bash
# Installs everything the tests need into .venv, then runs the whole suite,
# slow end-to-end tests included. Extra arguments go to pytest:
#   bash scripts/test.sh              # everything (what CI runs)
#   bash scripts/test.sh -m "not slow"
MINIVZ_EXTRAS="dev,models,serve,train,seqrec"
. "$(dirname "$0")/_venv.sh"
set +e
python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "error: pytest collected no tests" >&2
    exit 1
fi
# The kernels must also pass as plain Python (NUMBA_DISABLE_JIT=1): it proves
# the compiled path and the reference agree on the same source.
if [ "$rc" -eq 0 ] && [ $# -eq 0 ]; then
    NUMBA_DISABLE_JIT=1 python -m pytest -q tests/test_kernels.py
    rc=$?
fi
exit "$rc"
