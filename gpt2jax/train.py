"""Train a GPT-2: `python -m gpt2jax.train --config configs/default.py [--config.train.max_steps=500 ...]`.

The loop, in order (everything that can be wrong about the inputs is checked before anything compiles):
  1. data: open the prepared train/val splits; the model's vocabulary comes from their tokenizer;
  2. devices: a (data, fsdp, tensor) mesh; the batch must split over its data-parallel devices;
  3. run dir: runs/<name>/; a checkpoint there is resumed (after checking it fits this model) or refused;
  4. one jitted train step (explicit in/out shardings, donated state, micro-batches summed by lax.scan), and for
     small models one that runs several steps per call (gpt2jax.multistep), compiled from abstract shapes; a
     step that cannot fit the device's memory stops here (gpt2jax.memory), before any state exists;
  5. state: params + AdamW state + step + RNG key, created (or restored) directly in their shardings; with
     --config.init_from the params come from a run dir or Hugging Face weights (gpt2jax.init_from);
  6. the loop (metrics read one call late, so the device never waits for the host): log, evaluate on fixed val
     batches, sample, checkpoint; Ctrl-C/SIGTERM stop after the current call with a checkpoint (docs/reliability.md); then the whole val split is scored with sliding windows and the loss curve is plotted.

`train(config) -> summary dict` is the importable entry point (tests call it directly).
"""
from __future__ import annotations

if __name__ == "__main__":  # SIGTERM/SIGINT while the libraries below import: nothing started, exit quietly
    import os as _os
    import signal as _signal

    for _sig in (_signal.SIGTERM, _signal.SIGINT):
        _signal.signal(_sig, lambda signum, frame: _os._exit(0))

import contextlib
import functools
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm import tqdm

from gpt2jax import checkpoint as ckpt_lib
from gpt2jax import init_from as init_lib
from gpt2jax import metrics as metrics_lib
from gpt2jax import multistep
from gpt2jax.compute import compute_summary
from gpt2jax.memory import check_step_fits
from gpt2jax.data.loader import Loader, global_batch
from gpt2jax.data.shards import DataError, open_split
from gpt2jax.errors import SaveError, run_cli
from gpt2jax.lock import RunDirLock
from gpt2jax.model import GPT, flops_per_token, init_params, mean_loss, param_count, token_nll
from gpt2jax.optim import make_optimizer
from gpt2jax.sharding import activation_context, batch_sharding, opt_state_shardings, param_shardings, replicated
from gpt2jax.signals import StopSignals
from gpt2jax.train_config import check_train_config, mesh_and_rules, model_config
from gpt2jax.watchdog import Watchdog, injected_sleep


# ---- the compiled functions ---------------------------------------------------------------------------------

def make_train_step(cfg, tx, schedule, p_shardings):
    """(state, tokens (A, B, T+1)) -> (state, metrics): A micro-batches, gradients averaged, one AdamW update."""
    model = GPT(cfg)
    train_mode = cfg.dropout > 0

    def loss_fn(params, tokens, key):  # tokens (B, T+1)
        logits = model.apply({"params": params}, tokens[:, :-1], deterministic=not train_mode,
                             rngs={"dropout": key} if train_mode else None)  # (B, T, V)
        return mean_loss(logits, tokens[:, 1:])

    def step(state, batch):
        params = state["params"]
        key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
        constrain = functools.partial(jax.lax.with_sharding_constraint, shardings=p_shardings)

        def micro(carry, xs):
            grad_sum, loss_sum = carry
            tokens, index = xs
            loss, grads = jax.value_and_grad(loss_fn)(params, tokens, jax.random.fold_in(key, index))
            return (constrain(jax.tree.map(jnp.add, grad_sum, grads)), loss_sum + loss), None

        zeros = constrain(jax.tree.map(jnp.zeros_like, params))
        n_micro = batch.shape[0]
        (grad_sum, loss_sum), _ = jax.lax.scan(micro, (zeros, jnp.float32(0)), (batch, jnp.arange(n_micro)))
        grads = jax.tree.map(lambda g: g / n_micro, grad_sum)
        updates, opt_state = tx.update(grads, state["opt_state"], params)
        loss, grad_norm = loss_sum / n_micro, optax.global_norm(grads)
        # numerics guard: a NaN/Inf loss or gradient leaves params and optimizer state as they were (the batch
        # still counts as consumed); the host reads the flag with the other metrics, no extra sync
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        keep_if_bad = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
        new_state = dict(params=keep_if_bad(optax.apply_updates(params, updates), params),
                         opt_state=keep_if_bad(opt_state, state["opt_state"]), step=state["step"] + 1,
                         rng=state["rng"])
        metrics = dict(loss=loss, grad_norm=grad_norm, lr=schedule(state["step"]),
                       nonfinite=1 - finite.astype(jnp.int32))
        return new_state, metrics


    return step


