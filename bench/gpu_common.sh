# Sourced by bench/gpu_check.sh and bench/gpu_confirm.sh (device calls): set-up and a budgeted `part` runner.
# Needs DEFAULT_BUDGET_S and LOG_NAME; reads OUT (the device tool's), PYTHON and GPU_CHECK_BUDGET_S from the
# environment; sets W (scratch), R (results folder, tarred at the end), START.
set -u
OUT=${OUT:-$(mktemp -d)}
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET_S:-$DEFAULT_BUDGET_S}
W=$(mktemp -d)
R="$W/results"
mkdir -p "$R"
exec > >(tee "$OUT/$LOG_NAME") 2>&1
if compgen -G ".whl/*.whl" >/dev/null; then  # ml-collections and tensorboardX, missing on the GPU image
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$W/site" .whl/*.whl
fi
export PYTHONPATH="$W/site:$PWD" PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # jax and torch share the card in one process
START=$SECONDS

part() {  # part <name> <timeout s> <command...>: runs it unless the budget would be overrun; log in $R/<name>.log
  local name=$1 limit=$2; shift 2
  local left=$((BUDGET - (SECONDS - START)))
  if [ "$left" -lt 30 ]; then echo "== $name: skipped (${left}s of budget left)"; return; fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name $(date -u +%T) (limit ${limit}s)"
  timeout "$limit" "$@" 2>&1 | grep -v -i "warning" | tee "$R/$name.log"
  echo "== $name exit ${PIPESTATUS[0]} after $((SECONDS - START))s"
}

finish() {  # the device tool returns at most 8 files: one tarball
  tar -czf "$OUT/results.tgz" -C "$W" results
  echo "done after $((SECONDS - START))s; $OUT/results.tgz"
}
