"""Two processes that see only the environment `srun` gives its tasks (SLURM_JOB_ID, SLURM_NTASKS, SLURM_PROCID,
SLURM_LOCALID, SLURM_STEP_NODELIST, ...) and run `--config.distributed.enabled=True` with no coordinator address,
process count or id form one 2-process job through JAX's SLURM auto-detection (docs/cluster.md).

JAX derives the coordinator from the first host of SLURM_STEP_NODELIST and the port from the job id
(61440 + SLURM_JOB_ID % 4096), so the test picks a job id whose port is free on the loopback interface.
"""
import json
import os
import random
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gpt2jax.data import prepare as prep

from .test_multiprocess import wait_all

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 240  # per process; a missing peer makes jax.distributed abort after initialization_timeout

WORKER = textwrap.dedent("""
    # One srun task: 4 CPU devices, nothing about the cluster on the command line.
    import json, sys
    import jax
    jax.config.update("jax_num_cpu_devices", 4)
    from gpt2jax.train import main
    summary = main(["train", *sys.argv[1:]])
    print("JOB " + json.dumps({"process_index": jax.process_index(), "process_count": jax.process_count(),
                               "devices": len(jax.devices()), "local_devices": len(jax.local_devices()),
                               "losses": [summary[k] for k in ("step", "loss", "val_loss")]}))
""")


def slurm_port(job_id: int) -> int:
    return job_id % 2**12 + (65535 - 2**12 + 1)  # jax/_src/clusters/slurm_cluster.py


def free_job_id() -> int:
    for _ in range(50):
        job_id = random.randrange(100_000, 10_000_000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", slurm_port(job_id)))
                return job_id
            except OSError:
                continue
    pytest.skip("no free port in JAX's SLURM range 61440-65535 on this machine")


def srun_env(job_id: int, proc_id: int) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "OMPI_", "PMI_", "JAX_COORDINATOR", "JAX_LOCAL_DEVICE_IDS"))}
    env.pop("XLA_FLAGS", None)
    env.update({"JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO),
                # what `srun --nodes=1 --ntasks=2` exports to its tasks (the subset JAX reads, plus a few)
                "SLURM_JOB_ID": str(job_id), "SLURM_JOBID": str(job_id), "SLURM_NTASKS": "2",
                "SLURM_PROCID": str(proc_id), "SLURM_LOCALID": str(proc_id), "SLURM_NODEID": "0",
                "SLURM_STEP_NODELIST": "127.0.0.1", "SLURM_JOB_NODELIST": "127.0.0.1", "SLURM_STEP_NUM_NODES": "1",
                "SLURM_STEP_NUM_TASKS": "2"})
    return env


def test_slurm_environment_forms_one_job(tmp_path):
    data = tmp_path / "data"
    prep.prepare_files([REPO / "data" / "tinyshakespeare.txt"], data, tokenizer="char")
    (tmp_path / "worker.py").write_text(WORKER)
    args = ["--config", str(REPO / "configs" / "tiny_test.py"), f"--config.data.dir={data}",
            f"--config.run_root={tmp_path / 'runs'}", "--config.name=slurm", "--config.distributed.enabled=True",
            "--config.distributed.initialization_timeout=60", "--config.train.max_steps=6",
            "--config.train.log_every=1", "--config.train.eval_every=6"]
    job_id = free_job_id()
    procs = [subprocess.Popen([sys.executable, str(tmp_path / "worker.py"), *args], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=srun_env(job_id, i), cwd=tmp_path)
             for i in range(2)]
    outputs = wait_all(procs, TIMEOUT_S, "SLURM-environment job")
    jobs = [json.loads(line.split(" ", 1)[1]) for out in outputs for line in out.splitlines()
            if line.startswith("JOB ")]
    assert [j["process_index"] for j in jobs] == [0, 1]  # SLURM_PROCID became the process index
    for j in jobs:
        assert (j["process_count"], j["devices"], j["local_devices"]) == (2, 8, 4)
    assert jobs[0]["losses"] == jobs[1]["losses"]  # one job: both processes saw the same global losses
    assert jobs[0]["losses"][0] == 6
    steps = [json.loads(l)["step"] for l in (tmp_path / "runs" / "slurm" / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 6 and len(steps) == len(set(steps)) + 1  # one run dir written by process 0 only: a train and an eval row for step 6
