#!/usr/bin/env bash
# A short follow-up to bench/gpu_check.sh (one device call, ~5 min): the default model (layers unrolled on a GPU)
# at 124M B16 and B32 vs torch with XLA's Triton GEMMs off, the same without the flag (gpt2jax alone), and the
# GPU parity tests with per-test durations. Same set-up as gpu_check.sh (carry .whl); results in $OUT/results.tgz.
DEFAULT_BUDGET_S=320 LOG_NAME=gpu_confirm.log
source bench/gpu_common.sh
if [ -n "${GPU_CHECK_TOY:-}" ]; then COMMON=(--only gpu --toy --gpu_steps 2 --repeats 2); TESTS=(-k float64)
else COMMON=(--only gpu --gpu_steps 10 --repeats 3); TESTS=(--timeout 100); fi
XLA_FLAGS="--xla_gpu_enable_triton_gemm=false" \
  part no_triton_vs_torch 150 "$PY" bench/bench_train.py "${COMMON[@]}" --gpu_shapes 124m:16,124m:32 --out_dir "$R/no_triton"
part default_flags 50 "$PY" bench/bench_train.py "${COMMON[@]}" --gpu_shapes 124m:16,124m:32 --no_ref --out_dir "$R/default"
part pytest 130 "$PY" -m pytest -q -p no:cacheprovider --durations 20 tests/test_model.py tests/test_hf_parity.py \
  tests/test_generate.py "${TESTS[@]}"
finish
