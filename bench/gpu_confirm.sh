#!/usr/bin/env bash
# A short follow-up to bench/gpu_check.sh (one device call, ~5 min): the default model (layers unrolled on a GPU)
# at 124M B16 and B32 vs torch with XLA's Triton GEMMs off, the same without the flag (gpt2jax alone), and the
# GPU parity tests with per-test durations. Same set-up as gpu_check.sh (carry .whl); results in $OUT/results.tgz.
set -u
OUT=${OUT:-$(mktemp -d)}
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET_S:-320}
W=$(mktemp -d); R="$W/results"; mkdir -p "$R"
exec > >(tee "$OUT/gpu_confirm.log") 2>&1
compgen -G ".whl/*.whl" >/dev/null && \
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$W/site" .whl/*.whl
export PYTHONPATH="$W/site:$PWD" PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
START=$SECONDS
if [ -n "${GPU_CHECK_TOY:-}" ]; then COMMON=(--only gpu --toy --gpu_steps 2 --repeats 2); TESTS=(-k float64)
else COMMON=(--only gpu --gpu_steps 10 --repeats 3); TESTS=(--timeout 100); fi
part() {
  local name=$1 limit=$2; shift 2
  local left=$((BUDGET - (SECONDS - START)))
  if [ "$left" -lt 30 ]; then echo "== $name: skipped (${left}s of budget left)"; return; fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name $(date -u +%T) (limit ${limit}s)"
  timeout "$limit" "$@" 2>&1 | grep -v -i "warning" | tee "$R/$name.log"
  echo "== $name exit ${PIPESTATUS[0]} after $((SECONDS - START))s"
}
XLA_FLAGS="--xla_gpu_enable_triton_gemm=false" \
  part no_triton_vs_torch 150 "$PY" bench/bench_train.py "${COMMON[@]}" --gpu_shapes 124m:16,124m:32 --out_dir "$R/no_triton"
part default_flags 50 "$PY" bench/bench_train.py "${COMMON[@]}" --gpu_shapes 124m:16,124m:32 --no_ref --out_dir "$R/default"
part pytest 130 "$PY" -m pytest -q -p no:cacheprovider --durations 20 tests/test_model.py tests/test_hf_parity.py \
  tests/test_generate.py "${TESTS[@]}"
tar -czf "$OUT/results.tgz" -C "$W" results
echo "done after $((SECONDS - START))s"
