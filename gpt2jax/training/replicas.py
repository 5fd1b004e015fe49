"""S seeds of one model in one compiled program: `jax.vmap` of the training step over a leading replica axis.

Params, optimizer state, dropout RNG key and the batch (each replica reads its own seed's data order) all carry
the replica axis; the step is `gpt2jax.train.make_train_step` itself, vmapped, so every replica computes what
`gpt2jax.train.train` computes for its seed (tests/test_replicas.py compares them). Small models are
dispatch-bound on CPU and underuse a GPU, so S replicas cost far less than S runs (bench/bench_replicas.py).

Each replica gets the run directory `train` would give it (config.json, tokenizer.json, metrics.jsonl, a final
checkpoint, summary.json with `replicas: S`). Replicas run on one device, start from step 0 and save only at the
end: an interrupted group is trained again from the start (the sweep skips groups whose summaries are done).
"""
from __future__ import annotations

import functools
import json
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from gpt2jax.weights import checkpoint as ckpt_lib
from gpt2jax.runtime import compile_cache
from gpt2jax.training import metrics as metrics_lib
from gpt2jax.training.compute import compute_summary
from gpt2jax.data.loader import Loader
from gpt2jax.training.optim import make_optimizer
from gpt2jax.model.sharding import activation_context, param_shardings
from gpt2jax.training.spec import resolve
from gpt2jax.training.state import initial_state, train_items
from gpt2jax.training.loop import final_eval, make_batch_loss, make_train_step, open_data, write_run_files
from gpt2jax.training.schema import check_train_config, mesh_and_rules

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
    t0 = time.time()
    configs = [c.copy_and_resolve_references() for c in configs]
    if len({replica_key(c) for c in configs}) != 1:
        raise ValueError("replicas must differ only in " + ", ".join(REPLICA_FIELDS))
    S = len(configs)
    for c in configs:
        check_train_config(c)
    train_split, val_split = open_data(configs[0])
    tokenizer = train_split.tokenizer
    specs = [resolve(c, tokenizer, (devices or jax.devices())[:1]) for c in configs]  # the mesh's one device
    spec = specs[0]
    t, seq_len, cfg = spec.train, spec.seq_len, spec.model
    compile_cache.use(t.compilation_cache_dir)
    cfg.check_tokens(seq_len, max(train_split.max_id(), val_split.max_id()))
    mesh, rules = mesh_and_rules(spec.config, (devices or jax.devices())[:1])
    tx, schedule = make_optimizer(spec.optim, cfg)
    train_loaders = [Loader(train_split, seq_len, t.batch_size, t.grad_accum, c.seed) for c in configs]
    val_batches = [np.stack([Loader(val_split, seq_len, t.eval_batch_size, 1, c.seed).batch(i) for c in configs])
                   for i in range(t.eval_batches)]  # each (S, 1, B, T+1)
    run_dirs = [s.run_dir for s in specs]
    for s in specs:
        write_run_files(s, tokenizer, 0)
    loggers = [metrics_lib.MetricsLogger(s.run_dir, t.tensorboard, wandb=s.config.logging.wandb, name=s.config.name,
                                         config=json.loads(s.config.to_json_best_effort())) for s in specs]

    p_sh = param_shardings(cfg, mesh, rules)
    # one program for all seeds (the random streams equal those of `train`'s per-seed initial_state)
    state = jax.jit(jax.vmap(functools.partial(initial_state, cfg, tx)))(jnp.array([c.seed for c in configs]))
    t_compile = time.time()
    with activation_context(mesh, rules):
        step_fn = jax.jit(jax.vmap(make_train_step(cfg, tx, schedule, p_sh)), donate_argnums=0)
        eval_fn = jax.jit(jax.vmap(make_batch_loss(cfg)))
        step_fn = step_fn.lower(state, jax.ShapeDtypeStruct((S, *spec.batch_shape), jnp.int32)).compile()
    compile_s = time.time() - t_compile

    def evaluate(params) -> np.ndarray:  # (S,)
        with activation_context(mesh, rules):
            return np.mean([np.asarray(eval_fn(params, b)) for b in val_batches], axis=0)

    loss = val = np.full(S, math.nan)
    loop_t0 = time.time()
    for step in range(1, t.max_steps + 1):
        batch = np.stack([loader.batch(step - 1) for loader in train_loaders])  # (S, A, B, T+1)
        state, m = step_fn(state, batch)
        if step % t.log_every == 0 or step == t.max_steps:
            m = {k: np.asarray(v) for k, v in m.items()}
            loss = m["loss"]
            for i, logger in enumerate(loggers):
                logger.write(dict(kind="train", step=step, **{k: float(v[i]) for k, v in m.items()},
                                  elapsed_s=time.time() - t0))
        if step % t.eval_every == 0 or step == t.max_steps:
            val = evaluate(state["params"])
            for i, logger in enumerate(loggers):
                logger.write(dict(kind="eval", step=step, val_loss=float(val[i]),
                                  val_ppl=metrics_lib.perplexity(float(val[i]))))
    jax.block_until_ready(state)
    loop_s = time.time() - loop_t0
    peak = metrics_lib.peak_flops(list(mesh.devices.flat), t.peak_flops)
    return [_finish(c, tokenizer, jax.tree.map(lambda x: x[i], state), float(loss[i]), float(val[i]),
                    loggers[i], run_dirs[i], val_split, (mesh, rules), dict(compile_s=compile_s, loop_s=loop_s,
                                                                             t0=t0, peak=peak, S=S))
            for i, c in enumerate(specs)]


def _finish(spec, tokenizer, state, loss, val_loss, logger, run_dir, val_split, mesh_rules, timing) -> dict:
    """One replica's final eval, checkpoint and summary.json, as `train` writes them."""
    t, seq_len, cfg = spec.train, spec.seq_len, spec.model
    mesh, rules = mesh_rules
    final = None
    if t.final_eval:
        final = final_eval(cfg, state["params"], val_split, seq_len, t.final_eval_stride, t.eval_batch_size, mesh,
                           rules, False)
        logger.write(dict(kind="final", step=t.max_steps, **final))
    ckpts = ckpt_lib.Checkpoints(run_dir, keep=t.keep_checkpoints, keep_best=t.keep_best, async_save=False)
    meta = ckpt_lib.checkpoint_meta(t.max_steps, cfg, tokenizer, spec.config.seed, spec.rows_per_step)
    ckpts.save(t.max_steps, state["params"], train_items(state), meta, val_loss)
    ckpts.close()
    summary = dict(run_dir=str(run_dir), start_step=0, step=t.max_steps, max_steps=t.max_steps, stopped_early=False,
                   loss=loss, val_loss=val_loss, final=final, compile_s=timing["compile_s"], replicas=timing["S"])
    # train_loop_s: this replica's share (1/S) of the vmapped loop, so mfu is the whole program's MFU
    summary.update(compute_summary(cfg, seq_len, spec.tokens_per_step, t.max_steps, t.max_steps,
                                   timing["loop_s"] / timing["S"], time.time() - timing["t0"], timing["peak"]))
    if t.plot:
        metrics_lib.plot_losses(run_dir)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    logger.close(summary)
    return summary
