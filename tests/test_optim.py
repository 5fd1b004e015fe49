"""The optimizer and schedule registries (gpt2jax/training/optim.py): every entry trains, every schedule has the
values its formula gives step by step, and the NaN/Inf guard holds for every optimizer (stop and skip)."""
import math
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from gpt2jax.config import ConfigError, GPTConfig
from gpt2jax.data.loader import Loader
from gpt2jax.data.shards import open_split
from gpt2jax.errors import TrainingStopped
from gpt2jax.model import init_params
from gpt2jax.model.sharding import make_mesh, param_shardings
from gpt2jax.runtime.watchdog import NONFINITE_ENV
from gpt2jax.train import parse_config, train
from gpt2jax.training import metrics as metrics_lib
from gpt2jax.training.loop import make_train_step
from gpt2jax.training.optim import OPTIMIZERS, SCHEDULES, SKIPS_ITSELF, OptimSpec, make_optimizer
from gpt2jax.training.state import initial_state
from gpt2jax.weights.checkpoint import Checkpoints

from tests.conftest import REPO

CFG = GPTConfig(n_layer=2, n_head=2, n_embd=32, n_positions=32, vocab_size=65)
# per-optimizer learning rates that train the tiny model in a few steps (Lion at AdamW's here: its paper
# advises 3-10x less for long runs; schedule-free AdamW is used at a constant schedule, which it needs)
LR = dict(adamw=3e-3, lion=3e-3, adafactor=3e-3, muon=2e-2, schedule_free_adamw=3e-3)


def optim_section(name: str, **kw):
    o = OptimSpec().section()
    o.update(name=name, lr=LR[name], min_lr=LR[name] / 10, warmup_steps=2, weight_decay=0.0,
             schedule="constant" if name == "schedule_free_adamw" else "cosine")
    o.update(kw)
    return ml_collections.ConfigDict(o)


def test_registries_hold_what_the_docs_promise():
    assert {"adamw", "lion", "adafactor", "muon", "schedule_free_adamw"} <= set(OPTIMIZERS)
    assert {"cosine", "linear", "constant", "wsd"} <= set(SCHEDULES)
    assert SKIPS_ITSELF == {"adamw"}  # only the hand-fused AdamW leaves the generic guard out


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_trains_a_few_steps(name, char_data):
    tx, schedule = make_optimizer(optim_section(name), CFG, max_steps=40)
    mesh = make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    step = jax.jit(make_train_step(CFG, tx, schedule, param_shardings(CFG, mesh)), donate_argnums=0)
    batch = Loader(open_split(char_data, "train"), 32, 8, 1, seed=3).batch(0)  # one batch, overfit
    state = initial_state(CFG, tx, 0)
    losses = []
    for _ in range(25):
        state, m = step(state, batch)
        losses.append(float(m["loss"]))
    assert losses[0] > 3.5 and losses[-1] < 0.8 * losses[0], (name, losses[::5])


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_apply_false_leaves_params_and_state_bitwise(name):
    """The guard's contract, for every optimizer: a skipped update is zero and the state is kept as it was."""
    tx, _ = make_optimizer(optim_section(name), CFG, max_steps=20)
    params = init_params(CFG, jax.random.key(0))
    grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(1), p.shape) * 0.1, params)

    @jax.jit
    def update(state, grads, apply):
        return tx.update(grads, state, params, apply=apply)

    state = tx.init(params)
    _, state = update(state, grads, jnp.bool_(True))  # one real step first: moments are not zero any more
    nan_grads = jax.tree.map(lambda g: g.at[(0,) * g.ndim].set(jnp.nan), grads)
    updates, kept = update(state, nan_grads, jnp.bool_(False))
    assert all(np.all(np.asarray(u) == 0) for u in jax.tree.leaves(updates))
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(kept)):
        np.testing.assert_array_equal(a, b)