def initial_state(cfg, tx, seed: int) -> dict:
    """Training state at step 0: GPT-2-initialised params, fresh optimizer state, and the dropout RNG key
    (raw uint32 key data, which orbax can save)."""
    params = init_params(cfg, jax.random.key(seed))
    return dict(params=params, opt_state=tx.init(params), step=jnp.int32(0),
                rng=jax.random.key_data(jax.random.key(seed + 1)))


def make_nll_fn(cfg):
    """(params, inputs (B, T), targets (B, T)) -> per-token NLL (B, T), for evaluation."""
    model = GPT(cfg)
    return lambda params, inputs, targets: token_nll(model.apply({"params": params}, inputs), targets)


def compile_steps(cfg, tx, schedule, state_sh, abstract_state, batch_sh, k_steps: int, batch_shape,
                  context=contextlib.nullcontext) -> dict:
    """The compiled single step ("step") and, for k_steps > 1, the k-steps-per-call scan ("multi", taking
    (k, A, B, T+1) batches sharded as "multi_batch_sh"). With k_steps > 1 the single step only serves a tail of
    steps shorter than a call, so it compiles when first called. context() is entered while tracing: e.g.
    `lambda: activation_context(mesh, rules)`."""
    step = make_train_step(cfg, tx, schedule, state_sh["params"])
    rep = replicated(batch_sh.mesh)
    tokens = lambda *lead: jax.ShapeDtypeStruct((*lead, *batch_shape), jnp.int32)  # noqa: E731
    single = jax.jit(step, in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, rep), donate_argnums=0)
    if k_steps == 1:
        with context():
            return dict(step=single.lower(abstract_state, tokens()).compile())
    multi_sh = NamedSharding(batch_sh.mesh, P(None, *batch_sh.spec))
    multi = jax.jit(multistep.make_multi_step(step), in_shardings=(state_sh, multi_sh),
                    out_shardings=(state_sh, rep), donate_argnums=0)
    with context():
        compiled = multi.lower(abstract_state, tokens(k_steps)).compile()
    return dict(multi=compiled, multi_batch_sh=multi_sh,
                step=multistep.compile_on_first_call(single, context, abstract_state, tokens()))


class TrainLog:
    """Train records from per-call metrics (each a (k,) array per field), read on the host one call late so that
    the next call is already queued when the host waits; the records and their steps are those of a step-by-step
    loop. tokens/s and MFU are measured between host reads."""

    def __init__(self, logger, bar, log_every, end, tokens_per_step, fpt, peak, t0, start, last, nonfinite):
        self.logger, self.bar, self.log_every, self.end, self.nonfinite = logger, bar, log_every, end, nonfinite
        self.tokens_per_step, self.fpt, self.peak, self.t0, self.last = tokens_per_step, fpt, peak, t0, last
        self.pending, self.mark, self.mark_step = [], time.time(), start

    def add(self, first_step: int, k: int, metrics: dict) -> None:
        self.pending.append((first_step, k, metrics))

    def flush(self, keep_last: bool = False) -> None:
        while len(self.pending) > int(keep_last):
            first, k, m = self.pending.pop(0)
            m = {name: np.atleast_1d(np.asarray(host(v), np.float64)) for name, v in m.items()}  # waits
            now = time.time()
            tok_s = self.tokens_per_step * (first + k - self.mark_step) / max(now - self.mark, 1e-9)
            self.mark, self.mark_step = now, first + k
            flags = m.pop("nonfinite")  # the numerics guard's per-step flags (metrics.NonfiniteTally)
            for i in range(k):
                step = first + i + 1
                self.nonfinite.update(step, flags[i])
                if step % self.log_every and step != self.end:
                    continue
                rec = {name: float(v[i]) for name, v in m.items()}
                rec["nonfinite_steps"] = self.nonfinite.count
                self.last["loss"] = rec["loss"]
                self.logger.write(dict(kind="train", step=step, **rec, tokens_per_s=tok_s,
                                       mfu=metrics_lib.mfu(self.fpt, tok_s, self.peak), elapsed_s=now - self.t0))
                self.bar.set_postfix(loss=f"{rec['loss']:.4f}", tok_s=f"{tok_s:,.0f}", refresh=False)


