"""Sweeps through submitit (gpt2jax.studies.launch): `--launcher submitit_local` end to end against `--launcher local`,
`--launcher slurm` against a fake `sbatch`, a SLURM-like preemption (USR1) that checkpoints, is requeued by submitit
and resumes bitwise, and `--status`. The sweeps run as subprocesses (`python -m gpt2jax.sweep`), one CPU device each,
as a user runs them; every run shares one XLA cache, so each program compiles once."""
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO

pytest.importorskip("submitit")

EXPERIMENT = '''
from gpt2jax.sweep import Experiment

def get_experiment():
    return Experiment(
        name="tiny_launch",
        base="{base}",
        overrides={{"data.dir": "{data}", "train.max_steps": {steps}, "train.eval_every": 4, "train.log_every": 2,
                    "train.async_checkpoint": False, "train.compilation_cache_dir": "{cache}",
                    "data.seq_len": 16, "model.n_positions": 16, **{more}}},
        grid={grid},
        run_root="{root}",
        metric="val_loss",
        slurm={slurm},
    )
'''
GRID4 = {"model.n_head": [1, 2], "optim.lr": [0.003, 0.001]}


def write_experiment(path: Path, data, root: Path, cache: Path, grid=GRID4, steps=6, slurm=None, more=None) -> Path:
    path.write_text(EXPERIMENT.format(base=REPO / "configs" / "tiny_test.py", data=data, root=root, cache=cache,
                                      grid=repr(grid), steps=steps, slurm=repr(slurm or {}), more=repr(more or {})))
    return path


def sweep(*args, env=None, check=True, timeout=600) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "gpt2jax.sweep", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def doc_commands(test_name: str, exp: Path) -> list[list[str]]:
    """The sweep commands docs/cluster.md quotes for `test_name` (its ```bash block that starts `# run by ...`),
    as arguments of `python -m gpt2jax.sweep`, with EXP -> exp."""
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "docs" / "cluster.md").read_text(), re.S)
    block = next(b for b in blocks if b.startswith(f"# run by tests/test_launch.py::{test_name}\n"))
    commands = []
    for line in block.splitlines()[1:]:
        words = shlex.split(line)
        assert words[:3] == ["python", "-m", "gpt2jax.sweep"], line
        commands.append([str(exp) if w == "EXP" else w for w in words[3:]])
    return commands


def table(root: Path) -> list[dict]:
    """results.json's rows without wall-clock columns (wall_s, mfu): everything the runs computed."""
    rows = json.loads((root / "tiny_launch" / "results.json").read_text())["rows"]
    return [{k: v for k, v in r.items() if k not in ("wall_s", "mfu")} for r in rows]


# 4 runs that differ in their seed only: one compiled program for the whole file (through the shared cache); one
# step per compiled call (tiny models default to several), so that the preemption test's stop comes right after the
# step it holds
SEEDS4 = dict(grid={"s": [{"seed": i} for i in range(4)]}, steps=8, more={"train.steps_per_call": 1})


@pytest.fixture(scope="module")
def reference(tmp_path_factory, char_data):
    """The 4 runs through `--launcher local` (the default), in a process of its own with one CPU device, as the
    submitit jobs train: the table and the final params the other tests compare with."""
    root = tmp_path_factory.mktemp("reference")
    exp = write_experiment(root / "local.py", char_data, root / "runs", root / "xla", **SEEDS4)
    sweep(exp)
    return dict(root=root / "runs", cache=root / "xla")


