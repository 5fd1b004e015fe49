#!/usr/bin/env bash
# Create ./.venv and install gpt2jax into it. Idempotent: a second run only checks.
#   bash scripts/setup.sh          runtime dependencies (requirements.txt)
#   bash scripts/setup.sh --test   plus the test-only references (torch CPU build, transformers, pytest)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
reqs=requirements.txt
[ "${1:-}" = "--test" ] && reqs=requirements-test.txt
stamp=.venv/.installed-$(basename "$reqs" .txt)-$(sha256sum "$reqs" requirements.txt pyproject.toml | sha256sum | cut -c1-12)
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
if [ ! -f "$stamp" ]; then
  echo "[setup] installing $reqs into .venv (first time: a few minutes)"
  .venv/bin/python -m pip install --disable-pip-version-check -q -r "$reqs"
  .venv/bin/python -m pip install --disable-pip-version-check -q --no-deps -e .
  touch "$stamp"
fi