def host(x) -> np.ndarray:
    """A replicated (possibly multi-process) array as numpy."""
    return np.asarray(x.addressable_data(0))


# ---- setup ---------------------------------------------------------------------------------------------------

def open_data(config):
    d = config.data
    train_split = open_split(d.dir, "train", d.tokenizer)
    val_split = open_split(d.dir, "val", d.tokenizer)
    if val_split.tokenizer.fingerprint != train_split.tokenizer.fingerprint:
        raise DataError(f"{d.dir}: train and val splits were made by different tokenizers")
    return train_split, val_split


def check_run_dir(config, run_dir: Path, cfg, tokenizer, ckpts) -> None:
    """Refuse a run dir whose checkpoints cannot continue with this config (or resume=False), before any change."""
    steps = ckpts.steps()
    if not steps:
        return
    if not config.train.resume:
        raise ckpt_lib.RunDirError(
            f"run directory {run_dir} already holds checkpoints (latest step {ckpts.latest_step()}) and "
            "train.resume=False. Nothing was changed: pick a new run name with --config.name=<new name>, or resume "
            "with --config.train.resume=True."
        )
    for step in ckpts.candidates():  # the newest step whose meta reads (a damaged one is judged when restoring)
        try:
            meta = ckpts.meta(step)
        except Exception:  # noqa: BLE001 - orbax/JSON errors of a damaged step
            continue
        ckpt_lib.check_compatible(run_dir, meta, cfg, tokenizer)
        return


def restore_state(ckpts, abstract_state: dict, state_sh: dict, fallback: bool, say) -> tuple[int, dict | None]:
    """(step, state) of the newest checkpoint that verifies (files match the manifest, arrays finite), or
    (0, None) for a fresh run. Unusable newer steps are named and moved to rejected_checkpoints/."""
    if not ckpts.steps():
        return 0, None
    with_sh = lambda tree, sh: jax.tree.map(  # noqa: E731
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, sh)
    train_target = {k: with_sh(abstract_state[k], state_sh[k]) for k in ("opt_state", "step", "rng")}
    step, restored, rejected = ckpts.restore_good(with_sh(abstract_state["params"], state_sh["params"]),
                                                  train_target, fallback=fallback)
    if step is None:
        raise ckpt_lib.CorruptCheckpointError(
            f"no usable checkpoint in {ckpts.directory}: " + "; ".join(why for _, why in rejected)
            + ". Move the checkpoints directory aside to start over, or restore it from a copy.")
    ckpts.reject([s for s in ckpts.steps() if s > step])
    if rejected:
        say(f"resuming from step {step}, the newest checkpoint that verifies")
    return step, dict(params=restored["params"], **restored["train"])


def make_watchdog(t, run_dir: Path) -> Watchdog:
    return Watchdog(timeout_s=t.watchdog_timeout_s, factor=t.watchdog_step_factor, min_s=t.watchdog_min_s,
                    exit_on_hang=t.watchdog_exit, report_dir=run_dir, process_index=jax.process_index())


