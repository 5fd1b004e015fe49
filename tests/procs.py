"""Trainers and sweeps as child processes, for the tests that signal or kill them (test_interrupts, test_faults,
test_sweep_signals). Every child resets SIGINT to its default: background shell jobs start with it ignored
(STACK-FACTS), and a child would inherit that."""
import os
import signal
import subprocess
import sys
import time

import pytest

from gpt2jax.training import metrics as metrics_lib
from tests.conftest import REPO

TINY = str(REPO / "configs" / "tiny_test.py")


def trainer_argv(data_dir, run_root, *extra, cache=""):
    """`python -m gpt2jax.train` on configs/tiny_test.py as run_root/run, a log line per step; extra: more
    --config.x=v (later ones win); cache: a persistent XLA cache directory, so that each child compiles once."""
    return [sys.executable, "-m", "gpt2jax.train", "--config", TINY, f"--config.data.dir={data_dir}",
            f"--config.run_root={run_root}", "--config.name=run", "--config.train.log_every=1",
            f"--config.train.compilation_cache_dir={cache}", *extra]


def start(cmd, env_extra=None, new_session=False):
    """new_session: the child leads a process group of its own (os.killpg reaches it and its children only)."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", **(env_extra or {})}
    env.pop("JAX_NUM_CPU_DEVICES", None)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO,
                            start_new_session=new_session,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for(predicate, proc, timeout=180):
    """Poll predicate() until it holds (True), the child exits or timeout seconds pass (False)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def finish(proc, timeout=180):
    """The child's output once it exits; kill it and fail the test after timeout seconds."""
    try:
        return proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"{proc.args[2]} did not end within {timeout} s: {proc.communicate()[0][-2000:]}")


def train_steps(run_dir):
    """The steps of the run's train records in metrics.jsonl."""
    return [r["step"] for r in metrics_lib.read_metrics(run_dir) if r["kind"] == "train"]
