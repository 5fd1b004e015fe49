"""The training loop: `start_run` builds everything a run needs, `train_loop` keeps its cadence, `train` runs it.

A run, in order (everything that can be wrong about the inputs is checked before anything compiles):
  1. data + spec: open the prepared train/val splits; `gpt2jax.training.spec.resolve(config, tokenizer)` decides every
     default (the model's vocabulary comes from the data's tokenizer) and the rest reads only that spec;
  2. devices: a (data, fsdp, tensor) mesh; the batch must split over its data-parallel devices;
  3. run dir: runs/<name>/; a checkpoint there is resumed (after checking it fits this model) or refused;
  4. one jitted train step (explicit in/out shardings, donated state, micro-batches summed by lax.scan), and for
     small models one that runs several steps per call (gpt2jax.training.cadence), compiled from the abstract state of
     `gpt2jax.training.state.StateLayout` (shapes, shardings and restore targets together); a step that cannot fit the
     device's memory stops here (gpt2jax.training.memory), before any state exists;
  5. state: params + AdamW state + step + RNG key, created (or restored) directly in their shardings; with
     --config.init_from the params come from a run dir or Hugging Face weights (gpt2jax.weights.load);
  6. the loop, cadence only (`train_loop`; metrics read one call late, so the device never waits for the host):
     step, log, evaluate on fixed val batches, sample, checkpoint; Ctrl-C/SIGTERM stop after the current call
     with a checkpoint (docs/reliability.md); then the whole val split is scored with sliding windows (the
     evaluation suite's `Scorer`) and the loss curve is plotted.
Steps 1-5 are `start_run`, which returns a `Run` (everything the loop needs).

`train(config) -> summary dict` is the importable entry point (tests call it directly).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from gpt2jax.weights import checkpoint as ckpt_lib
from gpt2jax.runtime import compile_cache
from gpt2jax.runtime import hostmem
from gpt2jax.weights import load as weights_in
from gpt2jax.training import metrics as metrics_lib
from gpt2jax.training import cadence
from gpt2jax.training.cadence import Action
from gpt2jax.training.compute import compute_summary, logged_losses, record_process, run_wall_time
from gpt2jax.training.memory import check_step_fits
from gpt2jax.data.loader import Loader, global_batch
from gpt2jax.data.shards import open_split
from gpt2jax.errors import DataError, SaveError, run_cli
from gpt2jax.runtime.lock import RunDirLock
from gpt2jax.model import GPT, flops_per_token, param_count
from gpt2jax.training.optim import make_optimizer
from gpt2jax.model.sharding import activation_context, replicated
from gpt2jax.runtime.signals import StopSignals
from gpt2jax.training.profile import StepProfiler
from gpt2jax.training.schedule_note import say_schedule_change
from gpt2jax.training.spec import TrainSpec, resolve
from gpt2jax.training.state import StateLayout, train_items
from gpt2jax.training.schema import check_train_config, mesh_and_rules
from gpt2jax.runtime.watchdog import Watchdog, injected_nonfinite, injected_sleep
from gpt2jax.training.drift import check_config_drift
from gpt2jax.training import fork as fork_lib
from gpt2jax.eval.scoring import Scorer
from gpt2jax.eval.windows import sliding_window_nll
from gpt2jax.generation.generate import GenerationError, continue_text


# ---- the compiled functions ---------------------------------------------------------------------------------

def make_train_step(cfg, tx, schedule, p_shardings):
    """(state, tokens (A, B, T+1)) -> (state, metrics): A micro-batches, gradients averaged, one AdamW update."""
    model = GPT(cfg)
    train_mode = cfg.dropout > 0
    poison = injected_nonfinite()

    def loss_fn(params, tokens, key):  # tokens (B, T+1)
        nll = model.apply({"params": params}, tokens[:, :-1], deterministic=not train_mode, targets=tokens[:, 1:],
                          rngs={"dropout": key} if train_mode else None)  # (B, T)
        return nll.mean()

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
        if poison is not None:  # test hook (runtime.watchdog.injected_nonfinite): NaN loss and grads at these steps
            bad = (state["step"] + 1 >= poison[0]) & (state["step"] + 1 < poison[1])
            loss_sum = jnp.where(bad, jnp.nan, loss_sum)
            grads = jax.tree.map(lambda g: jnp.where(bad, jnp.nan, g), grads)
        loss, grad_norm = loss_sum / n_micro, optax.global_norm(grads)
        # numerics guard: a NaN/Inf loss or gradient leaves params and optimizer state as they were (the batch
        # still counts as consumed); the host reads the flag with the other metrics, no extra sync
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, opt_state = tx.update(grads, state["opt_state"], params, apply=finite)  # not finite: zero updates
        new_state = dict(params=optax.apply_updates(params, updates), opt_state=opt_state,
                         step=state["step"] + 1, rng=state["rng"])
        metrics = dict(loss=loss, grad_norm=grad_norm, lr=schedule(state["step"]),
                       nonfinite=1 - finite.astype(jnp.int32))
        return new_state, metrics

    return step


def make_batch_loss(cfg):
    """(params, tokens (1, B, T+1)) -> mean next-token NLL of one fixed val batch, for the periodic evals."""
    model = GPT(cfg)
    return lambda params, b: model.apply({"params": params}, b[0, :, :-1], targets=b[0, :, 1:]).mean()


def compile_steps(layout: StateLayout, schedule, k_steps: int, batch_shape, context=contextlib.nullcontext) -> dict:
    """The compiled single step ("step", taking (A, B, T+1) batches sharded as layout.batch) and, for k_steps > 1,
    the k-steps-per-call scan ("multi", taking (k, A, B, T+1) batches sharded as layout.stacked_batch). With
    k_steps > 1 the single step only serves a tail of steps shorter than a call, so it compiles when first called.
    context() is entered while tracing: e.g. `lambda: activation_context(mesh, rules)`."""
    state_sh, abstract_state = layout.shardings, layout.abstract
    step = make_train_step(layout.cfg, layout.tx, schedule, state_sh["params"])
    if layout.replicas:  # S seeds: the same step over a leading replica axis of the state and the batch
        step = jax.vmap(step)
    rep = replicated(layout.mesh)
    tokens = lambda *lead: jax.ShapeDtypeStruct((*lead, *batch_shape), jnp.int32)  # noqa: E731
    single = jax.jit(step, in_shardings=(state_sh, layout.batch), out_shardings=(state_sh, rep), donate_argnums=0)
    if k_steps == 1:
        with context():
            return dict(step=single.lower(abstract_state, tokens()).compile())
    multi = jax.jit(cadence.make_multi_step(step), in_shardings=(state_sh, layout.stacked_batch),
                    out_shardings=(state_sh, rep), donate_argnums=0)
    with context():
        compiled = multi.lower(abstract_state, tokens(k_steps)).compile()
    return dict(multi=compiled, step=cadence.compile_on_first_call(single, context, abstract_state, tokens()))


class TrainLog:
    """Train records from per-call metrics (each a (k,) array per field, (k, S) for S replicas), read on the host
    one call late so that the next call is already queued when the host waits; the records and their steps are
    those of a step-by-step loop, one set per member. tokens/s and MFU are measured between host reads (with
    replicas: the whole program's)."""

    def __init__(self, members, bar, log_every, end, tokens_per_step, fpt, peak, t0, start):
        self.members, self.bar, self.log_every, self.end = members, bar, log_every, end
        self.tokens_per_step, self.fpt, self.peak, self.t0 = tokens_per_step * len(members), fpt, peak, t0
        self.pending, self.mark, self.mark_step = [], time.time(), start
        self.plain = None  # print(line) for a plain "step N: loss ..." line per logged step (no progress bar)

    def add(self, first_step: int, k: int, metrics: dict) -> None:
        self.pending.append((first_step, k, metrics))

    def flush(self, keep_last: bool = False) -> None:
        while len(self.pending) > int(keep_last):
            first, k, m = self.pending.pop(0)
            m = {name: np.asarray(host(v), np.float64).reshape(k, -1) for name, v in m.items()}  # (k, S); waits
            now = time.time()
            tok_s = self.tokens_per_step * (first + k - self.mark_step) / max(now - self.mark, 1e-9)
            mfu = metrics_lib.mfu(self.fpt, tok_s, self.peak)
            self.mark, self.mark_step = now, first + k
            flags = m.pop("nonfinite")  # the numerics guard's per-step flags (metrics.NonfiniteTally)
            for i in range(k):
                step = first + i + 1
                for r, member in enumerate(self.members):
                    member.nonfinite.update(step, flags[i, r])
                    if step % self.log_every and step != self.end:
                        continue
                    rec = {name: float(v[i, r]) for name, v in m.items()}
                    rec["nonfinite_steps"] = member.nonfinite.count
                    member.last["loss"] = rec["loss"]
                    member.logger.write(dict(kind="train", step=step, **rec, tokens_per_s=tok_s, mfu=mfu,
                                             elapsed_s=now - self.t0))
                    if r == 0:
                        self.bar.set_postfix(loss=f"{rec['loss']:.4f}", tok_s=f"{tok_s:,.0f}", refresh=False)
                        if self.plain is not None:
                            self.plain(plain_line(step, self.end, rec, tok_s, mfu))


def plain_line(step: int, end: int, rec: dict, tok_s: float, mfu: float | None) -> str:
    """'step 120/5000: loss 2.3456, lr 6.00e-04, grad norm 0.512, 123,456 tokens/s, MFU 41.2%' for batch-job logs."""
    line = (f"step {step}/{end}: loss {rec['loss']:.4f}, lr {rec['lr']:.3e}, grad norm {rec['grad_norm']:.3f}, "
            f"{tok_s:,.0f} tokens/s")
    return line + (f", MFU {mfu:.1%}" if mfu else "")


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


def check_run_dir(spec: TrainSpec, tokenizer, ckpts) -> None:
    """Refuse a run dir whose checkpoints cannot continue with this config (or resume=False), before any change."""
    if not ckpts.steps():
        return
    if not spec.train.resume:
        raise ckpt_lib.RunDirError(
            f"run directory {spec.run_dir} already holds checkpoints (latest step {ckpts.latest_step()}) and "
            "train.resume=False. Nothing was changed: pick a new run name with --config.name=<new name>, or resume "
            "with --config.train.resume=True."
        )
    # the newest step that verifies and whose meta reads: a damaged one (its bytes no longer match its manifest,
    # e.g. a flipped "n_embd" in meta/metadata) is named and moved aside when restoring, never taken as the
    # config the run was trained with
    for step in ckpts.candidates():
        if ckpts.problem(step) is not None:
            continue
        try:
            meta = ckpts.meta(step)
        except Exception:  # noqa: BLE001 - orbax/JSON errors of a damaged step
            continue
        if not isinstance(meta, dict) or not isinstance(meta.get("model"), dict):
            continue
        ckpt_lib.check_compatible(spec.run_dir, meta, spec.model, tokenizer)
        return


def restore_state(ckpts, layout: StateLayout, fallback: bool, say) -> tuple[int, dict | None]:
    """(step, state) of the newest checkpoint that verifies (files match the manifest, arrays finite), or
    (0, None) for a fresh run. Unusable newer steps are named and moved to rejected_checkpoints/."""
    if not ckpts.steps():
        return 0, None
    step, restored, rejected = ckpts.restore_good(layout.target("params"), layout.train_target(), fallback=fallback)
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


def write_run_files(spec: TrainSpec, tokenizer, start_step: int) -> None:
    """config.json (the resolved config; a resumed run with changed settings keeps the old file beside it) and
    tokenizer.json."""
    run_dir = spec.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    new = spec.config.to_json_best_effort(indent=1, sort_keys=True)
    path = run_dir / ckpt_lib.CONFIG_FILE
    if path.is_file() and path.read_text() != new:
        path.rename(run_dir / f"config.before_step{start_step}.json")
    path.write_text(new)
    (run_dir / ckpt_lib.TOKENIZER_FILE).write_text(json.dumps(tokenizer.to_dict()))


def sample_text(spec: TrainSpec, params, tokenizer, seed: int) -> str | None:
    """train.sample_tokens tokens after train.sample_prompt (`gpt2jax.generation.generate.continue_text`), or None when
    sampling is off. Single-process only: process 0 samples alone, and a program over multi-process params needs
    them all."""
    if spec.sampling is None or jax.process_count() > 1:
        return None

    t = spec.train
    try:
        return continue_text(spec.model, params, tokenizer, t.sample_prompt, t.sample_tokens,
                             spec.sampling.replace(seed=seed))
    except GenerationError as e:
        return f"(no sample: {e})"


@dataclasses.dataclass
class Member:
    """One run directory that a Run trains: an ordinary run has one; S seeds trained as replicas of one vmapped
    program (`gpt2jax.training.replicas`) have one each, and the state then carries a leading (S,) axis."""
    spec: TrainSpec
    train_loader: Loader
    ckpts: ckpt_lib.Checkpoints
    logger: metrics_lib.MetricsLogger
    last: dict = dataclasses.field(default_factory=lambda: dict(loss=None, val_loss=None))
    nonfinite: metrics_lib.NonfiniteTally = dataclasses.field(default_factory=metrics_lib.NonfiniteTally)


@dataclasses.dataclass
class Run:
    """Everything the loop needs, built by `start_run` before the first step; the loop changes state and step."""
    spec: TrainSpec  # the first member's: every setting but name and seed is the same for all
    tokenizer: object
    val_split: object
    layout: StateLayout  # mesh, rules, shardings (with the replica axis when layout.replicas)
    fns: dict  # compiled: "step", and "multi" for several steps per call
    eval_fn: object  # (params, val_batches) -> (eval_batches,) batch means, (S, eval_batches) for replicas
    val_batches: jax.Array  # the fixed val batches, (eval_batches, 1, B, T+1), (S, eval_batches, ...) for replicas
    members: list[Member]
    say: object
    lead: bool
    start: int
    state: dict
    compile_s: float
    peak: float | None
    step: int = 0
    clock: metrics_lib.RunClock = dataclasses.field(default_factory=metrics_lib.RunClock)  # summary's time_s

    def part(self, tree, i: int):
        """Member i's slice of a state tree (the tree itself for an ordinary run)."""
        return jax.tree.map(lambda x: x[i], tree) if self.layout.replicas else tree

    def batch(self, step: int, k: int) -> jax.Array:
        """The tokens of steps step .. step + k - 1 ((k, A, B, T+1); k = 0: one step's (A, B, T+1)), with the replica
        axis after k when training replicas (each replica reads its own seed's order)."""
        sharding = self.layout.stacked_batch if k else self.layout.batch
        if not self.layout.replicas:
            return global_batch(self.members[0].train_loader, step, sharding, k or None)
        rows = [m.train_loader.rows(step, 0, m.train_loader.batch_size, k or None) for m in self.members]
        return jax.device_put(np.stack(rows, axis=1 if k else 0), sharding)

    def evaluate(self, step: int) -> list[float]:
        """Mean loss over the fixed val batches (one call), logged as an eval record; one per member."""
        with activation_context(self.layout.mesh, self.layout.rules):
            out = host(self.eval_fn(self.state["params"], self.val_batches))
        losses = [float(x) for x in np.asarray(out, np.float64).reshape(len(self.members), -1).mean(axis=1)]
        for member, val_loss in zip(self.members, losses):
            member.last["val_loss"] = val_loss
            member.logger.write(dict(kind="eval", step=step, val_loss=val_loss,
                                     val_ppl=metrics_lib.perplexity(val_loss)))
        return losses

    def sample(self, step: int) -> str | None:
        """A sample from the (first member's) current params (process 0 only; None when sampling is off)."""
        return sample_text(self.spec, self.part(self.state["params"], 0), self.tokenizer, seed=step) \
            if self.lead else None

    def save(self, step: int, val_losses: list[float] | None) -> None:
        for i, member in enumerate(self.members):
            meta = ckpt_lib.checkpoint_meta(step, member.spec.model, self.tokenizer, member.spec.config.seed,
                                            member.spec.rows_per_step)
            member.ckpts.save(step, self.part(self.state["params"], i), self.part(train_items(self.state), i), meta,
                              val_losses[i] if val_losses else None)


def open_run_dir(spec: TrainSpec, tokenizer, stack: contextlib.ExitStack, say) -> ckpt_lib.Checkpoints:
    """Lock the run dir (process 0) before anything in it is read or changed; its checkpoints, checked."""
    t = spec.train
    if jax.process_index() == 0:
        lock = stack.enter_context(RunDirLock(spec.run_dir))
        if lock.stale:
            say(f"note: took over the lock of a process that is gone ({lock.stale})")
    ckpts = ckpt_lib.Checkpoints(spec.run_dir, keep=t.keep_checkpoints, keep_best=t.keep_best,
                                 async_save=t.async_checkpoint, log=say, keep_rejected=t.keep_rejected)
    check_run_dir(spec, tokenizer, ckpts)
    if ckpts.steps():  # resuming: settings that would not continue the run exactly are refused (training/drift.py)
        check_config_drift(spec.run_dir, json.loads(spec.config.to_json_best_effort()), t.allow_config_change, say)
    return ckpts


def compile_run(spec: TrainSpec, layout: StateLayout, schedule, say) -> tuple[dict, object, float]:
    """The train step(s) and the eval step, compiled under the mesh from abstract shapes; the memory check stops
    an impossible fit before any state is allocated. -> (fns, eval_fn, compile seconds)."""
    mesh, context = layout.mesh, lambda: activation_context(layout.mesh, layout.rules)
    t_compile = time.time()
    with context():
        lead = (layout.replicas,) if layout.replicas else ()
        fns = compile_steps(layout, schedule, spec.train.steps_per_call, (*lead, *spec.batch_shape), context)
        batch_loss = make_batch_loss(spec.model)
        evaluate = lambda p, bs: jax.lax.map(lambda b: batch_loss(p, b), bs)  # noqa: E731
        eval_fn = jax.jit(jax.vmap(evaluate) if layout.replicas else evaluate,
                          in_shardings=(layout.shardings["params"], layout.stacked_batch),
                          out_shardings=replicated(mesh))
    compile_s = time.time() - t_compile
    say(check_step_fits(fns.get("multi") or fns["step"], mesh.devices.flat, spec.train))  # stops if it cannot fit
    return fns, eval_fn, compile_s


def start_state(spec: TrainSpec, layout: StateLayout, ckpts, init, say, fork=None) -> tuple[int, dict]:
    """(start step, state): the newest checkpoint that verifies, else the fork source's checkpoint
    (`gpt2jax.training.fork`), else a fresh state (with init_from's params)."""
    start, state = restore_state(ckpts, layout, spec.train.checkpoint_fallback, say)
    if state is not None:
        ignored = f" (init_from={spec.config.init_from!r} ignored)" if spec.config.init_from else ""
        say(f"resumed {spec.run_dir} at step {start}{ignored}")
        return start, state
    if fork is not None:  # params, optimizer state, step and RNG of the source; the data position is the step
        say(f"forked from {fork.run_dir} at step {fork.step}")
        return fork.step, fork.restore(layout)
    state = layout.create(spec.config.seed)
    if init is not None:  # AdamW's fresh state does not depend on the param values: only params change
        state["params"] = jax.device_put(init[0], layout.shardings["params"])
        say(f"initialised from {init[1]['resolved']} ({init[1]['position_surgery']}); fresh optimizer")
    return start, state


def start_replicas(members: list, layout: StateLayout, replica_layout: StateLayout, say) -> tuple[int, dict]:
    """(start step, state with the replica axis): every member's newest good checkpoint, which must be at one
    step, else fresh states for their seeds (bitwise those of separate runs)."""
    restored = [restore_state(m.ckpts, layout, m.spec.train.checkpoint_fallback, say) for m in members]
    starts = sorted({step for step, _ in restored})
    if starts == [0] and all(state is None for _, state in restored):
        return 0, replica_layout.create_replicas([m.spec.config.seed for m in members])
    if len(starts) > 1 or any(state is None for _, state in restored):
        raise ckpt_lib.RunDirError(
            "replicas resume together, but their run directories are at different steps ("
            + ", ".join(f"{m.spec.run_dir}: {step}" for m, (step, _) in zip(members, restored))
            + "); train them one by one (the sweep's replicas=False), or move the newer checkpoints aside")
    say(f"resumed {len(members)} replicas at step {starts[0]}")
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[state for _, state in restored])
    return starts[0], jax.device_put(stacked, replica_layout.shardings)


