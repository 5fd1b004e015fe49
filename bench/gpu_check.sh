#!/usr/bin/env bash
# Issue 8's GPU checks in ONE device call (device time is scarce: prepare here, run once). Parts, in order of
# priority, each with its own timeout and skipped when the overall budget (GPU_CHECK_BUDGET_S, default 500 s) would
# be overrun:
#   1. bench/bench_train.py --only gpu at 124M T=1024 bf16 batch 16: gpt2jax (model.attention=auto -> cuDNN; layers
#      unrolled on a GPU by model.scan_unroll=0) vs torch.compile + bf16 autocast + flash SDPA + fused AdamW,
#      alternating, plus each side's kernel-time profile and device timeline (bench/profile_summary.py), and gpt2jax
#      with 5 steps per call (train.steps_per_call=5) and with the hand-written LayerNorm backward that auto picks
#      on the CPU (model.layer_norm=manual; a GPU keeps flax's until this says otherwise). Timed runs are 50 steps:
#      up to 2026-12-04 they were 10, and the device timelines of that day showed gpt2jax's 10-step runs carrying
#      8-14 ms of start and stop beyond their steps (1 ms a step; torch's ~1.5 ms a run), which a training run,
#      reading metrics a call late, does not pay. The profiled runs are 10 steps, marked on the host, so the
#      timeline now says how long each run's lead and tail beyond its kernels are and which host spans fill them;
#   2. the same bench at batch 32;
#   3. pytest tests/test_model.py tests/test_hf_parity.py tests/test_generate.py (parity with pinned precision) and
#      the attention routing of tests/test_fast_path.py (2026-12-04: 60 of 63 passed in the part's 240 s, the
#      other three in a second call);
#   4. the loss alone (bench/loss.py): recomputing exp in token_nll's backward pass (the accelerators' choice)
#      against keeping it (the CPU's) on bf16 logits of 124M B16 x T1024 (2026-12-04: 2.6-2.7 vs 2.5-2.6 ms);
#   5. 355M at batch 16 vs torch;
#   6. the AdamW update alone, three forms (bench/optimizer_update.py: optim.adamw_or_skip vs optax.adamw).
# The rolled-scan variant and the XLA flag variants (Triton GEMMs off, latency-hiding scheduler) of earlier calls
# are gone: measured in two and three calls, they settled the defaults (bench/results/HISTORY.md, section 2).
# Everything lands in $OUT/results.tgz (the device tool returns at most 8 files) plus $OUT/gpu_check.log.
#
# Before the device call, from the repo root (the GPU machine's Python 3.12 lacks these two; see
# ../shared/notes/GPU.md):
#   echo /.whl/ >> "$(git rev-parse --git-common-dir)/info/exclude"
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl ml-collections==1.1.0 tensorboardX
# then: run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=580)
# Try it on a CPU first: GPU_CHECK_TOY=1 PYTHON=.venv/bin/python bash bench/gpu_check.sh
DEFAULT_BUDGET_S=500 LOG_NAME=gpu_check.log
source bench/gpu_common.sh
(nvidia-smi || true) > "$R/nvidia-smi.txt" 2>&1
if [ -n "${GPU_CHECK_TOY:-}" ]; then
  COMMON=(--only gpu --toy --gpu_steps 2 --repeats 2); K=2
  TESTS=(-k "float64 or matches_transformers or greedy_ids or cudnn")
  OPT=(--shape small --rounds 3); LOSS=(--rows 256 --rounds 3)
else
  COMMON=(--only gpu --gpu_steps 50 --repeats 3); TESTS=(); K=5; OPT=(--rounds 15); LOSS=(--rows 16384 --rounds 15)
fi


part bench_b16 200 "$PY" bench/bench_train.py "${COMMON[@]}" --gpu_shapes 124m:16 --profile_dir "$R/profile" \
  --profile_steps 10 \
  --ours_variants "steps_per_call=$K" "layer_norm=manual" --out_dir "$R/b16"
rm -rf "$R/profile/traces"  # tens of MB; the kernel tables next to them are what is read
part bench_b32 120 "$PY" bench/bench_train.py "${COMMON[@]}" --gpu_shapes 124m:32 --out_dir "$R/b32"
# Each test compiles for the GPU; with XLA's GEMM autotuning that was ~10 s a test (2026-11-27: 14 of 54 in 130 s).
XLA_FLAGS="--xla_gpu_autotune_level=0" \
  part pytest 280 "$PY" -m pytest -q -p no:cacheprovider --durations 15 tests/test_model.py tests/test_hf_parity.py \
  tests/test_generate.py tests/test_fast_path.py::test_auto_keeps_cudnn_off_shapes_its_training_kernels_refuse \
  "${TESTS[@]}"
part loss 90 "$PY" bench/loss.py "${LOSS[@]}" --dtype bfloat16 --out "$R/loss.json"
part bench_355m 130 "$PY" bench/bench_train.py "${COMMON[@]}" --gpu_shapes 355m:16 --out_dir "$R/m355"
part optimizer 60 "$PY" bench/optimizer_update.py "${OPT[@]}" --out "$R/optimizer_update.json"
finish
