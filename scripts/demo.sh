#!/usr/bin/env bash
# README command one: install into ./.venv (first time only), tokenize the bundled Tiny Shakespeare (first time
# only), train the default small GPT-2 on the CPU, then print the whole val split's perplexity and a sample.
# Idempotent: a second run finds the finished run in runs/default, re-scores it and samples again.
# Extra arguments go to the trainer, e.g. `bash scripts/demo.sh --config.train.max_steps=300`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
data=data/prepared/shakespeare_char
if [ ! -f "$data/meta.json" ]; then
  .venv/bin/python -m gpt2jax.data.prepare --input data/tinyshakespeare.txt --out "$data" --tokenizer char
fi
.venv/bin/python -m gpt2jax.train --config configs/default.py "$@"
echo "[demo] run directory: runs/default (config.json, metrics.jsonl, loss.png, TensorBoard events, checkpoints/)"