def write_run_files(config, run_dir: Path, tokenizer, start_step: int) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    new = config.to_json_best_effort(indent=1, sort_keys=True)
    path = run_dir / ckpt_lib.CONFIG_FILE
    if path.is_file() and path.read_text() != new:  # resumed with changed settings: keep the old file too
        path.rename(run_dir / f"config.before_step{start_step}.json")
    path.write_text(new)
    (run_dir / ckpt_lib.TOKENIZER_FILE).write_text(json.dumps(tokenizer.to_dict()))


def sample_text(cfg, params, tokenizer, t, seed: int) -> str | None:
    """t.sample_tokens tokens after t.sample_prompt (`gpt2jax.generate.continue_text`), or None when sampling is
    off. Single-process only: process 0 samples alone, and a program over multi-process params needs them all."""
    if t.sample_tokens <= 0 or jax.process_count() > 1:
        return None
    from gpt2jax.generate import GenerationError, Sampling, continue_text

    try:
        sampling = Sampling(temperature=t.sample_temperature, top_k=t.sample_top_k or None, seed=seed)
        return continue_text(cfg, params, tokenizer, t.sample_prompt, t.sample_tokens, sampling)
    except GenerationError as e:
        return f"(no sample: {e})"


# ---- the loop ------------------------------------------------------------------------------------------------

def train(config, devices=None) -> dict:
    """Train (or resume) the run described by `config`; returns a summary (also written to summary.json).

    devices: the devices of the mesh (default: all); tests pass a subset to compare 1 and 8 devices.
    SIGTERM/SIGINT stop the run cleanly (gpt2jax.signals); the run dir is locked while it trains (gpt2jax.lock).
    """
    stop = StopSignals(say=tqdm.write).install()
    with contextlib.ExitStack() as stack:
        stack.callback(stop.restore)
        return _train(config, devices, stop, stack)


