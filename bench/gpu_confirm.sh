#!/usr/bin/env bash
# A short follow-up to bench/gpu_check.sh (one device call, ~3 min): where does gpt2jax's step at 124M B16 leave
# the GPU idle? Parts, each skipped when the budget (GPU_CHECK_BUDGET_S, default 250 s) would be overrun:
#   1. the bench vs torch with each side's kernel table and device timeline (busy, idle, gaps by length, the
#      longest gaps and their neighbours: bench/profile_summary.py), and gpt2jax with 5 steps per call;
#   2. gpt2jax alone, profiled with command buffers on: XLA runs a step as CUDA graphs unless a profiler is active,
#      when it goes op by op, so part 1's timeline is not quite what its timing measured;
#   3. gpt2jax alone with command buffers off, and 4. with xla_gpu_require_exclusive_lock (cheaper graph updates):
#      step times to set beside part 1's (another process, the same card);
#   5. GPU tests: the backend-faking routing tests and two generation tests.
# Its first call (2026-12-04, with 10-step runs; bench/results/gpu_h200/call5_gpu_confirm.log, call5_timeline_*):
# gpt2jax's device is busy 30.6 ms a step and idle 0.6 ms between kernels in steady state (torch: 31.3 and 2.1);
# the rest of its measured 32.5 ms a step was each 10-step run's start and stop. Command buffers on or off, or
# the exclusive lock, moved the step by under 1.5% (32.5, 32.9, 32.2 ms).
# Same set-up as gpu_check.sh: run(command="bash bench/gpu_confirm.sh", carry=[".whl"], timeout_s=290).
# Try it on a CPU first: GPU_CHECK_TOY=1 PYTHON=.venv/bin/python bash bench/gpu_confirm.sh
DEFAULT_BUDGET_S=250 LOG_NAME=gpu_confirm.log
source bench/gpu_common.sh
if [ -n "${GPU_CHECK_TOY:-}" ]; then COMMON=(--only gpu --toy --gpu_steps 2 --repeats 2); K=2
else COMMON=(--only gpu --gpu_steps 50 --repeats 3); K=5; fi
ONE=(--gpu_shapes 124m:16 --profile_dir)
part timeline 110 "$PY" bench/bench_train.py "${COMMON[@]}" "${ONE[@]}" "$R/timeline" --ours_variants "steps_per_call=$K" \
  --out_dir "$R/timeline"
XLA_FLAGS="--xla_enable_command_buffers_during_profiling=true" \
  part graphs_profiled 45 "$PY" bench/bench_train.py "${COMMON[@]}" "${ONE[@]}" "$R/graphs_profiled" --no_ref \
  --out_dir "$R/graphs_profiled"
XLA_FLAGS="--xla_gpu_enable_command_buffer=" \
  part no_graphs 35 "$PY" bench/bench_train.py "${COMMON[@]}" --gpu_shapes 124m:16 --no_ref --out_dir "$R/no_graphs"
XLA_FLAGS="--xla_gpu_require_exclusive_lock=true" \
  part exclusive_lock 35 "$PY" bench/bench_train.py "${COMMON[@]}" --gpu_shapes 124m:16 --no_ref \
  --out_dir "$R/exclusive_lock"
XLA_FLAGS="--xla_gpu_autotune_level=0" \
  part pytest 60 "$PY" -m pytest -q -p no:cacheprovider tests/test_fast_path.py::test_attention_auto_is_blocked_on_cpu_and_xla_with_a_mask \
  tests/test_fast_path.py::test_auto_keeps_cudnn_off_shapes_its_training_kernels_refuse \
  tests/test_generate.py::test_continue_text_compiles_one_program_for_all_its_chunks \
  tests/test_generate.py::test_generation_runs_on_sharded_params
rm -rf "$R"/*/traces
finish