def start_run(configs: list, devices, stop: StopSignals, stack: contextlib.ExitStack, replicas: bool = False) -> Run:
    """Steps 1-5 of the module docstring: every input error surfaces before anything compiles. Several configs that
    differ only in name and seed train as replicas of one program (`replicas=True`: one device)."""
    for config in configs:
        check_train_config(config)  # the checks that need neither data nor devices come first
    train_split, val_split = open_data(configs[0])
    tokenizer = train_split.tokenizer
    specs = [resolve(config, tokenizer, devices, checked=True) for config in configs]
    spec = specs[0]
    t, seq_len = spec.train, spec.seq_len
    # CPU: keep freed host memory when a micro-batch's float32 logits are large (gpt2jax.runtime.hostmem), before JAX
    # starts its CPU client
    hostmem.keep_freed_memory(t.batch_size * seq_len * spec.model.embedding_rows * 4 * len(specs))
    lead = jax.process_index() == 0
    say = tqdm.write if lead else (lambda *_: None)
    compile_cache.use(t.compilation_cache_dir, say)
    spec.model.check_tokens(seq_len, max(train_split.max_id(), val_split.max_id()))
    mesh, rules = mesh_and_rules(spec.config, devices)
    tx, schedule = make_optimizer(spec.optim, spec.model)
    if replicas and (spec.config.init_from or t.get("fork_from")):
        raise ckpt_lib.RunDirError("replicas start from their seeds: train runs with init_from or fork_from one by one")
    # the loaders check that the splits hold a batch: a data error stops here, before any run dir is touched
    loaders = [Loader(train_split, seq_len, t.batch_size, t.grad_accum, s.config.seed) for s in specs]
    val_loaders = [Loader(val_split, seq_len, t.eval_batch_size, 1, s.config.seed) for s in specs]
    stop.check_startup()

    ckpts = [open_run_dir(s, tokenizer, stack, say) for s in specs]
    init = None  # weights to start from (loaded and fitted before anything compiles); a resumed run ignores them
    if spec.config.init_from and not ckpts[0].steps():
        init = weights_in.load_init_params(spec.config.init_from, spec.model, tokenizer, spec.config.seed)
    fork = None  # the checkpoint a new fork starts from, checked here; a resumed fork continues from its own
    if t.get("fork_from") and not ckpts[0].steps():
        fork = fork_lib.check_source(spec, tokenizer)

    layout = StateLayout.build(spec.model, tx, mesh, rules)
    run_layout = layout.over_replicas(len(specs)) if replicas else layout
    fns, eval_fn, compile_s = compile_run(spec, run_layout, schedule, say)
    stop.check_startup()
    members = [Member(s, loader, c,
                      metrics_lib.MetricsLogger(s.run_dir, t.tensorboard, enabled=lead, wandb=s.config.logging.wandb,
                                                config=json.loads(s.config.to_json_best_effort()),
                                                name=s.config.name))
               for s, loader, c in zip(specs, loaders, ckpts)]
    if replicas:
        start, state = start_replicas(members, layout, run_layout, say)
    else:
        start, state = start_state(spec, layout, ckpts[0], init, say, fork)
    stop.check_startup()
    if lead:
        for s in specs:
            say_schedule_change(s, start, say)  # a resume that changes max_steps: what the schedule does now
            write_run_files(s, tokenizer, start)
            metrics_lib.rewind_metrics(s.run_dir, start)
        if init is not None:
            weights_in.write_record(spec.run_dir, init[1])
        if fork is not None:
            fork_lib.write_record(spec.run_dir, fork)
    if replicas:
        val_batches = jax.device_put(np.stack([v.rows(0, 0, t.eval_batch_size, t.eval_batches) for v in val_loaders]),
                                     run_layout.stacked_batch)  # (S, eval_batches, 1, B, T+1)
    else:
        val_batches = global_batch(val_loaders[0], 0, layout.stacked_batch, t.eval_batches)
    return Run(spec, tokenizer, val_split, run_layout, fns, eval_fn, val_batches, members, say, lead, start, state,
               compile_s, metrics_lib.peak_flops(list(mesh.devices.flat), t.peak_flops), step=start)


