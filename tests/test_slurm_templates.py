"""The SLURM templates in scripts/slurm/ run as written: fake `sbatch`/`srun` (tests/fake_slurm.py, first on PATH)
start each job's tasks as local processes with the variables SLURM sets, on 2 simulated nodes x 4 GPUs, and the
processes must form one JAX job that uses every GPU of both nodes exactly once. The commands are the ones
docs/cluster.md quotes: each test reads its block there (the lines after `# run by <this test>`), so the doc can
only show commands that a test runs.

No GPUs here: the fake `python` (first on PATH, what the templates call) maps the GPUs JAX's SLURM auto-detection
chose (SLURM_LOCALID, or JAX_LOCAL_DEVICE_IDS) through the task's CUDA_VISIBLE_DEVICES, fails where CUDA would, and
gives the process that many CPU devices. The coordinator is the first simulated node, 127.0.0.1.
scripts/slurm/sweep.sbatch is left out: `gpt2jax.sweep --launcher slurm` (issue 38 item 1) does not exist yet.
"""
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gpt2jax.data import prepare as prep

from .test_slurm_env import free_job_id

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "cluster.md"
STEP_TIMEOUT_S = 150  # per srun step (the fake srun kills it then); a missing peer aborts after 60 s anyway

# A training config that finishes in seconds: tiny_test, 2 steps, one eval and checkpoint at the end.
TINY = """
import importlib.util
spec = importlib.util.spec_from_file_location("tiny_test", {tiny!r})
tiny_test = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tiny_test)


def get_config():
    c = tiny_test.get_config()
    c.name = "slurm"
    c.distributed.initialization_timeout = 60
    c.optim.warmup_steps = 1
    c.train.update(max_steps=2, log_every=1, eval_every=2, eval_batches=1, steps_per_call=1)
    return c
"""


def doc_commands(test_name: str) -> list[str]:
    """The commands docs/cluster.md quotes for `test_name`: its ```bash block that starts `# run by ...::test_name`."""
    blocks = re.findall(r"```bash\n(.*?)```", DOC.read_text(), re.S)
    marker = f"# run by tests/test_slurm_templates.py::{test_name}"
    (block,) = [b for b in blocks if b.startswith(marker)]
    return [line for line in block.splitlines()[1:] if line.strip() and not line.startswith("#")]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A submit directory with the repository's scripts/ and configs/, fake sbatch/srun/python first on PATH, the
    tiny config and its prepared data; the environment the templates read (CONFIG, DATA_DIR, RUN_ROOT)."""
    root = tmp_path_factory.mktemp("slurm")
    bin_dir = root / "bin"
    bin_dir.mkdir()
    for name in ("sbatch", "srun", "python"):
        (bin_dir / name).write_text(f'#!/bin/sh\nexec "{sys.executable}" "{REPO / "tests" / "fake_slurm.py"}" '
                                    f'{name} "$@"\n')
        (bin_dir / name).chmod(0o755)
    submit = root / "submit"  # sbatch runs the script here and writes slurm-<job id>.out here
    submit.mkdir()
    for name in ("scripts", "configs"):
        (submit / name).symlink_to(REPO / name)
    prep.prepare_files([REPO / "data" / "tinyshakespeare.txt"], root / "data", tokenizer="char")
    (root / "tiny_slurm.py").write_text(TINY.format(tiny=str(REPO / "configs" / "tiny_test.py")))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "SBATCH_", "OMPI_", "PMI_", "JAX_", "CUDA_VISIBLE_DEVICES"))}
    env.update({"PATH": f"{bin_dir}:{env['PATH']}", "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu",
                # 10 processes compile the same tiny programs: LLVM's cheapest settings halve their CPU time
                "XLA_FLAGS": "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true",
                "FAKE_SLURM_TIMEOUT": str(STEP_TIMEOUT_S), "GPT2JAX_HOST_MALLOC": "system",
                "CONFIG": str(root / "tiny_slurm.py"), "DATA_DIR": str(root / "data")})
    return submit, env


def submit(cluster, test_name: str, run_root: Path) -> tuple[str, list[dict]]:
    """Run the doc's commands for `test_name` in the submit directory; the job's log and its tasks' reports."""
    cwd, env = cluster
    env = {**env, "RUN_ROOT": str(run_root), "FAKE_SLURM_JOB_ID": str(free_job_id())}
    (command,) = doc_commands(test_name)
    out = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=STEP_TIMEOUT_S + 60)
    submitted = re.search(r"Submitted batch job (\d+)", out.stdout)
    assert submitted, f"{command} submitted nothing:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
    log = (cwd / f"slurm-{submitted.group(1)}.out").read_text()
    assert out.returncode == 0, f"{command} exited with {out.returncode}:\n{out.stderr[-2000:]}\n{log[-5000:]}"
    probes = [json.loads(line.split(" ", 1)[1]) for line in log.splitlines() if line.startswith("SLURM_PROBE ")]
    return log, sorted(probes, key=lambda p: int(p["procid"]))


