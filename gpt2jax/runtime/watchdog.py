"""A watchdog for steps, collectives and checkpoint waits that hang (a dead host, a stuck NCCL/gloo collective,
a file system that stopped answering).

The training loop calls `beat(phase)` as it enters each phase ("train step 1234", "eval at step 1200",
"checkpoint save at step 1200", ...). A daemon thread checks how long the current phase has lasted; past the
limit it writes which process and phase are stuck and the stacks of all threads (traceback.format_stack of sys._current_frames) to stderr and
to <run dir>/watchdog.<process>.txt, once per phase. The limit is `timeout_s`, or for train steps
`factor` x the median of the recent step times (at least `min_s`) once there are enough of them, whichever is
smaller (0 = off).
With exit_on_hang it then ends the process with exit code 75 (EX_TEMPFAIL), so a scheduler restarts the job and
the run resumes from its last checkpoint.
"""
from __future__ import annotations

import os
import statistics
import sys
import threading
import time
import traceback
from collections import deque
from pathlib import Path

HANG_EXIT_CODE = 75
MIN_STEP_SAMPLES = 20


class Watchdog:
    def __init__(self, timeout_s: float = 0.0, factor: float = 0.0, min_s: float = 0.0, exit_on_hang: bool = False,
                 report_dir: str | Path | None = None, process_index: int = 0, poll_s: float | None = None):
        self.timeout_s, self.factor, self.min_s, self.exit_on_hang = timeout_s, factor, min_s, exit_on_hang
        self.process_index = process_index
        self.report = Path(report_dir) / f"watchdog.{process_index}.txt" if report_dir else None
        self.step_times: deque[float] = deque(maxlen=100)
        self.phase, self.since, self.reported = "start", time.monotonic(), False
        self._stop = threading.Event()
        self.enabled = timeout_s > 0 or factor > 0
        limit_hint = min(x for x in (timeout_s, min_s or 60.0, 60.0) if x > 0)
        self.poll_s = poll_s or max(0.05, min(1.0, limit_hint / 10))
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)

    def start(self) -> "Watchdog":
        if self.enabled:
            self._thread.start()
        return self

    def __enter__(self) -> "Watchdog":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def beat(self, phase: str) -> None:
        now = time.monotonic()
        if self.phase.startswith("train step"):
            self.step_times.append(now - self.since)
        self.phase, self.since, self.reported = phase, now, False

    def limit(self) -> float:
        limits = [self.timeout_s] if self.timeout_s > 0 else []
        if self.factor > 0 and self.phase.startswith("train step") and len(self.step_times) >= MIN_STEP_SAMPLES:
            limits.append(max(self.min_s, self.factor * statistics.median(self.step_times)))
        return min(limits) if limits else float("inf")

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            phase, since = self.phase, self.since
            waited = time.monotonic() - since
            if not self.reported and waited > self.limit():
                self.reported = True
                self._dump(phase, waited)
                if self.exit_on_hang:
                    os._exit(HANG_EXIT_CODE)

    def _dump(self, phase: str, waited: float) -> None:
        head = (f"watchdog: process {self.process_index} (pid {os.getpid()}) stuck in '{phase}' for {waited:.1f}s "
                f"(limit {self.limit():.1f}s); stacks of all threads follow"
                + ("; exiting with code 75 so the job can be restarted from its last checkpoint"
                   if self.exit_on_hang else ""))
        text = head + "\n" + all_stacks()
        print(text, file=sys.stderr, flush=True)
        if self.report is not None:
            try:
                with open(self.report, "a") as f:
                    f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")
            except OSError:
                pass


def all_stacks() -> str:
    """The Python stack of every thread, named (what faulthandler prints, but to any stream)."""
    names = {t.ident: t.name for t in threading.enumerate()}
    parts = []
    for ident, frame in sys._current_frames().items():
        parts.append(f"--- thread {names.get(ident, ident)} ---\n" + "".join(traceback.format_stack(frame)))
    return "\n".join(parts)


FAULT_ENV = "GPT2JAX_FAULT_SLEEP"
NONFINITE_ENV = "GPT2JAX_FAULT_NONFINITE"


def injected_sleep(phase: str, step: int) -> None:
    """Test hook: env GPT2JAX_FAULT_SLEEP="<phase>:<step>:<seconds>" (phase: step | commit) sleeps there once, to
    make a step hang for the watchdog test or to hold a save open for a kill in the middle of it."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    want_phase, want_step, seconds = spec.split(":")
    if want_phase == phase and int(want_step) == step:
        time.sleep(float(seconds))


def injected_nonfinite() -> tuple[int, int] | None:
    """Test hook: env GPT2JAX_FAULT_NONFINITE="<first>:<end>" makes the loss and every gradient NaN at steps
    first <= step < end (1-based, as logged), the same for every optimizer, so the numerics guard's stop and skip
    can be tested without relying on how a given optimizer diverges. Read when the train step is traced."""
    spec = os.environ.get(NONFINITE_ENV)
    if not spec:
        return None
    first, end = spec.split(":")
    return int(first), int(end)