# ---- the loop ------------------------------------------------------------------------------------------------

def train(config, devices=None) -> dict:
    """Train (or resume) the run described by `config`; returns a summary (also written to summary.json).

    devices: the devices of the mesh (default: all); tests pass a subset to compare 1 and 8 devices.
    SIGTERM/SIGINT stop the run cleanly (gpt2jax.runtime.signals); the run dir is locked while it trains
    (gpt2jax.runtime.lock).
    """
    return train_group([config], devices)[0]


def train_group(configs: list, devices=None, replicas: bool = False) -> list[dict]:
    """`train` for one config, or for S configs that differ only in name and seed as replicas of one vmapped
    program on one device (`replicas=True`): the same loop, guards and summary, one run directory each."""
    stop = StopSignals(say=tqdm.write).install()
    with contextlib.ExitStack() as stack:
        stack.callback(stop.restore)
        return _train(configs, devices, stop, stack, replicas)


def _train(configs, devices, stop: StopSignals, stack: contextlib.ExitStack, replicas: bool) -> list[dict]:
    clock = metrics_lib.RunClock()
    t0 = clock.t0
    with clock.phase("startup"):
        run = start_run(configs, devices, stop, stack, replicas)
    run.clock = clock
    for member in run.members:
        stack.callback(member.logger.close, None, 1)  # after an error (a no-op once closed with the summary)
    spec = run.spec
    where = (f"{len(run.members)} replicas in {spec.run_dir.parent}" if replicas else f"run dir {spec.run_dir}")
    run.say(f"model {param_count(spec.model) / 1e6:.2f}M params | mesh {dict(run.layout.mesh.shape)} | "
            f"{spec.tokens_per_step:,} tokens/step | {spec.train.steps_per_call} step(s)/call | "
            f"compile {run.compile_s:.1f}s | {where}")
    loop_s = train_loop(run, stop, stack, t0)
    finals = [None] * len(run.members)
    if run.step == spec.train.max_steps and spec.train.final_eval:
        with clock.phase("final"):
            finals = final_eval_and_sample(run)
    summaries = write_summaries(run, stop, finals, loop_s, t0)
    for member, summary in zip(run.members, summaries):
        member.logger.close(summary)
    return summaries


