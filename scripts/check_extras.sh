#!/usr/bin/env bash
# Check that every optional install of gpt2jax resolves against the package index, without installing anything:
# `pip install --dry-run` of each extra into a throwaway venv, one line per extra. Needs the package index (network
# or a mirror). Writes the full pip reports to ${OUT:-out/extras}/<extra>.txt.
#   bash scripts/check_extras.sh                 all extras: cuda cuda13 tpu hub harness test
#   bash scripts/check_extras.sh cuda hub        only these
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
out=${OUT:-out/extras}
mkdir -p "$out"
extras=("$@")
[ ${#extras[@]} -eq 0 ] && extras=(cuda cuda13 tpu hub harness test)
venv=$(mktemp -d)/venv
"$PYTHON" -m venv "$venv" || exit 1
status=0
for extra in "${extras[@]}"; do
  start=$(date +%s)
  if "$venv/bin/python" -m pip install --disable-pip-version-check --dry-run ".[$extra]" >"$out/$extra.txt" 2>&1; then
    echo "[extras] .[$extra] resolves ($(( $(date +%s) - start )) s): $(grep '^Would install' "$out/$extra.txt" | cut -c1-400)"
  else
    echo "[extras] .[$extra] FAILED to resolve; see $out/$extra.txt:"; grep -E "ERROR|error" "$out/$extra.txt" | head -5
    status=1
  fi
done
rm -rf "$(dirname "$venv")"
exit $status
