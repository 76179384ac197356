#!/usr/bin/env bash
# Installs everything the tests need into .venv, then runs the whole suite,
# slow end-to-end tests included. Extra arguments go to pytest:
#   bash scripts/test.sh              # everything (what CI runs)
#   bash scripts/test.sh -m "not slow"
MINIVZ_EXTRAS="dev,models,serve,train,seqrec"
. "$(dirname "$0")/_venv.sh"
# Headless Chromium for the run report's screenshot test (tests/test_report.py): npm's
# @sparticuz/chromium carries a whole Chromium (nothing is downloaded at run time); it is unpacked
# once under .cache/chromium/unpacked (~210 MB) and its path exported for the test.
if command -v npm >/dev/null 2>&1; then
    CHROMIUM_DIR="$ROOT/.cache/chromium"
    if [ ! -x "$CHROMIUM_DIR/unpacked/chromium" ]; then
        npm install --silent --no-audit --no-fund --prefix "$CHROMIUM_DIR" @sparticuz/chromium@153.0.0 >&2
        mkdir -p "$CHROMIUM_DIR/unpacked"
        (cd "$CHROMIUM_DIR" && TMPDIR="$CHROMIUM_DIR/unpacked" node --input-type=module -e \
            'import c from "@sparticuz/chromium"; console.log(await c.executablePath())') >/dev/null
    fi
    export MINIVZ_CHROMIUM="$CHROMIUM_DIR/unpacked/chromium"
fi
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