def _train(config, devices, stop: StopSignals, stack: contextlib.ExitStack) -> dict:
    t0 = time.time()

    config = config.copy_and_resolve_references()
    t, T = config.train, config.data.seq_len
    check_train_config(config)
    if t.compilation_cache_dir:  # JAX's persistent cache: a resumed or repeated run skips XLA compilation
        jax.config.update("jax_compilation_cache_dir", str(Path(t.compilation_cache_dir).expanduser()))

    # 1-2. data and devices: all input errors surface here, before any compilation
    train_split, val_split = open_data(config)
    tokenizer = train_split.tokenizer
    cfg = model_config(config, tokenizer)
    config.model.vocab_size = cfg.vocab_size
    cfg.check_tokens(T, max(train_split.max_id(), val_split.max_id()))
    mesh, rules = mesh_and_rules(config, devices)
    tx, schedule = make_optimizer(config.optim, cfg, t.max_steps)
    eval_bs = t.eval_batch_size or t.batch_size
    train_loader = Loader(train_split, T, t.batch_size, t.grad_accum, config.seed)
    val_loader = Loader(val_split, T, eval_bs, 1, config.seed)

    stop.check_startup()

    # 3. run directory, locked (process 0) before anything in it is read or changed
    run_dir = Path(config.run_root) / config.name
    lead = jax.process_index() == 0
    say = tqdm.write if lead else (lambda *_: None)
    if lead:
        lock = stack.enter_context(RunDirLock(run_dir))
        if lock.stale:
            say(f"note: took over the lock of a process that is gone ({lock.stale})")
    ckpts = ckpt_lib.Checkpoints(run_dir, keep=t.keep_checkpoints, keep_best=t.keep_best,
                                 async_save=t.async_checkpoint, log=say)
    check_run_dir(config, run_dir, cfg, tokenizer, ckpts)
    init = None  # weights to start from (loaded and fitted before anything compiles); a resumed run ignores them
    if config.init_from and not ckpts.steps():
        init = init_lib.load_init_params(config.init_from, cfg, tokenizer, config.seed)

    # shardings of the state and the batch
    p_sh = param_shardings(cfg, mesh, rules)
    abstract_p = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
    o_sh = opt_state_shardings(tx, abstract_p, p_sh, mesh)
    rep = replicated(mesh)
    state_sh = dict(params=p_sh, opt_state=o_sh, step=rep, rng=rep)
    b_spec = batch_sharding(mesh, rules).spec
    batch_sh = NamedSharding(mesh, P(None, *b_spec))  # (A, B, T+1): micro-batches whole, rows split

    init_state = functools.partial(initial_state, cfg, tx)
    abstract_state = jax.eval_shape(init_state, config.seed)

    # 4. compile the train and eval steps under the mesh and logical-axis rules, from abstract shapes: the
    #    memory check below stops an impossible fit before any state is allocated
    n_params = param_count(cfg)
    fpt = flops_per_token(cfg, T)
    tokens_per_step = t.grad_accum * t.batch_size * T
    k_steps = multistep.steps_per_call(t, fpt * tokens_per_step)
    t_compile = time.time()
    with activation_context(mesh, rules):
        fns = compile_steps(cfg, tx, schedule, state_sh, abstract_state, batch_sh, k_steps,
                            (t.grad_accum, t.batch_size, T + 1), lambda: activation_context(mesh, rules))
        step_fn, multi_fn = fns["step"], fns.get("multi")  # multi_fn: None when one step per call
        nll = make_nll_fn(cfg)
        eval_fn = jax.jit(lambda p, bs: jax.lax.map(lambda b: nll(p, b[0, :, :-1], b[0, :, 1:]).mean(), bs),
                          in_shardings=(p_sh, NamedSharding(mesh, P(None, *batch_sh.spec))), out_shardings=rep)
    compile_s = time.time() - t_compile
    say(check_step_fits(multi_fn or step_fn, mesh.devices.flat))  # stops here if it cannot fit
    stop.check_startup()

    # 5. state, created or restored (the newest checkpoint that verifies) in its shardings
    start, state = restore_state(ckpts, abstract_state, state_sh, t.checkpoint_fallback, say)
    if state is not None:
        say(f"resumed {run_dir} at step {start}" + (f" (init_from={config.init_from!r} ignored)" if config.init_from
                                                     else ""))
    else:
        state = jax.jit(init_state, static_argnums=0, out_shardings=state_sh)(config.seed)
        if init is not None:  # AdamW's fresh state does not depend on the param values: only params change
            state["params"] = jax.device_put(init[0], p_sh)
            say(f"initialised from {init[1]['resolved']} ({init[1]['position_surgery']}); fresh optimizer")
    stop.check_startup()
    if lead:
        write_run_files(config, run_dir, tokenizer, start)
        if init is not None:
            init_lib.write_record(run_dir, init[1])
        metrics_lib.rewind_metrics(run_dir, start)
    logger = metrics_lib.MetricsLogger(run_dir, t.tensorboard, enabled=lead)

    val_batches = global_batch(val_loader, 0, NamedSharding(mesh, P(None, *batch_sh.spec)), t.eval_batches)

    def evaluate(params) -> float:  # all fixed val batches in one call: (eval_batches,) batch means
        with activation_context(mesh, rules):
            return float(np.mean(host(eval_fn(params, val_batches))))

    peak = metrics_lib.peak_flops(list(mesh.devices.flat), t.peak_flops)
    say(f"model {n_params / 1e6:.2f}M params | mesh {dict(mesh.shape)} | {tokens_per_step:,} tokens/step | "
        f"{k_steps} step(s)/call | compile {compile_s:.1f}s | run dir {run_dir}")

    # 6. the loop; `step` counts completed updates (= the next batch's index)
    end = t.stop_at or t.max_steps
    ckpt_every = t.checkpoint_every or t.eval_every
    bar = tqdm(total=t.max_steps, initial=start, desc="train", unit="step", dynamic_ncols=True, disable=not (
        lead and t.progress))
    last = dict(loss=None, val_loss=None)
    step = start
    loop_t0 = time.time()
    nonfinite = metrics_lib.NonfiniteTally()
    log = TrainLog(logger, bar, t.log_every, end, tokens_per_step, fpt, peak, t0, start, last, nonfinite)
    watchdog = stack.enter_context(make_watchdog(t, run_dir))
    stop.in_loop = True  # from here a signal finishes the call and saves
    try:
        if t.eval_at_start and start == 0:
            watchdog.beat("eval at step 0")
            last["val_loss"] = evaluate(state["params"])
            logger.write(dict(kind="eval", step=0, val_loss=last["val_loss"],
                              val_ppl=metrics_lib.perplexity(last["val_loss"])))
        stopping = False
        while step < end and not stopping:
            watchdog.beat(f"train step {step + 1}")
            injected_sleep("step", step + 1)
            k = multistep.call_length(step, end, k_steps)  # k steps in this call (a multiple-of-k start)
            if k > 1:
                state, m = multi_fn(state, global_batch(train_loader, step, fns["multi_batch_sh"], k))
            else:
                state, m = step_fn(state, global_batch(train_loader, step, batch_sh))
            log.add(step, k, m)  # read on the host one call later: the device never waits for the host
            step += k
            bar.update(k)
            ckpts.check()  # a background save that failed stops the run here, in one message
            boundary = step % t.eval_every == 0 or step == t.max_steps or step % ckpt_every == 0 or step == end
            stopping = stop.should_stop(sync_point=boundary or step // t.log_every != (step - k) // t.log_every)
            log.flush(keep_last=not (boundary or stopping))
            nonfinite.check(t.skip_nonfinite, ckpts, config.optim.lr)  # at boundaries: nothing non-finite is saved
            val_loss = None
            if step % t.eval_every == 0 or step == t.max_steps:
                watchdog.beat(f"eval at step {step}")
                val_loss = last["val_loss"] = evaluate(state["params"])
                ppl = metrics_lib.perplexity(val_loss)
                logger.write(dict(kind="eval", step=step, val_loss=val_loss, val_ppl=ppl))
                say(f"step {step}: val loss {val_loss:.4f}, ppl {ppl:.2f}")
                final_follows = step == t.max_steps and t.final_eval  # which prints its own sample
                text = sample_text(cfg, state["params"], tokenizer, t, seed=step) if lead and not final_follows else None
                if text is not None:
                    say("  sample: " + text.replace("\n", "\n  | "))
            if step % ckpt_every == 0 or step == end or stopping:
                watchdog.beat(f"checkpoint save at step {step}")
                meta = ckpt_lib.checkpoint_meta(step, cfg, tokenizer, config.seed, t.grad_accum * t.batch_size)
                ckpts.save(step, state["params"], {k: state[k] for k in ("opt_state", "step", "rng")}, meta, val_loss)
        watchdog.beat(f"checkpoint wait at step {step}")
        ckpts.wait()
    finally:
        try:
            log.flush(keep_last=False)
        except Exception:  # noqa: BLE001 - only while another error propagates
            pass
        loop_s = time.time() - loop_t0
        bar.close()
        watchdog.stop()
        try:
            ckpts.close()
        except SaveError as e:  # only reached while another error propagates: report both
            say(f"error: {e}")
        stop.in_loop = False

    # final: the whole val split, sliding windows shared with the evaluation suite
    final = None
    if step == t.max_steps and t.final_eval:
        final = final_eval(cfg, state["params"], val_split, T, t.final_eval_stride or max(1, T // 2), eval_bs,
                           mesh, rules, lead and t.progress)
        logger.write(dict(kind="final", step=step, **final))
        say(f"final val loss {final['val_loss']:.4f}, perplexity {final['val_ppl']:.2f} "
            f"({final['tokens']:,} val tokens, sliding windows of {T}, stride {final['stride']})")
        text = sample_text(cfg, state["params"], tokenizer, t, seed=step) if lead else None
        if text is not None:
            say("sample:\n" + text)
    logger.close()
    summary = dict(run_dir=str(run_dir), start_step=start, step=step, max_steps=t.max_steps,
                   stopped_early=step < t.max_steps, stopped_by=stop.requested,
                   nonfinite_steps=nonfinite.count, params=n_params, loss=last["loss"], val_loss=last["val_loss"],
                   final=final, compile_s=compile_s)
    summary.update(compute_summary(cfg, T, tokens_per_step, step, step - start, loop_s, time.time() - t0, peak))
    if lead:
        if t.plot:
            metrics_lib.plot_losses(run_dir)
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def final_eval(cfg, params, val_split, n_ctx, stride, batch_size, mesh, rules, progress) -> dict:
    """Per-token NLL of the whole val split: the evaluation suite's sliding windows and `Scorer`."""
    from gpt2jax.eval.scoring import Scorer
    from gpt2jax.eval.windows import sliding_window_nll

    scorer = Scorer(cfg, params, batch_size, mesh=mesh, rules=rules)
    nll = sliding_window_nll(scorer.nll_fn, np.asarray(val_split.tokens(), np.int32), n_ctx, stride, batch_size,
                             progress="final val" if progress else False)
    loss = float(nll.mean())
    return dict(val_loss=loss, val_ppl=metrics_lib.perplexity(loss), tokens=int(nll.size), n_ctx=n_ctx, stride=stride)


# ---- command line ----------------------------------------------------------------------------------------------

def parse_config(argv: list[str]):
    """`--config <file>[:arg] --config.x.y=value ...` -> ConfigDict (a fresh FlagValues, so tests can parse twice).
    Raises ConfigError (one line) for a missing config file, an unknown field or a value of the wrong type."""
    from absl import flags
    from ml_collections import config_flags

    from gpt2jax.config import ConfigError

    check_config_file(argv)
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "training config file (configs/*.py)", flag_values=fv,
                                    lock_config=True, sys_argv=argv)
    try:
        fv(argv)
        config = fv.config
    except flags.Error as e:
        raise ConfigError(f"{str(e).splitlines()[0]}; see python -m gpt2jax.train --help for the fields") from None
    except (AttributeError, KeyError) as e:
        name = str(e).strip("\"'")
        given = [a.split("=")[0] for a in argv if a.startswith("--config.") and f".{name}" in a.split("=")[0]]
        raise ConfigError(f"unknown config field {', '.join(given) or name!r}: check the spelling of "
                          "--config.<section>.<field> (python -m gpt2jax.train --help lists them)") from None
    except (SyntaxError, ImportError) as e:
        raise ConfigError(f"the config file cannot be loaded: {type(e).__name__}: {e}") from None
    if config is None:
        raise SystemExit("usage: python -m gpt2jax.train --config configs/<name>.py [--config.<field>=<value> ...]\n"
                         "configs: " + ", ".join(sorted(p.name for p in Path("configs").glob("*.py"))))
    return config


def check_config_file(argv: list[str]) -> None:
    """The --config value must be an existing Python file with get_config() (ml_collections defers the error)."""
    from gpt2jax.config import ConfigError

    for i, a in enumerate(argv):
        if a == "--config" or a.startswith("--config="):
            value = a.split("=", 1)[1] if "=" in a else (argv[i + 1] if i + 1 < len(argv) else "")
            path = Path(value.split(":")[0])
            if not path.is_file():
                raise ConfigError(f"--config {value!r}: no such file (or a directory); pass a config file, e.g. "
                                  "configs/default.py")
            if "def get_config" not in path.read_text(errors="replace"):
                raise ConfigError(f"--config {path} defines no get_config(); pass a config file such as "
                                  "configs/default.py")


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv if argv is None else argv)
    if any(a in ("-h", "--help", "--helpfull") for a in argv[1:]):
        print(__doc__)
        print("Config fields (override any with --config.<section>.<field>=value):")
        from gpt2jax.train_config import base_config

        print(base_config())
        return {}
    from gpt2jax.config import ConfigError

    try:
        config = parse_config(argv)
        d = config.distributed
        if d.enabled:  # before any JAX computation
            jax.distributed.initialize(coordinator_address=d.coordinator_address or None,
                                       num_processes=d.num_processes or None,
                                       process_id=None if d.process_id < 0 else d.process_id,
                                       initialization_timeout=d.initialization_timeout)
        return train(config)
    except (ConfigError, DataError) as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    sys.exit(run_cli(main))
