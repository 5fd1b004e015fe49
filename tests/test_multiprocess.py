"""Two processes x 4 CPU devices (jax.distributed on 127.0.0.1) train exactly like one process with 8 devices:
each process reads only its own rows, the checkpoint is written jointly, and the losses are equal."""
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from gpt2jax.training import metrics as metrics_lib
from gpt2jax.data import prepare as prep
from gpt2jax.train import parse_config, train

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 300  # per process; a missing peer makes jax.distributed abort after initialization_timeout (60 s)

WORKER = textwrap.dedent("""
    # One of two processes: 4 CPU devices each, joined through the trainer's own --config.distributed.* flags.
    import json, sys
    import jax
    jax.config.update("jax_num_cpu_devices", 4)
    port, pid, config_file, data_dir, run_root = sys.argv[1:6]
    from gpt2jax.train import main
    summary = main(["train", "--config", config_file, f"--config.data.dir={data_dir}",
                    f"--config.run_root={run_root}", "--config.distributed.enabled=True",
                    f"--config.distributed.coordinator_address=127.0.0.1:{port}",
                    "--config.distributed.num_processes=2", f"--config.distributed.process_id={pid}",
                    "--config.distributed.initialization_timeout=60", *sys.argv[6:]])
    assert jax.process_count() == 2 and len(jax.devices()) == 8 and len(jax.local_devices()) == 4
    print("SUMMARY " + json.dumps({k: summary[k] for k in ("step", "loss", "val_loss")}))
""")
# The final eval scores the whole val split (~7000 windows at stride 16): 64 rows per call instead of 8 makes it ~110
# cross-process calls instead of ~870 (two processes: 43 -> 32 s here), same windows, same code path.
OVERRIDES = ["--config.name=mp", "--config.train.max_steps=10", "--config.train.batch_size=8",
             "--config.train.grad_accum=2", "--config.train.log_every=1", "--config.train.eval_every=5",
             "--config.train.final_eval=True", "--config.train.eval_batch_size=64"]


def config(data_dir, run_root):
    c = parse_config(["train", "--config", str(REPO / "configs" / "tiny_test.py"), *OVERRIDES])
    c.data.dir, c.run_root = str(data_dir), str(run_root)
    return c


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_all(procs, timeout_s: int, what: str) -> list[str]:
    """Outputs of processes that must all exit 0 within timeout_s (a missing peer aborts, never raises)."""
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=timeout_s)[0])
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail(f"{what} did not finish in {timeout_s}s")
    for pid, (p, out) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, f"process {pid} exited with {p.returncode}:\n{out[-3000:]}"
    return outputs


def test_two_processes_match_one_process(tmp_path):
    data = tmp_path / "data"
    prep.prepare_files([REPO / "data" / "tinyshakespeare.txt"], data, tokenizer="char")
    (tmp_path / "worker.py").write_text(WORKER)
    port = free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    env.pop("XLA_FLAGS", None)
    procs = [subprocess.Popen([sys.executable, str(tmp_path / "worker.py"), str(port), str(pid),
                               str(REPO / "configs" / "tiny_test.py"), str(data), str(tmp_path / "two"), *OVERRIDES],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)
             for pid in range(2)]
    outputs = wait_all(procs, TIMEOUT_S, "2-process training")

    one = train(config(data, tmp_path / "one"))  # this process: 8 devices (conftest)
    two = [json.loads(line.split(" ", 1)[1]) for out in outputs for line in out.splitlines()
           if line.startswith("SUMMARY ")]
    assert len(two) == 2 and two[0] == two[1]  # both processes saw the same global losses
    loss = lambda d: [(r["step"], r.get("loss", r.get("val_loss"))) for r in metrics_lib.read_metrics(d)]  # noqa: E731
    a, b = loss(tmp_path / "one" / "mp"), loss(tmp_path / "two" / "mp")
    assert [s for s, _ in a] == [s for s, _ in b]
    # cross-process all-reduces (gloo) sum in another order than in-process ones: equal up to float32 rounding
    np.testing.assert_allclose([v for _, v in b], [v for _, v in a], rtol=1e-6)
    assert sorted(p.name for p in (tmp_path / "two" / "mp" / "checkpoints").iterdir()) == ["10", "5"]