def test_submitit_local_sweep_matches_local_and_status(tmp_path, char_data, reference, capsys):
    """Acceptance 1a: 4 tiny runs through submitit's LocalExecutor give the table of `--launcher local` (same
    numbers: the runs are deterministic); launch.json records the job ids; --status reads them back (4 finished,
    submitit's state FINISHED), and a sweep not yet started shows 'not started'. The 4 runs differ in their seed
    only (SEEDS4)."""
    from gpt2jax.sweep import main

    via = write_experiment(tmp_path / "via.py", char_data, tmp_path / "via", reference["cache"], **SEEDS4)
    launch, status = doc_commands("test_submitit_local_sweep_matches_local_and_status", via)
    assert launch[1:] == ["--launcher", "submitit_local"] and status[1:] == ["--status"]

    main(status)  # in this process: --status reads files, trains nothing
    out = capsys.readouterr().out
    assert "4 runs" in out and "0 finished" in out and "4 not started" in out
    assert out.count(": not started (nothing yet)") == 4

    res = sweep(*launch)
    assert res.stdout.count("(submitit_local)") == 4
    a, b = table(reference["root"]), table(tmp_path / "via")
    assert len(a) == 4 and all(r["steps"] == 8 and np.isfinite(r["metric"]) for r in a)
    assert len({r["metric"] for r in a}) == 4  # four different runs
    assert a == b  # every metric, step count and compute figure equal
    record = json.loads((tmp_path / "via" / "tiny_launch" / "launch.json").read_text())
    assert record["launcher"] == "submitit_local" and len(record["runs"]) == 4

    main(status)
    out = capsys.readouterr().out
    assert "4 finished, 0 running, 0 queued" in out
    assert out.count("finished (step 8)  [job ") == 4 and out.count(": FINISHED]") == 4
    # a second launch trains nothing (every run is finished) and still writes the table
    main(launch)
    out = capsys.readouterr().out
    assert "4 of 4 runs already finished" in out and "submitted" not in out


FAKE_SBATCH = """#!/bin/sh
cp "$1" "{out}/submitted.sh"
echo "Submitted batch job 4242"
"""
FAKE_SACCT = """#!/bin/sh
printf 'JobID|State|NodeList\\n4242_0|PENDING|\\n4242_1|RUNNING|node1\\n4242_2|FAILED|node2\\n4242_3|PENDING|\\n'
"""


def test_slurm_launcher_writes_one_array_with_resources_signal_and_requeue(tmp_path, char_data):
    """Acceptance 1b: through a fake `sbatch` (and `srun`, which submitit looks for): one array of 4, the
    resources (command line over Experiment.slurm), `--signal=USR1@...`, `--requeue`, the preemption signal
    exported to the job, multi-node runs as one srun task per GPU with distributed.enabled; --status reads the
    job ids and a fake sacct's states."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH.format(out=tmp_path)), ("srun", "#!/bin/sh\nexit 1\n"),
                       ("sacct", FAKE_SACCT)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    exp = write_experiment(tmp_path / "exp.py", char_data, tmp_path / "runs", tmp_path / "xla",
                           slurm={"partition": "cpu", "time": 30, "account": "proj"})
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    launch, status = doc_commands("test_slurm_launcher_writes_one_array_with_resources_signal_and_requeue", exp)
    assert "--launcher" in launch and status[1:] == ["--status"]
    res = sweep(*launch, env=env)
    assert [f"as job 4242_{i} (slurm)" in res.stdout for i in range(4)] == [True] * 4
    assert "--status" in res.stdout
    script = (tmp_path / "submitted.sh").read_text()
    for line in ("#SBATCH --array=0-3%4", "#SBATCH --partition=gpu", "#SBATCH --time=30", "#SBATCH --account=proj",
                 "#SBATCH --gpus-per-node=4", "#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --signal=USR1@120", "#SBATCH --requeue",
                 "export SUBMITIT_PREEMPT_SIGNAL=USR1"):
        assert line in script.splitlines(), (line, script)
    assert "srun --unbuffered" in script and "submitit.core._submit" in script

    from submitit.core.utils import DelayedSubmission

    record = json.loads((tmp_path / "runs" / "tiny_launch" / "launch.json").read_text())
    assert sorted(record["runs"].values()) == [f"4242_{i}" for i in range(4)]
    pickles = sorted(Path(record["folder"]).glob("4242_*_submitted.pkl"))
    assert len(pickles) == 4
    delayed = DelayedSubmission.load(pickles[0])
    assert type(delayed.function).__name__ == "SweepTask" and hasattr(delayed.function, "checkpoint")
    assert delayed.function.extra["distributed.enabled"] is True
    assert delayed.args[0][0] in record["runs"]

    out = sweep(*status, env=env).stdout
    assert "0 finished, 1 running, 2 queued, 0 stopped, 1 failed, 0 not started" in out, out
    assert ": PENDING]" in out and ": RUNNING]" in out and ": FAILED]" in out
    # the same command again: only the failed run is submitted (as one job), the queued and running ones are not
    res = sweep(*launch, env=env)
    assert "3 run(s) still queued or running" in res.stdout and res.stdout.count("(slurm)") == 1, res.stdout
    assert "as job 4242 (slurm)" in res.stdout
    assert "--array" not in (tmp_path / "submitted.sh").read_text()


def test_slurm_launcher_without_submitit_names_the_extra(tmp_path, char_data, monkeypatch, capsys):
    from gpt2jax.sweep import main

    exp = write_experiment(tmp_path / "exp.py", char_data, tmp_path / "runs", tmp_path / "xla")
    monkeypatch.setitem(sys.modules, "submitit", None)  # `import submitit` raises ImportError
    with pytest.raises(SystemExit) as e:
        main([str(exp), "--launcher", "slurm"])
    message = str(e.value.code)
    assert message.startswith("error: ") and "gpt2jax[slurm]" in message and "\n" not in message


def task_pid(controller: int, timeout: float = 240) -> int:
    """The training process under submitit's local controller (its only child)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            children = Path(f"/proc/{controller}/task/{controller}/children").read_text().split()
        except OSError:
            children = []
        if children:
            return int(children[0])
        time.sleep(0.2)
    raise AssertionError("submitit's controller started no task")


