"""S seeds of one model in one compiled program: `jax.vmap` of the training step over a leading replica axis.

Params, optimizer state, dropout RNG key and the batch (each replica reads its own seed's data order) all carry
the replica axis; the step is `gpt2jax.training.loop.make_train_step` itself, vmapped, and the loop is the ordinary
one (`gpt2jax.training.loop.train_group`): each replica gets its run directory, metrics, periodic evals and
checkpoints, numerics guard and summary.json (with `replicas: S`) exactly as `train` gives its seed
(tests/test_replicas.py compares them). Small models are dispatch-bound on CPU and underuse a GPU, so S replicas
cost far less than S runs (bench/bench_replicas.py). Replicas run on one device; a group resumes when all its run
directories hold a checkpoint of the same step.
"""
from __future__ import annotations

import json

import jax

from gpt2jax.training.loop import train_group

# Config fields that may differ between the replicas of one program (everything else must be equal).
REPLICA_FIELDS = ("seed", "name")


def replica_key(config) -> str:
    """Configs with equal keys can train as replicas of one program."""
    d = json.loads(config.to_json_best_effort(sort_keys=True))
    for field in REPLICA_FIELDS:
        d.pop(field, None)
    return json.dumps(d, sort_keys=True)


def train_replicas(configs, devices=None) -> list[dict]:
    """Train configs that differ only in seed/name as one vmapped program -> one summary per config."""
    configs = [c.copy_and_resolve_references() for c in configs]
    if len({replica_key(c) for c in configs}) != 1:
        raise ValueError("replicas must differ only in " + ", ".join(REPLICA_FIELDS))
    return train_group(configs, (devices or jax.devices())[:1], replicas=True)
