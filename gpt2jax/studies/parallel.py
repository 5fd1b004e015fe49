"""`python -m gpt2jax.sweep EXP --parallel K`: up to K sweep jobs at once, each a child process
(`python -m gpt2jax.sweep EXP --only <job>`) with its own resources:
    GPUs     (nvidia-smi lists them) split into K groups: CUDA_VISIBLE_DEVICES per child
    CPU      the cores this process may use, split into K disjoint sets: each child is pinned to its set
             (sched_setaffinity) and told its thread count (XLA intra-op threads, OMP_NUM_THREADS)
A child's output goes to <log_dir>/<job>.log; this process prints one progress line per start and finish.
Finished runs are skipped by the children as by the sequential sweep, so a stopped parallel sweep resumes.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path


def gpu_count() -> int:
    """GPUs visible here, without initialising JAX in this process (it would reserve their memory)."""
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    n = sum(line.startswith("GPU ") for line in out.splitlines())
    return min(n, len(visible.split(","))) if visible else n


def resource_slots(k: int) -> list[dict]:
    """k disjoint resource sets: {"env": {...}, "cpus": set or None}."""
    gpus = gpu_count()
    if gpus:
        ids = (os.environ.get("CUDA_VISIBLE_DEVICES") or ",".join(map(str, range(gpus)))).split(",")
        per = max(1, len(ids) // k)
        return [{"env": {"CUDA_VISIBLE_DEVICES": ",".join(ids[i * per:(i + 1) * per] or ids[i % len(ids):][:1])},
                 "cpus": None} for i in range(k)]
    cpus = sorted(os.sched_getaffinity(0))
    per = max(1, len(cpus) // k)
    slots = []
    for i in range(k):
        mine = cpus[i * per:(i + 1) * per] or [cpus[i % len(cpus)]]
        flags = os.environ.get("XLA_FLAGS", "")
        flags = re.sub(r"--xla_cpu_multi_thread_eigen\S*|intra_op_parallelism_threads=\S*", "", flags).strip()
        slots.append({"cpus": set(mine), "env": {
            "OMP_NUM_THREADS": str(len(mine)),
            "XLA_FLAGS": f"{flags} --xla_cpu_multi_thread_eigen={'true' if len(mine) > 1 else 'false'} "
                         f"intra_op_parallelism_threads={len(mine)}".strip()}})
    return slots


def safe_name(job: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=,-]", "_", job)


def run_parallel(experiment_file: str, extra: dict, jobs: list[str], k: int, log_dir: Path,
                 flags: list[str] | tuple = ()) -> None:
    """Run every job in a child process, at most k at once; raise SystemExit naming failed jobs and their logs.
    flags: more arguments for each child (e.g. --on_change rename, so that it names the runs as this process)."""
    import json

    log_dir.mkdir(parents=True, exist_ok=True)
    slots = resource_slots(min(k, len(jobs)))
    free = list(range(len(slots)))
    pending, running, failed, finished = list(jobs), {}, [], 0
    t0 = time.time()
    sets = [a for key, value in extra.items() for a in ("--set", f"{key}={json.dumps(value)}")]
    print(f"parallel: {len(jobs)} jobs, {len(slots)} at once; logs in {log_dir}/")
    while pending or running:
        while pending and free:
            job, slot = pending.pop(0), free.pop(0)
            log = open(log_dir / f"{safe_name(job)}.log", "w")
            cpus = slots[slot]["cpus"]
            proc = subprocess.Popen(
                [sys.executable, "-m", "gpt2jax.sweep", experiment_file, *sets, *flags, "--only", job],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **slots[slot]["env"], "PYTHONUNBUFFERED": "1"},
                preexec_fn=(lambda c=cpus: os.sched_setaffinity(0, c)) if cpus else None)
            running[proc] = (job, slot, log, time.time())
            _progress(t0, finished, len(jobs), running, f"started {job}")
        time.sleep(0.5)
        for proc in [p for p in running if p.poll() is not None]:
            job, slot, log, started = running.pop(proc)
            log.close()
            free.append(slot)
            finished += 1
            if proc.returncode:
                failed.append((job, proc.returncode))
            status = "done" if not proc.returncode else f"FAILED (exit {proc.returncode})"
            _progress(t0, finished, len(jobs), running, f"{status} {job} in {time.time() - started:.0f}s")
    if failed:
        raise SystemExit("error: " + "; ".join(f"job {j} exited with {rc}, see {log_dir / (safe_name(j) + '.log')}"
                                                for j, rc in failed) + ". Finished runs are kept: rerun to resume.")


def _progress(t0, finished, total, running, event) -> None:
    elapsed = time.time() - t0
    eta = f", ETA {elapsed / finished * (total - finished):.0f}s" if finished else ""
    print(f"[{finished}/{total} done, {len(running)} running, {elapsed:.0f}s{eta}] {event}", flush=True)