def test_preempted_run_checkpoints_is_requeued_and_resumes_bitwise(tmp_path, char_data, reference):
    """Acceptance 1c: SIGUSR1 (SLURM's `--signal=USR1@...` notice) to a submitit_local job while it trains: the
    trainer checkpoints and stops, SweepTask hands the signal to submitit's restored handler, which checkpoints
    the callable and requeues (the local controller reruns it on exit code 144, as `scontrol requeue` does on
    SLURM); the requeued task resumes from the run dir to the same final params as an uninterrupted run (the
    reference sweep's run of the same seed)."""
    import orbax.checkpoint as ocp

    kw = dict(SEEDS4, grid={"s": [{"seed": 0}]})
    steps = kw["steps"]
    exp = write_experiment(tmp_path / "exp.py", char_data, tmp_path / "runs", reference["cache"], **kw)
    name = json.loads((reference["root"] / "tiny_launch" / "results.json").read_text())["rows"][0]["run"]
    out_dir = tmp_path / "runs" / "tiny_launch"
    run = out_dir / name
    proc = subprocess.Popen([sys.executable, "-m", "gpt2jax.sweep", str(exp), "--launcher", "submitit_local"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "GPT2JAX_FAULT_SLEEP": "step:5:15"})  # hold step 5 for the signal
    try:
        deadline = time.time() + 300
        while not (out_dir / "launch.json").exists() and time.time() < deadline:
            time.sleep(0.2)
        controller = int(json.loads((out_dir / "launch.json").read_text())["runs"][name])
        pid = task_pid(controller)
        while time.time() < deadline:  # step 4 logged: the task now sleeps in step 5
            metrics = run / "metrics.jsonl"
            if metrics.exists() and any(json.loads(line).get("step") == 4 for line in metrics.read_text().splitlines()
                                        if line.strip()):
                break
            time.sleep(0.2)
        else:
            raise AssertionError("the run never logged step 4")
        os.kill(pid, signal.SIGUSR1)
        out, _ = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-4000:]
    processes = [json.loads(line) for line in (run / "processes.jsonl").read_text().splitlines() if line.strip()]
    assert [p.get("stopped_by") for p in processes] == ["SIGUSR1", None], processes
    summary = json.loads((run / "summary.json").read_text())
    assert summary["step"] == steps and not summary.get("stopped_early")
    logs = "".join(p.read_text() for p in (out_dir / "submitit").glob(f"{controller}_0_log.*"))
    assert "handing over to submitit" in logs and f"Requeued job {controller}" in logs, logs[-4000:]
    assert "resum" in logs.lower()
    a = ocp.PyTreeCheckpointer().restore(reference["root"] / "tiny_launch" / name / "checkpoints" / str(steps)
                                         / "params")
    b = ocp.PyTreeCheckpointer().restore(run / "checkpoints" / str(steps) / "params")
    import jax

    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert np.array_equal(np.asarray(x), np.asarray(y))
    out = sweep(exp, "--status").stdout
    assert "1 finished" in out
