"""Train a GPT-2: `python -m gpt2jax.train --config configs/default.py [--config.train.max_steps=500 ...]`.

The loop, in order (everything that can be wrong about the inputs is checked before anything compiles):
  1. data: open the prepared train/val splits; the model's vocabulary comes from their tokenizer;
  2. devices: a (data, fsdp, tensor) mesh; the batch must split over its data-parallel devices;
  3. run dir: runs/<name>/; a checkpoint there is resumed (after checking it fits this model) or refused;
  4. state: params + AdamW state + step + RNG key, created (or restored) directly in their shardings;
  5. one jitted train step (explicit in/out shardings, donated state, micro-batches summed by lax.scan);
  6. the loop: log, evaluate on fixed val batches, sample, checkpoint; Ctrl-C stops after the current step
     with a checkpoint; then the whole val split is scored with sliding windows and the loss curve is plotted.

`train(config) -> summary dict` is the importable entry point (tests call it directly).
"""
from __future__ import annotations

import functools
import json
import math
import signal
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
from gpt2jax import metrics as metrics_lib
from gpt2jax.data.loader import Loader, global_batch
from gpt2jax.data.shards import DataError, open_split
from gpt2jax.model import GPT, flops_per_token, init_params, mean_loss, param_count, token_nll
from gpt2jax.optim import make_optimizer
from gpt2jax.sharding import activation_context, batch_sharding, opt_state_shardings, param_shardings, replicated
from gpt2jax.train_config import check_train_config, mesh_and_rules, model_config


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
        new_state = dict(params=optax.apply_updates(params, updates), opt_state=opt_state,
                         step=state["step"] + 1, rng=state["rng"])
        metrics = dict(loss=loss_sum / n_micro, grad_norm=optax.global_norm(grads), lr=schedule(state["step"]))
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


def prepare_run_dir(config, run_dir: Path, cfg, tokenizer, ckpts) -> int:
    """Check the run dir against this config; returns the step to start from (0 for a fresh run)."""
    latest = ckpts.latest_step()
    if latest is None:
        return 0
    if not config.train.resume:
        raise ckpt_lib.RunDirError(
            f"run directory {run_dir} already holds checkpoints (latest step {latest}) and train.resume=False. "
            "Nothing was changed: pick a new run name with --config.name=<new name>, or resume with "
            "--config.train.resume=True."
        )
    ckpt_lib.check_compatible(run_dir, ckpts.meta(latest), cfg, tokenizer)
    return latest


def write_run_files(config, run_dir: Path, tokenizer, start_step: int) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    new = config.to_json_best_effort(indent=1, sort_keys=True)
    path = run_dir / ckpt_lib.CONFIG_FILE
    if path.is_file() and path.read_text() != new:  # resumed with changed settings: keep the old file too
        path.rename(run_dir / f"config.before_step{start_step}.json")
    path.write_text(new)
    (run_dir / ckpt_lib.TOKENIZER_FILE).write_text(json.dumps(tokenizer.to_dict()))


