#!/usr/bin/env bash
# README command two: set up .venv with the test references, then run the test suite.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -m slow tests/test_hf_parity.py`).
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test || { echo "[test] setup failed"; exit 1; }
# Two worker processes (pytest-xdist), a test file per worker so module fixtures are built once; each worker has
# its own XLA compilation cache (tests/conftest.py). GPT2JAX_TEST_WORKERS=N picks another count, 0 runs in one
# process; an -n or -p no:xdist among the arguments wins.
workers=${GPT2JAX_TEST_WORKERS:-2}
xdist=(-n "$workers" --dist loadfile)
for arg in "$@"; do
  case "$arg" in -n|-n*|--numprocesses*|no:xdist) xdist=() ;; esac
done
[ "$workers" = 0 ] && xdist=()
.venv/bin/python -m pytest "${xdist[@]}" "$@"
rc=$?
if [ $rc -eq 5 ]; then
  echo "[test] pytest collected no tests: treating that as a failure"
  exit 1
fi
exit $rc
