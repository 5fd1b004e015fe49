"""A stop signal to a sweep stops the sweep, not just the run in training (found in the issue 35 session: SIGTERM
stopped the first run with a checkpoint and the sweep went on to train the next one, exit 0 in the end; a parallel
sweep's parent died and left its children training). Real processes, as in tests/test_interrupts.py."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from gpt2jax.errors import STOPPED_EXIT_CODE
from gpt2jax.weights.checkpoint import Checkpoints
from tests.conftest import REPO, XLA_CACHE
from tests.procs import finish, start, train_steps, wait_for

EXPERIMENT = '''
from gpt2jax.sweep import Experiment

def get_experiment():
    return Experiment(
        name="sig",
        base="{base}",
        overrides={{"data.dir": "{data}", "train.max_steps": 200000, "train.log_every": 1,
                    "train.eval_every": 100000, "train.compilation_cache_dir": "{cache}"}},
        grid={{"model.n_head": [1, 2, 4]}},
        run_root="{root}",
    )
'''


def sweep(tmp_path, char_data, *flags):
    exp = tmp_path / "exp.py"
    exp.write_text(EXPERIMENT.format(base=REPO / "configs" / "tiny_test.py", data=char_data, cache=XLA_CACHE,
                                     root=tmp_path / "runs"))
    proc = start([sys.executable, "-m", "gpt2jax.sweep", str(exp), *flags], new_session=True)
    return proc, tmp_path / "runs" / "sig"


def wait_until_training(proc, runs):
    if not wait_for(lambda: all(r.exists() and len(train_steps(r)) >= 3 for r in runs), proc, timeout=240):
        proc.kill()
        pytest.fail(f"the sweep's runs did not start training: {proc.communicate()[0][-3000:]}")


def assert_stopped_with_a_checkpoint(run, sig):
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped_early"] and summary["stopped_by"] == sig.name
    ckpts = Checkpoints(run, read_only=True)
    assert ckpts.latest_step() == summary["step"] == train_steps(run)[-1] and ckpts.problem(summary["step"]) is None


def test_sigterm_stops_a_sequential_sweep_after_the_run_checkpoints(char_data, tmp_path):
    proc, out_dir = sweep(tmp_path, char_data)
    first = out_dir / "n_head=1"
    wait_until_training(proc, [first])
    proc.send_signal(signal.SIGTERM)
    out = finish(proc)
    assert proc.returncode == STOPPED_EXIT_CODE, out[-3000:]
    assert "sweep stopped by SIGTERM: n_head=1 saved a checkpoint" in out and "Traceback" not in out, out[-3000:]
    assert_stopped_with_a_checkpoint(first, signal.SIGTERM)
    assert not (out_dir / "n_head=2").exists() and "training n_head=2" not in out  # no further run started


def test_ctrl_c_to_a_parallel_sweep_reaches_each_running_job_once(char_data, tmp_path):
    """SIGINT to the parent's process group, as Ctrl-C in a terminal sends it: the jobs (in sessions of their own)
    get it once, through the parent, so they checkpoint instead of exiting unsaved on a second delivery."""
    proc, out_dir = sweep(tmp_path, char_data, "--parallel", "2")
    running = [out_dir / "n_head=1", out_dir / "n_head=2"]
    wait_until_training(proc, running)
    os.killpg(proc.pid, signal.SIGINT)
    out = finish(proc)
    assert proc.returncode == STOPPED_EXIT_CODE, out[-3000:]
    assert "SIGINT: passing it to the 2 running job(s)" in out and "Traceback" not in out, out[-3000:]
    assert "sweep stopped by SIGINT: n_head=1, n_head=2 saved a checkpoint" in out, out[-3000:]
    for run in running:
        assert_stopped_with_a_checkpoint(run, signal.SIGINT)
    assert not (out_dir / "n_head=4").exists()  # no further job started
    alive = subprocess.run(["pgrep", "-f", str(tmp_path / "exp.py")], capture_output=True, text=True).stdout
    assert not alive.strip(), f"jobs still running after the sweep stopped: {alive}"


def test_a_parallel_sweep_killed_outright_leaves_no_job_training(char_data, tmp_path):
    """SIGKILL cannot be handled: the jobs learn of it from Linux (PR_SET_PDEATHSIG sends them SIGTERM), checkpoint
    and stop, instead of training on unseen while holding their run dirs' locks."""
    proc, out_dir = sweep(tmp_path, char_data, "--parallel", "2")
    running = [out_dir / "n_head=1", out_dir / "n_head=2"]
    wait_until_training(proc, running)
    proc.kill()
    proc.communicate(timeout=30)
    alive = lambda: subprocess.run(["pgrep", "-f", str(tmp_path / "exp.py")],  # noqa: E731
                                   capture_output=True, text=True).stdout.strip()
    deadline = time.time() + 120
    while alive() and time.time() < deadline:
        time.sleep(0.2)
    assert not alive(), "jobs still training after their sweep was killed"
    for run in running:
        assert_stopped_with_a_checkpoint(run, signal.SIGTERM)