def install_stop_handler():
    """First Ctrl-C: finish the current step, checkpoint, stop. Second Ctrl-C: stop at once."""
    stop = {"requested": False}

    def handler(signum, frame):
        if stop["requested"]:
            raise KeyboardInterrupt
        stop["requested"] = True
        tqdm.write("stopping after this step (checkpoint follows); Ctrl-C again to abort without saving")

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: no handler
        previous = None
    return stop, previous


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
    """
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

    # 3. run directory
    run_dir = Path(config.run_root) / config.name
    ckpts = ckpt_lib.Checkpoints(run_dir, keep=t.keep_checkpoints, keep_best=t.keep_best,
                                 async_save=t.async_checkpoint)
    start = prepare_run_dir(config, run_dir, cfg, tokenizer, ckpts)
    lead = jax.process_index() == 0
    if lead:
        write_run_files(config, run_dir, tokenizer, start)
        if start:
            metrics_lib.rewind_metrics(run_dir, start)
    logger = metrics_lib.MetricsLogger(run_dir, t.tensorboard, enabled=lead)
    say = tqdm.write if lead else (lambda *_: None)

    # 4. state, created or restored in its shardings
    p_sh = param_shardings(cfg, mesh, rules)
    abstract_p = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
    o_sh = opt_state_shardings(tx, abstract_p, p_sh, mesh)
    rep = replicated(mesh)
    state_sh = dict(params=p_sh, opt_state=o_sh, step=rep, rng=rep)
    b_spec = batch_sharding(mesh, rules).spec
    batch_sh = NamedSharding(mesh, P(None, *b_spec))  # (A, B, T+1): micro-batches whole, rows split

    init_state = functools.partial(initial_state, cfg, tx)
    abstract_state = jax.eval_shape(init_state, config.seed)
    if start:
        with_sh = lambda tree, sh: jax.tree.map(  # noqa: E731
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, sh)
        train_target = {k: with_sh(abstract_state[k], state_sh[k]) for k in ("opt_state", "step", "rng")}
        restored = ckpts.restore(start, with_sh(abstract_state["params"], p_sh), train_target)
        state = dict(params=restored["params"], **restored["train"])
        say(f"resumed {run_dir} at step {start}")
    else:
        state = jax.jit(init_state, static_argnums=0, out_shardings=state_sh)(config.seed)

    # 5. compile the train and eval steps under the mesh and logical-axis rules
    t_compile = time.time()
    with activation_context(mesh, rules):
        step_fn = jax.jit(make_train_step(cfg, tx, schedule, p_sh), in_shardings=(state_sh, batch_sh),
                          out_shardings=(state_sh, rep), donate_argnums=0)
        step_fn = step_fn.lower(abstract_state, jax.ShapeDtypeStruct((t.grad_accum, t.batch_size, T + 1),
                                                                     jnp.int32)).compile()
        nll = make_nll_fn(cfg)
        eval_fn = jax.jit(lambda p, b: nll(p, b[0, :, :-1], b[0, :, 1:]).mean(),
                          in_shardings=(p_sh, batch_sh), out_shardings=rep)
    compile_s = time.time() - t_compile
    val_batches = [global_batch(val_loader, i, batch_sh) for i in range(t.eval_batches)]

    def evaluate(params) -> float:
        with activation_context(mesh, rules):
            return float(np.mean([host(eval_fn(params, b)) for b in val_batches]))

    n_params = param_count(cfg)
    fpt = flops_per_token(cfg, T)
    peak = metrics_lib.peak_flops(list(mesh.devices.flat), t.peak_flops)
    tokens_per_step = t.grad_accum * t.batch_size * T
    say(f"model {n_params / 1e6:.2f}M params | mesh {dict(mesh.shape)} | {tokens_per_step:,} tokens/step | "
        f"compile {compile_s:.1f}s | run dir {run_dir}")

    # 6. the loop; `step` counts completed updates (= the next batch's index)
    end = t.stop_at or t.max_steps
    ckpt_every = t.checkpoint_every or t.eval_every
    stop, previous_handler = install_stop_handler()
    bar = tqdm(total=t.max_steps, initial=start, desc="train", unit="step", dynamic_ncols=True, disable=not (
        lead and t.progress))
    last = dict(loss=None, val_loss=None)
    step, mark, mark_step = start, time.time(), start
    try:
        if t.eval_at_start and start == 0:
            last["val_loss"] = evaluate(state["params"])
            logger.write(dict(kind="eval", step=0, val_loss=last["val_loss"], val_ppl=math.exp(last["val_loss"])))
        while step < end and not stop["requested"]:
            batch = global_batch(train_loader, step, batch_sh)
            state, m = step_fn(state, batch)
            step += 1
            bar.update(1)
            if step % t.log_every == 0 or step == end:
                m = {k: float(host(v)) for k, v in m.items()}
                now = time.time()
                tok_s = tokens_per_step * (step - mark_step) / max(now - mark, 1e-9)
                mark, mark_step = now, step
                last["loss"] = m["loss"]
                u = metrics_lib.mfu(fpt, tok_s, peak)
                logger.write(dict(kind="train", step=step, **m, tokens_per_s=tok_s, mfu=u, elapsed_s=now - t0))
                bar.set_postfix(loss=f"{m['loss']:.4f}", tok_s=f"{tok_s:,.0f}", refresh=False)
                if not math.isfinite(m["loss"]):
                    raise FloatingPointError(f"loss became {m['loss']} at step {step}; lower optim.lr or check data")
            val_loss = None
            if step % t.eval_every == 0 or step == t.max_steps:
                val_loss = last["val_loss"] = evaluate(state["params"])
                logger.write(dict(kind="eval", step=step, val_loss=val_loss, val_ppl=math.exp(val_loss)))
                say(f"step {step}: val loss {val_loss:.4f}, ppl {math.exp(val_loss):.2f}")
                final_follows = step == t.max_steps and t.final_eval  # which prints its own sample
                text = sample_text(cfg, state["params"], tokenizer, t, seed=step) if lead and not final_follows else None
                if text is not None:
                    say("  sample: " + text.replace("\n", "\n  | "))
            if step % ckpt_every == 0 or step == end or stop["requested"]:
                meta = ckpt_lib.checkpoint_meta(step, cfg, tokenizer, config.seed, t.grad_accum * t.batch_size)
                ckpts.save(step, state["params"], {k: state[k] for k in ("opt_state", "step", "rng")}, meta, val_loss)
    finally:
        bar.close()
        ckpts.wait()
        if previous_handler is not None:
            signal.signal(signal.SIGINT, previous_handler)

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
    ckpts.close()
    summary = dict(run_dir=str(run_dir), start_step=start, step=step, max_steps=t.max_steps,
                   stopped_early=step < t.max_steps, params=n_params, loss=last["loss"], val_loss=last["val_loss"],
                   final=final, compile_s=compile_s, wall_s=time.time() - t0)
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
    return dict(val_loss=loss, val_ppl=math.exp(loss), tokens=int(nll.size), n_ctx=n_ctx, stride=stride)


# ---- command line ----------------------------------------------------------------------------------------------

def parse_config(argv: list[str]):
    """`--config <file>[:arg] --config.x.y=value ...` -> ConfigDict (a fresh FlagValues, so tests can parse twice)."""
    from absl import flags
    from ml_collections import config_flags

    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "training config file (configs/*.py)", flag_values=fv,
                                    lock_config=True, sys_argv=argv)
    fv(argv)
    if fv.config is None:
        raise SystemExit("usage: python -m gpt2jax.train --config configs/<name>.py [--config.<field>=<value> ...]\n"
                         "configs: " + ", ".join(sorted(p.name for p in Path("configs").glob("*.py"))))
    return fv.config


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv if argv is None else argv)
    if any(a in ("-h", "--help", "--helpfull") for a in argv[1:]):
        print(__doc__)
        print("Config fields (override any with --config.<section>.<field>=value):")
        from gpt2jax.train_config import base_config

        print(base_config())
        return {}
    config = parse_config(argv)
    d = config.distributed
    if d.enabled:  # before any JAX computation
        jax.distributed.initialize(coordinator_address=d.coordinator_address or None,
                                   num_processes=d.num_processes or None,
                                   process_id=None if d.process_id < 0 else d.process_id,
                                   initialization_timeout=d.initialization_timeout)
    from gpt2jax.config import ConfigError

    try:
        return train(config)
    except (ConfigError, DataError) as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
