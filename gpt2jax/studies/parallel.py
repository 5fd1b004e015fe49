"""`python -m gpt2jax.sweep EXP --parallel K`: up to K sweep jobs at once, each a child process
(`python -m gpt2jax.sweep EXP --only <job>`) with its own resources:
    GPUs     (nvidia-smi lists them) split into K groups: CUDA_VISIBLE_DEVICES per child
    CPU      the cores this process may use, split into K disjoint sets: each child is pinned to its set
             (sched_setaffinity) and told its thread count (XLA intra-op threads, OMP_NUM_THREADS)
A child's output goes to <log_dir>/<job>.log; this process prints one progress line per start and finish.
Finished runs are skipped by the children as by the sequential sweep, so a stopped parallel sweep resumes.

A stop signal (SIGTERM, SIGINT, SIGUSR1, SIGHUP) to this process is passed to every running child, which
checkpoints and stops (exit 3); no further job starts, and this process exits 3 once they have (errors.SweepStopped).
The children run in sessions of their own, so Ctrl-C reaches them once, through this process. If this process is
killed outright (SIGKILL), Linux sends each child SIGTERM (PR_SET_PDEATHSIG): they checkpoint and stop too.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
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


def _child_setup(cpus: set | None, parent: int) -> None:
    """In the child before exec: pin it to its cores, and on Linux have it sent SIGTERM if this process dies
    (prctl PR_SET_PDEATHSIG), so that a sweep killed with SIGKILL leaves no job training unseen, holding its run
    dir's lock: the job checkpoints and stops as after any SIGTERM."""
    if cpus:
        os.sched_setaffinity(0, cpus)
    if sys.platform == "linux":
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before prctl took effect: nothing will signal this child
            os._exit(1)


def run_parallel(experiment_file: str, extra: dict, jobs: list[str], k: int, log_dir: Path,
                 flags: list[str] | tuple = ()) -> None:
    """Run every job in a child process, at most k at once; raise SystemExit naming failed jobs and their logs, or
    errors.SweepStopped after a stop signal (passed on to the running children, see the module docstring).
    flags: more arguments for each child (e.g. --on_change rename, so that it names the runs as this process)."""
    import json

    from gpt2jax.errors import STOPPED_EXIT_CODE, SweepStopped
    from gpt2jax.runtime.signals import SIGNALS

    log_dir.mkdir(parents=True, exist_ok=True)
    slots = resource_slots(min(k, len(jobs)))
    free = list(range(len(slots)))
    pending, running, failed, stopped, finished = list(jobs), {}, [], [], 0
    requested: list[str] = []
    t0 = time.time()
    sets = [a for key, value in extra.items() for a in ("--set", f"{key}={json.dumps(value)}")]

    def pass_on(signum, frame):
        name = signal.Signals(signum).name
        if not requested:
            print(f"{name}: passing it to the {len(running)} running job(s), which checkpoint and stop; no further "
                  "job starts (send it again to make them exit without saving)", flush=True)
        requested.append(name)
        pending.clear()
        for proc in running:
            proc.send_signal(signum)

    main_thread = threading.current_thread() is threading.main_thread()  # handlers can only be installed there
    previous = {sig: signal.signal(sig, pass_on) for sig in SIGNALS} if main_thread else {}
    print(f"parallel: {len(jobs)} jobs, {len(slots)} at once; logs in {log_dir}/")
    try:
        while pending or running:
            while pending and free:
                job, slot = pending.pop(0), free.pop(0)
                log = open(log_dir / f"{safe_name(job)}.log", "w")
                cpus = slots[slot]["cpus"]
                proc = subprocess.Popen(
                    [sys.executable, "-m", "gpt2jax.sweep", experiment_file, *sets, *flags, "--only", job],
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                    env={**os.environ, **slots[slot]["env"], "PYTHONUNBUFFERED": "1"},
                    preexec_fn=lambda c=cpus, p=os.getpid(): _child_setup(c, p))
                running[proc] = (job, slot, log, time.time())
                if requested:  # the signal came between taking this job and starting it: pass it on too
                    proc.send_signal(signal.Signals[requested[0]])
                _progress(t0, finished, len(jobs), running, f"started {job}")
            time.sleep(0.5)
            for proc in [p for p in running if p.poll() is not None]:
                job, slot, log, started = running.pop(proc)
                log.close()
                free.append(slot)
                finished += 1
                if requested and proc.returncode == STOPPED_EXIT_CODE:
                    stopped.append(job)
                elif proc.returncode:
                    failed.append((job, proc.returncode))
                status = ("stopped" if job in stopped else "done" if not proc.returncode
                          else f"FAILED (exit {proc.returncode})")
                _progress(t0, finished, len(jobs), running, f"{status} {job} in {time.time() - started:.0f}s")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if failed:
        raise SystemExit("error: " + "; ".join(f"job {j} exited with {rc}, see {log_dir / (safe_name(j) + '.log')}"
                                                for j, rc in failed) + ". Finished runs are kept: rerun to resume.")
    if requested:
        raise SweepStopped(f"sweep stopped by {requested[0]}: {', '.join(stopped) or 'no job'} saved a checkpoint and "
                           f"stopped; no further job was started, finished runs are kept; rerun the same command to "
                           f"resume (exit {STOPPED_EXIT_CODE})")


def _progress(t0, finished, total, running, event) -> None:
    elapsed = time.time() - t0
    eta = f", ETA {elapsed / finished * (total - finished):.0f}s" if finished else ""
    print(f"[{finished}/{total} done, {len(running)} running, {elapsed:.0f}s{eta}] {event}", flush=True)
