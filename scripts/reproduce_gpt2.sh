#!/usr/bin/env bash
# Reproduce the GPT-2 paper's zero-shot table (Radford et al. 2019, Table 3) with the official weights, every
# number next to the paper's and lm-evaluation-harness's. Protocols and expected gaps: docs/eval.md.
#
#   scripts/reproduce_gpt2.sh                      # gpt2 (124M) from the Hugging Face hub (needs network once)
#   scripts/reproduce_gpt2.sh gpt2-xl              # another size: gpt2-medium | gpt2-large | gpt2-xl
#   scripts/reproduce_gpt2.sh ./gpt2               # a local HF directory (config.json + model.safetensors), offline:
#                                                  #   huggingface-cli download gpt2 config.json model.safetensors --local-dir ./gpt2
#   scripts/reproduce_gpt2.sh gpt2 --limit 50      # any extra option goes to `python -m gpt2jax.eval.zeroshot`
#
# Environment: TASKS (default: all), STRIDE (sliding-window stride; default 32 like Megatron-LM's zero-shot
# examples: each target keeps >= 992 tokens of context, 32x the work of disjoint windows, a GPU job), BATCH_SIZE,
# DATA_DIR (sets that are not shipped: PTB, WikiText-103, enwik8, text8, CBT, 1BW), DOWNLOAD=1 (fetch those from
# their official sources when online), OUT_DIR (default out/eval/<model>), PYTHON.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL="${1:-gpt2}"
shift $(( $# > 0 ? 1 : 0 ))
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi

args=(--init_from "$MODEL" --tasks "${TASKS:-all}" --stride "${STRIDE:-32}"
      --out_dir "${OUT_DIR:-out/eval/$(basename "$MODEL")}")
[[ -n "${BATCH_SIZE:-}" ]] && args+=(--batch_size "$BATCH_SIZE")
[[ -n "${DATA_DIR:-}" ]] && args+=(--data_dir "$DATA_DIR")
[[ "${DOWNLOAD:-0}" == "1" ]] && args+=(--download)

set -x
exec "$PYTHON" -m gpt2jax.eval.zeroshot "${args[@]}" "$@"