def train_loop(run: Run, stop: StopSignals, stack: contextlib.ExitStack, t0: float) -> float:
    """Cadence only: step, log, then the periodic actions that are due (`periodic_actions`); `run.step` counts
    completed updates (= the next batch's index). Metrics are read one call late, so the device never waits for
    the host. -> seconds in the loop."""
    spec, t = run.spec, run.spec.train
    actions = periodic_actions(run)
    bar = tqdm(total=t.max_steps, initial=run.start, desc="train", unit="step", dynamic_ncols=True,
               disable=not show_progress(run))
    log = TrainLog(run.members, bar, t.log_every, spec.end, spec.tokens_per_step,
                   flops_per_token(spec.model, spec.seq_len), run.peak, t0, run.start)
    log.plain = run.say if run.lead and not show_progress(run) else None  # batch-job logs: no "\r" bar
    watchdog = stack.enter_context(make_watchdog(t, spec.run_dir))
    profiler = stack.enter_context(StepProfiler(t.profile_steps, t.max_steps, spec.run_dir, run.say))
    loop_t0 = time.time()
    stop.in_loop = True  # from here a signal finishes the call and saves
    try:
        if t.eval_at_start and run.start == 0:
            watchdog.beat("eval at step 0")
            with run.clock.phase("evals"):
                run.evaluate(0)
        stopping = False
        while run.step < spec.end and not stopping:
            watchdog.beat(f"train step {run.step + 1}")
            injected_sleep("step", run.step + 1)
            profiler.before(run.step, cadence.call_length(run.step, spec.end, t.steps_per_call))
            stopping = train_call(run, stop, log, bar, actions)
            profiler.after(run.step, run.state)
            done = {}  # what this step's actions returned, for the ones after them
            for action in actions:
                if action.due(run.step) or (stopping and action.on_stop):
                    done[action.name] = action.run(run, watchdog, done)
        watchdog.beat(f"checkpoint wait at step {run.step}")
        with run.clock.phase("checkpoints"):
            for member in run.members:
                member.ckpts.wait()
    finally:
        close_loop(run, log, bar, watchdog)
        stop.in_loop = False
    return time.time() - loop_t0


