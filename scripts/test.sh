#!/usr/bin/env bash
# README command two: set up .venv with the test references, then run the test suite.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -m slow tests/test_hf_parity.py`).
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test || { echo "[test] setup failed"; exit 1; }
.venv/bin/python -m pytest "$@"
rc=$?
if [ $rc -eq 5 ]; then
  echo "[test] pytest collected no tests: treating that as a failure"
  exit 1
fi
exit $rc
