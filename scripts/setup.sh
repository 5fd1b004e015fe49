#!/usr/bin/env bash
# Create ./.venv and install gpt2jax into it. Idempotent: a second run only checks.
#   bash scripts/setup.sh          runtime dependencies (requirements.txt)
#   bash scripts/setup.sh --test   plus the test-only references (torch CPU build, transformers, pytest)
#   bash scripts/setup.sh --gpu    runtime dependencies with jax's CUDA 12 plugin (the `cuda` extra; NVIDIA machines)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
reqs=requirements.txt
extra=""
case "${1:-}" in
  --test) reqs=requirements-test.txt ;;
  --gpu) extra="[cuda]" ;;
  "") ;;
  *) echo "[setup] unknown option ${1}; use --test, --gpu or nothing" >&2; exit 2 ;;
esac
py=$PYTHON; [ -x .venv/bin/python ] && py=.venv/bin/python
if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  hint="run with PYTHON=python3.11 or newer"; [ "$py" = .venv/bin/python ] && hint="delete .venv, then $hint"
  echo "[setup] $("$py" --version 2>&1) ($py): gpt2jax needs Python >= 3.11 (jax 0.10.2 on 3.11, 0.11.2 on" \
       "3.12+); $hint" >&2
  exit 2
fi
stamp=.venv/.installed-$(basename "$reqs" .txt)${extra:+-cuda}-$(sha256sum "$reqs" requirements.txt pyproject.toml | sha256sum | cut -c1-12)
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
if [ ! -f "$stamp" ]; then
  echo "[setup] installing $reqs into .venv (first time: a few minutes)"
  .venv/bin/python -m pip install --disable-pip-version-check -q -r "$reqs"
  if [ -n "$extra" ]; then  # the plugin and its pip CUDA/cuDNN libraries, pinned to the same jax
    .venv/bin/python -m pip install --disable-pip-version-check -q -e ".$extra"
  else
    .venv/bin/python -m pip install --disable-pip-version-check -q --no-deps -e .
  fi
  touch "$stamp"
fi
if [ -n "$extra" ]; then
  .venv/bin/python -c "import jax; d = jax.devices(); print(f'[setup] jax {jax.__version__} sees {len(d)} {d[0].platform} device(s)')"
fi
