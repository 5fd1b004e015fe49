"""Stop signals for the trainer: SIGTERM (what schedulers send before preemption), SIGINT (Ctrl-C), SIGUSR1 (SLURM's
`#SBATCH --signal=USR1@120`, sent that many seconds before the time limit) and SIGHUP (a closed terminal or
session, some schedulers' preemption notice). All four are handled alike.

During start-up (data, restore, compilation) a signal stops the run at the next phase boundary with a clean
message (exit 3, `gpt2jax.errors.STOPPED_EXIT_CODE`): nothing has been trained, so nothing needs saving. In the
loop the first signal asks the loop to finish its step, save a checkpoint, wait for in-flight saves and exit 3
(stopped early; rerun to resume). A second signal exits at once (exit code 128 + signal) without touching
completed checkpoints (an in-flight save is left as orbax's temporary directory, which is ignored). The same
signal again within DUPLICATE_S of the first counts once: a scheduler that signals every process of a job and a
parallel sweep that passes the signal on to its children (gpt2jax.studies.parallel) deliver it twice.
In multi-process runs the processes agree on the stop step at log steps (`should_stop`).
Handlers can only be installed from the main thread; elsewhere they are skipped.
"""
from __future__ import annotations

import os
import signal
import sys
import time

from gpt2jax.errors import StartupInterrupted

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP)
DUPLICATE_S = 1.0  # a repeat of the first signal sooner than this is the same request delivered twice


class StopSignals:
    def __init__(self, say=lambda m: print(m, file=sys.stderr, flush=True)):
        self.say = say
        self.requested: str | None = None  # the signal's name once one arrived
        self.requested_at = 0.0  # time.monotonic() of its arrival
        self.in_loop = False
        self.previous: dict = {}

    def install(self) -> "StopSignals":
        for sig in SIGNALS:
            try:
                self.previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if name == self.requested and time.monotonic() - self.requested_at < DUPLICATE_S:
            return
        if self.requested is not None:
            self.say(f"{name} again: exiting now without saving; completed checkpoints are untouched")
            sys.stdout.flush()
            os._exit(128 + signum)
        self.requested, self.requested_at = name, time.monotonic()
        if not self.in_loop:
            self.say(f"{name}: stopping at the next safe point of start-up; send it again to exit at once")
            return
        self.say(f"{name}: stopping after this step (checkpoint follows); send it again to exit without saving")

    def should_stop(self, sync_point: bool) -> bool:
        """Whether the loop stops after this step. One process: as soon as a signal arrived. Several: all must stop
        at the same step (or the others hang in the next collective), so they agree at sync points (log steps)
        with one tiny all-gather: any process signalled -> all stop."""
        import jax

        if jax.process_count() == 1:
            return self.requested is not None
        if not sync_point:
            return False
        from jax.experimental import multihost_utils

        import numpy as np

        flags = multihost_utils.process_allgather(np.int32(self.requested is not None))
        return bool(np.asarray(flags).any())

    def check_startup(self) -> None:
        """Called between start-up phases: raise StartupInterrupted once a signal arrived. (Raising from the
        handler itself could interrupt XLA or orbax mid-call, which has crashed the interpreter at exit.)"""
        if self.requested is not None:
            raise StartupInterrupted(f"{self.requested} during start-up: stopped before training; nothing needed "
                                     "saving")