def check_one_job(probes: list[dict], processes: int, run_dir: Path):
    assert len(probes) == processes
    assert [p["process_index"] for p in probes] == list(range(processes))  # SLURM_PROCID became the process index
    for p in probes:
        assert (p["process_count"], p["devices"], p["local_devices"]) == (processes, 8, 8 // processes)
    # every GPU of both nodes, each used by exactly one process
    used = sorted((p["node"], g) for p in probes for g in p["gpus"])
    assert used == [(node, g) for node in ("127.0.0.1", "127.0.0.2") for g in range(4)]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["step"] == 2  # process 0 wrote the run dir of one job


def test_per_gpu_template(cluster, tmp_path):
    """scripts/slurm/train_per_gpu.sbatch on 2 nodes x 4 GPUs: 8 processes of one GPU each."""
    log, probes = submit(cluster, "test_per_gpu_template", tmp_path / "runs")
    check_one_job(probes, 8, tmp_path / "runs" / "slurm")
    assert all(p["gpus"] == [int(p["localid"])] for p in probes)  # task i of a node on that node's GPU i
    assert "mesh {'data': 8" in log


def test_per_node_template(cluster, tmp_path):
    """scripts/slurm/train_per_node.sbatch on 2 nodes x 4 GPUs: 2 processes of 4 GPUs each."""
    log, probes = submit(cluster, "test_per_node_template", tmp_path / "runs")
    check_one_job(probes, 2, tmp_path / "runs" / "slurm")
    assert all(p["gpus"] == [0, 1, 2, 3] for p in probes)
    assert "mesh {'data': 8" in log


def fake(cluster, tool: str, *args: str) -> str:
    cwd, env = cluster
    out = subprocess.run([tool, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    return out.stdout + out.stderr


def test_the_shims_reproduce_the_two_binding_mistakes(cluster, tmp_path):
    """What docs/cluster.md warns about, shown by the shims without starting JAX: `--export=ALL,X=0,1,...` sets X=0
    (srun splits at commas), and --gpus-per-task narrows each task's CUDA_VISIBLE_DEVICES to one GPU, which the
    fake python then refuses for JAX's default choice of GPU SLURM_LOCALID (as CUDA would)."""
    cwd, env = cluster
    job = tmp_path / "job.sh"
    job.write_text("#!/bin/bash\n#SBATCH --nodes=1\n#SBATCH --ntasks-per-node=4\n#SBATCH --gpus-per-node=4\n"
                   "srun --label --export=ALL,JAX_LOCAL_DEVICE_IDS=0,1,2,3 printenv JAX_LOCAL_DEVICE_IDS\n"
                   "srun --label --gpus-per-task=1 printenv CUDA_VISIBLE_DEVICES\n"
                   "srun --label printenv CUDA_VISIBLE_DEVICES\n")
    job_id = re.search(r"Submitted batch job (\d+)", fake(cluster, "sbatch", str(job))).group(1)
    lines = sorted((cwd / f"slurm-{job_id}.out").read_text().splitlines())
    assert lines.count("0: 0") == 2 and lines.count("3: 0") == 1  # every task: JAX_LOCAL_DEVICE_IDS=0
    assert {"1: 1", "2: 2", "3: 3"} <= set(lines)                   # bound: one GPU per task
    assert lines.count("3: 0,1,2,3") == 1                          # unbound: the node's four

    # the fake python on a bound task: JAX (SLURM_LOCALID=1) asks for ordinal 1 of a process that sees one GPU
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    task_env = {**env, "SLURM_JOB_ID": "1", "SLURM_STEP_NODELIST": "127.0.0.1", "SLURM_NTASKS": "1",
                "SLURM_PROCID": "0", "SLURM_LOCALID": "1", "CUDA_VISIBLE_DEVICES": "1",
                "JAX_COORDINATOR_PORT": str(port)}
    out = subprocess.run(["python", "-m", "gpt2jax.train", "--config", env["CONFIG"],
                          "--config.distributed.enabled=True", f"--config.data.dir={env['DATA_DIR']}"],
                         cwd=tmp_path, env=task_env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "GPU ordinal 1" in out.stdout + out.stderr


def test_cluster_doc_names_the_test_of_every_command_block():
    """docs/cluster.md quotes only commands that a test runs: each ```bash block starts with `# run by <test>` (a test
    that exists) or the paragraph after it names the test that runs it, or says that none can (TPU: gcloud)."""
    text = DOC.read_text()
    for m in re.finditer(r"```bash\n(.*?)```\n(.*?)(?:\n\n|$)", text, re.S):
        block, after = m.groups()
        run_by = re.match(r"# run by (tests/test_\w+\.py)::(\w+)\n", block)
        if run_by:
            assert f"def {run_by.group(2)}(" in (REPO / run_by.group(1)).read_text(), run_by.group(0)
        else:
            assert re.search(r"tests/test_\w+\.py|No test runs this block", after), block
