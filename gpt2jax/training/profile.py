"""`train.profile_steps="A:B"`: a `jax.profiler` trace of training steps A+1..B, written to `<run dir>/profile/`.

The trace starts before the compiled call that runs step A+1 and stops after the call that completes step B, once
the device has finished it (with several steps per call, `train.steps_per_call`, the traced range widens to whole
calls; the printed line says which steps it holds). Compile and start-up stay outside when A > 0, so "10:15" traces
five steady-state steps. The trace lands in `<run dir>/profile/plugins/profile/<date>/`: `<host>.xplane.pb` for
TensorBoard's profile plugin (`tensorboard --logdir <run dir>/profile`, with `tensorboard-plugin-profile`
installed) and `perfetto_trace.json.gz`, which https://ui.perfetto.dev opens as it is.
Every process of a multi-process run writes its own trace (file names carry the host name).
"""
from __future__ import annotations

from pathlib import Path

import jax

from gpt2jax.config import ConfigError

PROFILE_DIR = "profile"


def parse_profile_steps(value: str, max_steps: int) -> tuple[int, int] | None:
    """"A:B" -> (A, B) with 0 <= A < B <= max_steps; "" -> None. One-line ConfigError otherwise."""
    value = (value or "").strip()
    if not value:
        return None
    first, sep, last = value.partition(":")
    try:
        a, b = int(first), int(last)
    except ValueError:
        a = b = -1
    if not sep or not 0 <= a < b <= max_steps:
        raise ConfigError(f"train.profile_steps={value!r}: use \"A:B\" with 0 <= A < B <= train.max_steps="
                          f"{max_steps} (a trace of steps A+1..B, e.g. \"10:15\"), or \"\" for no trace")
    return a, b


class StepProfiler:
    """Starts and stops the trace around the loop's calls: `before(step, k)` ahead of a call that runs steps
    step+1..step+k (`step` counts completed updates), `after(step, state)` once it returned. A context manager: a
    trace still open when the loop ends (stopped early) is closed."""

    def __init__(self, steps: str, max_steps: int, run_dir: Path, say):
        self.range = parse_profile_steps(steps, max_steps)
        self.dir, self.say = Path(run_dir) / PROFILE_DIR, say
        self.first = None  # the first traced step while a trace is open
        self.done = False

    def before(self, step: int, k: int = 1) -> None:
        if self.range is None or self.done or self.first is not None:
            return
        a, b = self.range
        if step < b and step + k > a:  # the call holds a step of A+1..B
            self.dir.mkdir(parents=True, exist_ok=True)
            jax.profiler.start_trace(str(self.dir), create_perfetto_trace=True)
            self.first = step + 1

    def after(self, step: int, state) -> None:
        if self.first is not None and step >= self.range[1]:
            self._stop(step, state)

    def _stop(self, step: int, state) -> None:
        jax.block_until_ready(state)
        jax.profiler.stop_trace()
        self.say(f"profile of steps {self.first}..{step} written to {self.dir}")
        self.first, self.done = None, True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.first is not None:
            try:
                jax.profiler.stop_trace()
            finally:
                self.first, self.done = None, True
        return False