def tiny(char_data, tmp_path, name, **train_fields):
    c = parse_config(["train", "--config", str(REPO / "configs" / "tiny_test.py")])
    c.data.dir, c.run_root, c.name = str(char_data), str(tmp_path), "run"
    c.optim.update(optim_section(name).to_dict())
    c.train.update(**{**dict(max_steps=20, log_every=1, eval_every=5, keep_checkpoints=3, steps_per_call=1),
                      **train_fields})
    return c


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_divergence_stops_and_skips_for_every_optimizer(name, char_data, tmp_path, monkeypatch):
    """The divergence test once per optimizer: NaN loss and grads at steps 8-11 (the fault hook, identical for every
    optimizer) stop the run naming the step with the last good checkpoint kept; with train.skip_nonfinite the
    same run skips exactly those 4 steps, saves nothing non-finite and goes on training."""
    monkeypatch.setenv(NONFINITE_ENV, "8:12")
    with pytest.raises(TrainingStopped, match=r"NaN/Inf at step 8 .*the last checkpoint, step 5, holds"):
        train(tiny(char_data, tmp_path / "stop", name), devices=jax.devices()[:1])
    ckpts = Checkpoints(tmp_path / "stop" / "run", read_only=True)
    assert ckpts.steps() == [5] and ckpts.problem(5) is None

    summary = train(tiny(char_data, tmp_path / "skip", name, skip_nonfinite=True), devices=jax.devices()[:1])
    assert summary["step"] == 20 and summary["nonfinite_steps"] == 4
    records = [r for r in metrics_lib.read_metrics(tmp_path / "skip" / "run") if r["kind"] == "train"]
    nonfinite = {r["step"] for r in records if not math.isfinite(r["loss"])}
    assert nonfinite == {8, 9, 10, 11}
    assert math.isfinite(records[-1]["loss"]) and records[-1]["loss"] < records[0]["loss"]
    ckpts = Checkpoints(tmp_path / "skip" / "run", read_only=True)
    assert ckpts.latest_step() == 20 and all(ckpts.problem(s) is None for s in ckpts.steps())


# ---- schedules, step by step against the formulas written out in Python --------------------------------------

LR0, MIN, WARM, DECAY = 1e-3, 1e-4, 10, 100


def spec(schedule, **kw):
    return OptimSpec.resolve(dict(schedule=schedule, lr=LR0, min_lr=MIN, warmup_steps=WARM, decay_steps=DECAY, **kw),
                             DECAY)


def warm(it):
    return LR0 * (it + 1) / (WARM + 1)


def cosine(it):
    if it < WARM:
        return warm(it)
    ratio = min(1.0, (it - WARM) / (DECAY - WARM))
    return MIN + 0.5 * (1 + math.cos(math.pi * ratio)) * (LR0 - MIN)


def linear(it):
    return warm(it) if it < WARM else LR0 + min(1.0, (it - WARM) / (DECAY - WARM)) * (MIN - LR0)


def constant(it):
    return warm(it) if it < WARM else LR0


def wsd(shape, fraction):
    start = DECAY - fraction * (DECAY - WARM)  # 100 - 0.2 * 90 = 82

    def fn(it):
        if it < WARM:
            return warm(it)
        ratio = min(1.0, max(0.0, (it - start) / (DECAY - start)))
        return MIN + ((1 - ratio) if shape == "linear" else (1 - math.sqrt(ratio))) * (LR0 - MIN)
    return fn


@pytest.mark.parametrize("name,reference,extra", [
    ("cosine", cosine, {}), ("linear", linear, {}), ("constant", constant, {}),
    ("wsd", wsd("linear", 0.2), dict(decay_fraction=0.2, decay_shape="linear")),
    ("wsd", wsd("1-sqrt", 0.2), dict(decay_fraction=0.2, decay_shape="1-sqrt")),
    ("wsd", wsd("linear", 1.0), dict(decay_fraction=1.0, decay_shape="linear")),
])
def test_schedule_values_step_by_step(name, reference, extra):
    fn = jax.jit(SCHEDULES[name](spec(name, **extra)))
    for it in range(0, DECAY + 20):
        assert float(fn(it)) == pytest.approx(reference(it), rel=1e-5, abs=1e-12), (name, it)


def test_wsd_is_flat_until_its_decay_and_reaches_min_lr():
    fn = SCHEDULES["wsd"](spec("wsd", decay_fraction=0.2))
    values = [float(fn(it)) for it in range(DECAY + 1)]
    assert all(v == pytest.approx(LR0) for v in values[WARM:83])  # stable phase: exactly the peak lr
    assert values[DECAY] == pytest.approx(MIN) and values[90] < values[85] < LR0


@pytest.mark.parametrize("field,value,match", [
    ("name", "sgdd", r"optim.name='sgdd' is not an optimizer here; choose one of .*adamw"),
    ("schedule", "cosin", r"optim.schedule='cosin' is not a schedule here"),
    ("decay_shape", "sqrt", r"optim.decay_shape='sqrt'"),
    ("decay_fraction", 1.5, r"optim.decay_fraction=1.5 must be in \(0, 1\]"),
])
def test_bad_optim_fields_are_one_clear_error(field, value, match):
    o = ml_collections.ConfigDict({**OptimSpec().section(), "schedule": "wsd", field: value})
    with pytest.raises(ConfigError, match=match):
        OptimSpec.check(o)


def test_schedule_free_needs_the_constant_schedule():
    o = ml_collections.ConfigDict({**OptimSpec().section(), "name": "schedule_free_adamw"})
    with pytest.raises(ConfigError, match=re.escape("needs optim.schedule=constant")):
        OptimSpec.check(o)
