"""Acceptance 3: 2k steps straight == k steps, stop, resume, k more steps: bitwise params, optimizer state, metrics."""
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from gpt2jax.training import metrics as metrics_lib
from gpt2jax.weights.checkpoint import Checkpoints, load_run
from gpt2jax.train import parse_config, train
from tests.conftest import XLA_CACHE

REPO = Path(__file__).resolve().parents[1]
TIMING_FIELDS = {"tokens_per_s", "mfu", "elapsed_s"}
K = 6


@pytest.fixture
def xla_cache():
    """The three runs compile the same step: JAX's persistent cache (the session's, tests/conftest.py) compiles it
    once. Passed as train.compilation_cache_dir, so the option is exercised too."""
    return XLA_CACHE


def resume_config(data_dir, run_root, name, cache_dir):
    c = parse_config(["train", "--config", str(REPO / "configs" / "tiny_test.py")])
    c.data.dir, c.run_root, c.name = str(data_dir), str(run_root), name
    c.train.compilation_cache_dir = cache_dir
    # dropout and two micro-batches: the RNG key and the accumulation are part of what must resume exactly
    c.model.dropout = 0.1
    c.train.update(max_steps=2 * K, grad_accum=2, batch_size=8, log_every=1, eval_every=3, checkpoint_every=K,
                   keep_checkpoints=5)
    return c


def checkpoint_arrays(run_dir, step):
    root = Path(run_dir) / "checkpoints" / str(step)
    trees = {item: ocp.PyTreeCheckpointer().restore(root / item) for item in ("params", "train")}
    return jax.tree.map(np.asarray, trees)


def comparable(records):
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in records]


@pytest.mark.filterwarnings("ignore:Sharding info not provided")  # the test reads checkpoints as plain numpy
def test_resume_is_bitwise_identical(char_data, tmp_path, xla_cache):
    straight = train(resume_config(char_data, tmp_path, "straight", xla_cache))
    assert straight["step"] == 2 * K and straight["start_step"] == 0

    first = resume_config(char_data, tmp_path, "resumed", xla_cache)
    first.train.stop_at = K  # stops as an interruption would: checkpoint at K, schedule still for 2K steps
    half = train(first)
    assert half["step"] == K and half["stopped_early"]
    ckpts = Checkpoints(tmp_path / "resumed", read_only=True)
    assert ckpts.latest_step() == K
    assert ckpts.meta(K)["data_position"] == {"step": K, "seed": 0, "windows_consumed": K * 16}
    ckpts.close()

    rest = train(resume_config(char_data, tmp_path, "resumed", xla_cache))
    assert rest["start_step"] == K and rest["step"] == 2 * K

    a, b = checkpoint_arrays(tmp_path / "straight", 2 * K), checkpoint_arrays(tmp_path / "resumed", 2 * K)
    leaves_a, tree_a = jax.tree.flatten(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    assert tree_a == tree_b and len(leaves_a) > 30
    for x, y in zip(leaves_a, leaves_b):
        assert x.dtype == y.dtype and np.array_equal(x, y)  # bitwise: params, Adam moments, counts, step, RNG

    ma = comparable(metrics_lib.read_metrics(tmp_path / "straight"))
    mb = comparable(metrics_lib.read_metrics(tmp_path / "resumed"))
    assert [r["step"] for r in ma if r["kind"] == "train"] == list(range(1, 2 * K + 1))
    assert ma == mb  # every loss, grad norm, lr and val loss, exactly

    # load_run (used by eval/sampling --init_from) returns the same final parameters and the data's tokenizer
    cfg, params, tokenizer = load_run(tmp_path / "resumed")
    assert cfg.n_embd == 32 and tokenizer.n_vocab == 65 and cfg.vocab_size == 65
    for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(a["params"])):
        assert np.array_equal(np.asarray(x), y)


def test_ctrl_c_stops_after_a_step_with_a_checkpoint(char_data, tmp_path):
    """The CLI in a subprocess: SIGINT finishes the current step, saves a checkpoint of it and exits 0."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    cmd = [sys.executable, "-m", "gpt2jax.train", "--config", str(REPO / "configs" / "tiny_test.py"),
           f"--config.data.dir={char_data}", f"--config.run_root={tmp_path}", "--config.train.max_steps=100000",
           "--config.train.log_every=1", "--config.train.eval_every=100000"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
    metrics = tmp_path / "tiny_test" / "metrics.jsonl"
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    try:
        out = proc.communicate(timeout=120)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the trainer did not stop within 120 s of Ctrl-C")
    assert proc.returncode == 3, out[-3000:]  # errors.STOPPED_EXIT_CODE: stopped early, checkpoint saved
    assert "stopping after this step" in out
    summary = json.loads((tmp_path / "tiny_test" / "summary.json").read_text())
    last = metrics_lib.read_metrics(tmp_path / "tiny_test")[-1]
    assert summary["stopped_early"] and summary["step"] >= 3
    ckpts = Checkpoints(tmp_path / "tiny_test", read_only=True)
    assert ckpts.latest_step() == summary["step"] == last["step"]
    ckpts.close()
