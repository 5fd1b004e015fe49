"""Issue 9 with real processes: SIGTERM/SIGINT (finding 5), SIGKILL at random points including mid-save (acceptance
1: the resumed run ends bitwise equal to an uninterrupted one), and the watchdog (acceptance 5).

Every child resets SIGINT to its default: background shell jobs start with it ignored (STACK-FACTS)."""
import json
import random
import signal
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from gpt2jax.errors import STOPPED_EXIT_CODE
from gpt2jax.runtime.signals import DUPLICATE_S
from gpt2jax.training import metrics as metrics_lib
from gpt2jax.weights.checkpoint import Checkpoints
from tests.procs import finish, start, trainer_argv, wait_for

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One persistent XLA cache for all the trainers started here: each compiles the tiny step once."""
    return str(tmp_path_factory.mktemp("xla"))


def argv(data_dir, run_root, *extra, cache_dir=""):
    return trainer_argv(data_dir, run_root, *extra, cache=cache_dir)


def train_records(run_dir):
    return [r for r in metrics_lib.read_metrics(run_dir) if r["kind"] == "train"]


def test_sigterm_finishes_the_step_saves_and_exits_3(char_data, tmp_path, cache):
    """(SIGINT: tests/test_resume.py::test_ctrl_c_stops_after_a_step_with_a_checkpoint; SIGUSR1 and SIGHUP:
    tests/test_faults.py.) Exit 3, not 0 (issue 37, finding 6): a stopped run is not a finished one."""
    sig = signal.SIGTERM
    proc = start(argv(char_data, tmp_path, "--config.train.max_steps=100000", "--config.train.eval_every=100000",
                      cache_dir=cache))
    run = tmp_path / "run"
    assert wait_for(lambda: len(train_records(run)) >= 3, proc), finish(proc)
    proc.send_signal(sig)
    out = finish(proc)
    assert proc.returncode == STOPPED_EXIT_CODE, out[-3000:]
    assert "Traceback" not in out and "stopping after this step" in out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped_by"] == sig.name
    ckpts = Checkpoints(run, read_only=True)
    assert ckpts.latest_step() == summary["step"] == train_records(run)[-1]["step"]
    assert ckpts.problem(summary["step"]) is None  # committed and verified


def test_a_second_signal_exits_at_once_and_completed_checkpoints_stay_good(char_data, tmp_path, cache):
    """The first SIGTERM asks for a save which the injected sleep holds open; the second exits at once (143)."""
    proc = start(argv(char_data, tmp_path, "--config.train.max_steps=100000", "--config.train.eval_every=100000",
                      "--config.train.checkpoint_every=4", cache_dir=cache), {"GPT2JAX_FAULT_SLEEP": "commit:8:60"})
    run = tmp_path / "run"
    assert wait_for(lambda: len(train_records(run)) >= 9, proc), finish(proc)
    proc.send_signal(signal.SIGTERM)
    time.sleep(2 * DUPLICATE_S)  # sooner, it would count as the first delivered twice
    proc.send_signal(signal.SIGTERM)
    t = time.time()
    out = finish(proc, timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM and time.time() - t < 10, out[-3000:]
    assert "Traceback" not in out and "exiting now without saving" in out
    ckpts = Checkpoints(run, read_only=True)
    assert 4 in ckpts.verified_steps() and ckpts.problem(4) is None


@pytest.mark.parametrize("sig,after_s", [(signal.SIGINT, 1.0), (signal.SIGTERM, 6.0)])
def test_a_signal_during_start_up_exits_cleanly(char_data, tmp_path, sig, after_s):
    proc = start(argv(char_data, tmp_path, "--config.train.max_steps=100000"))  # no cache: a long compile
    time.sleep(after_s)
    proc.send_signal(sig)
    out = finish(proc)
    assert proc.returncode == STOPPED_EXIT_CODE and "Traceback" not in out, out[-3000:]
    assert "during start-up" in out, out[-3000:]  # one line says so, whether in the imports or after


def test_sigkill_at_five_random_points_resumes_bitwise(char_data, tmp_path, cache):
    """Acceptance 1: kill -9 five times (once while a save is held open between orbax's commit and the manifest,
    the others at random moments); the resumed run ends with params bitwise equal to an uninterrupted run."""
    steps = 40
    extra = [f"--config.train.max_steps={steps}", "--config.train.eval_every=100000",
             "--config.train.checkpoint_every=4"]
    finish(start(argv(char_data, tmp_path, *extra, "--config.name=reference", cache_dir=cache)))
    run, rng, kills = tmp_path / "run", random.Random(0), 0
    while kills < 5:
        hold = {"GPT2JAX_FAULT_SLEEP": "commit:8:60"} if kills == 1 else {}
        proc = start(argv(char_data, tmp_path, *extra, cache_dir=cache), hold)
        done = len(train_records(run))
        if kills == 1:  # mid-save: step 8 committed by orbax, its manifest held back
            ok = wait_for(lambda: len(train_records(run)) >= 9, proc)
        else:
            ok = wait_for(lambda: len(train_records(run)) >= done + rng.randint(1, 6), proc)
        if not ok:
            break  # finished before the kill
        time.sleep(rng.uniform(0, 0.3))
        proc.kill()
        proc.wait()
        kills += 1
    out = finish(start(argv(char_data, tmp_path, *extra, cache_dir=cache)), timeout=240)
    assert kills == 5, f"the run finished after {kills} kills"
    assert json.loads((run / "summary.json").read_text())["step"] == steps, out[-3000:]
    a = ocp.PyTreeCheckpointer().restore(tmp_path / "reference" / "checkpoints" / str(steps) / "params")
    b = ocp.PyTreeCheckpointer().restore(run / "checkpoints" / str(steps) / "params")
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert np.array_equal(np.asarray(x), np.asarray(y))
    recorded = [r["step"] for r in train_records(run)]
    assert recorded == list(range(1, steps + 1))  # no step twice after five restarts


def test_watchdog_reports_a_hung_step_and_exits_so_the_rerun_resumes(char_data, tmp_path, cache):
    """Acceptance 5: the call starting at step 5 sleeps 60 s; the watchdog (3 s) names the phase, dumps all stacks
    and exits 75; the rerun resumes from the step-4 checkpoint and finishes."""
    extra = ["--config.train.max_steps=12", "--config.train.eval_every=100000", "--config.train.checkpoint_every=4",
             "--config.train.watchdog_timeout_s=3", "--config.train.watchdog_exit=True", f"--config.train."
             f"compilation_cache_dir={cache}"]
    proc = start(argv(char_data, tmp_path, *extra), {"GPT2JAX_FAULT_SLEEP": "step:5:60"})
    out = finish(proc, timeout=150)
    assert proc.returncode == 75, out[-3000:]
    assert "watchdog: process 0" in out and "stuck in 'train step 5'" in out
    assert "--- thread MainThread ---" in out and "injected_sleep" in out
    assert "stuck in 'train step 5'" in (tmp_path / "run" / "watchdog.0.txt").read_text()
    rerun = finish(start(argv(char_data, tmp_path, *extra[:3], f"--config.train.compilation_cache_dir={cache}")))
    assert "resumed" in rerun and "at step 4" in rerun, rerun[-3000:]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["step"] == 12
