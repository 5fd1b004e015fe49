"""Weights in and out: checkpoints of a run, Hugging Face directories and hub ids, starting from weights."""