def show_progress(run: Run) -> bool:
    """Progress bars on process 0 with train.progress, and only on a terminal: in a batch job's log tqdm's "\r"
    updates hide the loss, which gets plain lines instead (TrainLog.plain)."""
    return run.lead and run.spec.train.progress and sys.stdout.isatty()


def periodic_actions(run: Run) -> list[Action]:
    """The loop's periodic actions, in the order they run after a call that ends on a step where they are due.
    Each one's period is the train section's `<name>_every` field, which also lines up the multi-step calls
    (`gpt2jax.training.cadence`): a new action is one line here and its field in base_config."""
    t = run.spec.train
    return [
        Action("eval", t.eval_every, eval_and_sample, also_at=(t.max_steps,)),  # with a sample
        Action("checkpoint", t.checkpoint_every, save_checkpoint, also_at=(run.spec.end,), on_stop=True),
    ]


def train_call(run: Run, stop: StopSignals, log: TrainLog, bar, actions: list[Action]) -> bool:
    """One compiled call (k steps); metrics are queued and read one call later, unless the call ends where an
    action is due. -> whether to stop after it."""
    t, step = run.spec.train, run.step
    k = cadence.call_length(step, run.spec.end, t.steps_per_call)  # k steps in this call (a multiple-of-k start)
    if k > 1:
        run.state, m = run.fns["multi"](run.state, run.batch(step, k))
    else:
        run.state, m = run.fns["step"](run.state, run.batch(step, 0))
    log.add(step, k, m)
    run.step = step = step + k
    bar.update(k)
    for member in run.members:
        member.ckpts.check()  # a background save that failed stops the run here, in one message
    boundary = any(action.due(step) for action in actions)
    stopping = stop.should_stop(sync_point=boundary or step // t.log_every != (step - k) // t.log_every)
    log.flush(keep_last=not (boundary or stopping))
    for member in run.members:  # at boundaries: nothing non-finite saved
        member.nonfinite.check(t.skip_nonfinite, member.ckpts, run.spec.optim.lr)
    return stopping


def eval_and_sample(run: Run, watchdog, done: dict) -> float:
    """A periodic evaluation on the fixed val batches, printed with a sample (unless the final eval follows,
    which prints its own). -> val losses, one per member"""
    watchdog.beat(f"eval at step {run.step}")
    with run.clock.phase("evals"):
        val_losses = run.evaluate(run.step)
    run.say(f"step {run.step}: val loss " + ", ".join(f"{v:.4f}" for v in val_losses)
            + f", ppl {metrics_lib.perplexity(val_losses[0]):.2f}" + (" (first replica)" if len(val_losses) > 1 else ""))
    final_follows = run.step == run.spec.train.max_steps and run.spec.train.final_eval
    with run.clock.phase("samples"):
        text = None if final_follows else run.sample(run.step)
    if text is not None:
        run.say("  sample: " + text.replace("\n", "\n  | "))
    return val_losses


def save_checkpoint(run: Run, watchdog, done: dict) -> None:
    """A checkpoint of the whole state; a step that was also evaluated keeps its val loss (for keep_best)."""
    watchdog.beat(f"checkpoint save at step {run.step}")
    with run.clock.phase("checkpoints"):
        run.save(run.step, done.get("eval"))


def close_loop(run: Run, log: TrainLog, bar, watchdog) -> None:
    """After the loop, also while an error propagates: read the last metrics, stop helpers, close checkpoints."""
    try:
        log.flush(keep_last=False)
    except Exception:  # noqa: BLE001 - only while another error propagates
        pass
    bar.close()
    watchdog.stop()
    for member in run.members:
        try:
            member.ckpts.close()
        except SaveError as e:  # only reached while another error propagates: report both
            run.say(f"error: {e}")


def final_eval_and_sample(run: Run) -> list[dict]:
    """The whole val split with sliding windows (shared with the evaluation suite), logged, printed, and a sample;
    one result per member."""
    spec, t = run.spec, run.spec.train
    finals = []
    for i, member in enumerate(run.members):
        final = final_eval(spec.model, run.part(run.state["params"], i), run.val_split, spec.seq_len,
                           t.final_eval_stride, t.eval_batch_size, run.layout.mesh, run.layout.rules,
                           show_progress(run))
        member.logger.write(dict(kind="final", step=run.step, **final))
        run.say(f"final val loss {final['val_loss']:.4f}, perplexity {final['val_ppl']:.2f} "
                f"({final['tokens']:,} val tokens, sliding windows of {spec.seq_len}, stride {final['stride']})"
                + (f" [{member.spec.config.name}]" if len(run.members) > 1 else ""))
        finals.append(final)
    if (text := run.sample(run.step)) is not None:
        run.say("sample:\n" + text)
    return finals


def write_summaries(run: Run, stop: StopSignals, finals: list, loop_s: float, t0: float) -> list[dict]:
    """summary.json of every member; replicas add `replicas: S`, and each counts its share (1/S) of the loop's
    time, so their mfu is the whole program's."""
    S = len(run.members)
    summaries = [write_summary(run, member, stop, final, loop_s / S, t0) for member, final in zip(run.members, finals)]
    if run.layout.replicas:
        for member, summary in zip(run.members, summaries):
            summary["replicas"] = S
            if run.lead:
                (member.spec.run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summaries


def write_summary(run: Run, member: Member, stop: StopSignals, final: dict | None, loop_s: float, t0: float) -> dict:
    spec, step = member.spec, run.step
    summary = dict(run_dir=str(spec.run_dir), start_step=run.start, step=step, max_steps=spec.train.max_steps,
                   stopped_early=step < spec.train.max_steps, stopped_by=stop.requested,
                   nonfinite_steps=member.nonfinite.count, params=param_count(spec.model), loss=member.last["loss"],
                   val_loss=member.last["val_loss"], final=final, compile_s=run.compile_s)
    summary.update(compute_summary(spec.model, spec.seq_len, spec.tokens_per_step, step, step - run.start, loop_s,
                                   time.time() - t0, run.peak))
    summary.update(fork_lib.summary_fields(spec.run_dir, summary["flops_per_token"], spec.tokens_per_step, step))
    summary["time_s"] = run.clock.summary(loop_s)
    run.say(metrics_lib.RunClock.line(summary["time_s"]))
    if summary["loss"] is None or summary["val_loss"] is None:  # no step logged here (resumed at its end)
        logged = logged_losses(spec.run_dir, step)
        summary.update({k: summary[k] if summary[k] is not None else logged[k] for k in ("loss", "val_loss")})
    # wall_s: every process of the run (time_s["wall"] is this one's)
    this_wall_s = summary["wall_s"]
    summary.update(run_wall_time(spec.run_dir, run.start, this_wall_s))
    if run.lead:
        record_process(spec.run_dir, run.start, step, this_wall_s, stop.requested)
        if spec.train.plot:
            metrics_lib.plot_losses(spec.run_dir)
        (spec.run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def final_eval(cfg, params, val_split, n_ctx, stride, batch_size, mesh, rules, progress) -> dict:
    """Per-token NLL of the whole val split: the evaluation suite's sliding windows and `Scorer`."""
    scorer = Scorer(cfg, params, batch_size, mesh=mesh, rules=rules)
    nll = sliding_window_nll(scorer.nll_fn, np.asarray(val_split.tokens(), np.int32), n_ctx, stride, batch_size,
                             progress="final val" if progress else False)
    loss = float(nll.mean())
    return dict(val_loss=loss, val_ppl=metrics_lib.perplexity(loss), tokens=int(nll.size), n_ctx=n_ctx, stride=stride)
