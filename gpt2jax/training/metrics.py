"""Training metrics: `metrics.jsonl` (one JSON record per line), TensorBoard events, Weights & Biases, MFU, a
loss-curve plot.

Records have a "kind": "train" (step, loss, lr, grad_norm, tokens_per_s, mfu, elapsed_s), "eval" (step,
val_loss, val_ppl over fixed validation batches) or "final" (step, val_loss, val_ppl over the whole val split,
scored with sliding windows). `step` is the number of optimizer updates completed.

Weights & Biases (`logging.wandb`: project, entity, group, mode disabled | offline | online; the `wandb` extra)
gets the same scalars as TensorBoard (`<kind>/<field>` at `step`), the resolved config and the run's summary. Its
files go to `<run dir>/wandb/`; the W&B run id is kept in `<run dir>/wandb_id`, so a resumed run continues the same
W&B run. `offline` needs no network (`wandb sync <run dir>/wandb/offline-run-*` uploads it later).

MFU (model FLOPs utilisation) = flops_per_token * tokens/s / peak FLOP/s, with the FLOP count of
`gpt2jax.model.flops_per_token` (6 N + 12 L T C per token for forward + backward, PaLM appendix B) and the peak
of the devices (dense bf16 datasheet numbers for accelerators; on CPU the peak is measured, see `peak_flops`).
"""
from __future__ import annotations

import collections
import contextlib
import json
import math
import os
import secrets
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from gpt2jax.config import ConfigError
from gpt2jax.errors import TrainingStopped

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"

# Dense bf16 peak FLOP/s per chip from vendor datasheets (no sparsity), matched against jax's device_kind.
PEAK_FLOPS_BY_KIND = {
    "H200": 989e12, "H100": 989e12,  # NVIDIA H100/H200 SXM datasheet
    "A100": 312e12,  # NVIDIA A100 datasheet (the number nanoGPT's estimate_mfu uses)
    "L4": 121e12, "A10G": 70e12,
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v6 lite": 918e12,
}


def measure_cpu_flops(n: int = 1024, repeats: int = 5) -> float:
    """Host matmul FLOP/s in float32 (best of `repeats` n x n x n products). Simulated CPU devices share the
    host's cores, so this is the peak of all of them together."""
    x = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    f(x).block_until_ready()
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        f(x).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def cpu_description() -> str:
    """The host CPU's model name and widest float vector extension (from /proc/cpuinfo on Linux), for benchmark
    records: XLA's and torch's matmul kernels differ by vector width, so CPU ratios depend on it."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown (no /proc/cpuinfo)"
    lines = info.splitlines()  # the first CPU's "model name" and "flags" lines stand for all of them
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "?")
    flags = set(next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), []))
    widest = next((isa for isa in ("avx512f", "avx2", "avx", "sse4_2") if isa in flags), "none listed")
    return f"{model}, {widest}" + (", amx_bf16" if "amx_bf16" in flags else "")


def peak_flops(devices, override: float = 0.0) -> float | None:
    """Peak FLOP/s of all `devices` together; override > 0 is taken as the per-device peak."""
    if override > 0:
        return override * len(devices)
    if devices[0].platform == "cpu":
        return measure_cpu_flops()
    kind = devices[0].device_kind
    for name, flops in PEAK_FLOPS_BY_KIND.items():
        if name.lower() in kind.lower():
            return flops * len(devices)
    return None  # unknown accelerator: MFU is left out unless --config.train.peak_flops is given


def perplexity(loss: float) -> float:
    """exp(loss), inf instead of an OverflowError for a loss above ~709 nats (and nan for nan)."""
    return math.exp(loss) if loss < 700 else (math.inf if loss == loss else loss)


def mfu(flops_per_token: float, tokens_per_s: float, peak: float | None) -> float | None:
    return None if not peak else flops_per_token * tokens_per_s / peak


class NonfiniteTally:
    """Train steps whose loss or gradient norm was NaN/Inf (the compiled step did not apply their update), fed
    with the per-step flags when the host reads a call's metrics (no extra sync)."""

    def __init__(self):
        self.count, self.first = 0, None

    def update(self, step: int, flag) -> None:
        if flag:
            self.count += 1
            self.first = self.first or step

    def check(self, skip: bool, ckpts, lr: float) -> None:
        """Raise TrainingStopped once a step was non-finite, unless bad batches are skipped."""
        if skip or not self.count:
            return

        ckpts.wait()
        last = ckpts.last_saved if ckpts.last_saved is not None else ckpts.latest_step()
        kept = f"the last checkpoint, step {last}, holds the last good state" if last is not None else \
            "no checkpoint was saved before it"
        raise TrainingStopped(
            f"the loss or gradient norm became NaN/Inf at step {self.first} ({self.count} such step(s) so far); "
            f"those updates were not applied and nothing after step {self.first - 1} was saved; {kept}. Lower "
            f"optim.lr (now {lr:g}) or check the data, or pass --config.train.skip_nonfinite=True to skip such "
            "batches and continue")


XLA_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"  # jax._src.dispatch.BACKEND_COMPILE_EVENT
_xla_compile_s = [0.0, False]  # seconds of XLA compilation in this process since the listener started; started


def xla_compile_seconds() -> float:
    """Seconds XLA has spent compiling in this process since the first call (JAX's monitoring events)."""
    if not _xla_compile_s[1]:
        def listen(event: str, seconds: float, **_) -> None:
            if event == XLA_COMPILE_EVENT:
                _xla_compile_s[0] += seconds

        jax.monitoring.register_event_duration_secs_listener(listen)
        _xla_compile_s[1] = True
    return _xla_compile_s[0]


class RunClock:
    """Where a run's wall time went, summary.json's `time_s`: the start-up before the first step, the loop's
    phases (evals, samples and checkpoint saves as the loop waits for them: an asynchronous save's background
    write overlaps the steps; steps = the loop less those), the final evaluation with its sample, and how much of
    all that was XLA compiling (every program: train step, eval, initial state, decoding, scorer)."""

    PHASES = ("startup", "steps", "evals", "samples", "checkpoints", "final")

    def __init__(self):
        self.t0, self.compile0 = time.time(), xla_compile_seconds()
        self.seconds = collections.defaultdict(float)

    @contextlib.contextmanager
    def phase(self, name: str):
        t = time.time()
        try:
            yield
        finally:
            self.seconds[name] += time.time() - t

    def summary(self, loop_s: float) -> dict:
        """{phase: seconds} over the wall time so far, given the loop's seconds (which holds evals, samples and
        checkpoints); plus wall and xla_compile."""
        s = dict(self.seconds)
        s["steps"] = loop_s - sum(s.get(k, 0.0) for k in ("evals", "samples", "checkpoints"))
        out = {k: round(s.get(k, 0.0), 3) for k in self.PHASES}
        out.update(wall=round(time.time() - self.t0, 3), xla_compile=round(xla_compile_seconds() - self.compile0, 3))
        return out

    @staticmethod
    def line(time_s: dict) -> str:
        """One printed line: 'time: 142.2 s = start-up 7.6, steps 99.0, ... (XLA compiling 8.8 of them)'."""
        parts = ", ".join(f"{k.replace('startup', 'start-up')} {time_s[k]:.1f}" for k in RunClock.PHASES if time_s[k])
        return f"time: {time_s['wall']:.1f} s = {parts} (XLA compiling {time_s['xla_compile']:.1f} of them)"


def summary_writer_class():
    """tensorboardX's SummaryWriter, imported without torch. tensorboardX's writer module tries `import torch` at
    import time (to accept torch tensors): wherever torch is installed, that cost a run 1.1-1.2 s of start-up (0.03
    s without it, on this project's 2-core CPU) and torch's libraries in its memory. This logger passes it Python
    floats only. If torch is already imported (the bench, a notebook), it is left as it is."""
    hide = "torch" not in sys.modules
    if hide:
        sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX catches
    try:
        from tensorboardX import SummaryWriter
    finally:
        if hide:
            del sys.modules["torch"]
    return SummaryWriter


WANDB_MODES = ("disabled", "offline", "online")
WANDB_ID_FILE = "wandb_id"


def check_wandb(wandb_cfg) -> None:
    """logging.wandb's mode is one of WANDB_MODES, and wandb is installed when the mode is not disabled (one line
    naming the fix; checked before anything compiles)."""
    if wandb_cfg is None:
        return
    if wandb_cfg.mode not in WANDB_MODES:

        raise ConfigError(f"logging.wandb.mode={wandb_cfg.mode!r}: choose one of {', '.join(WANDB_MODES)}")
    if wandb_cfg.mode != "disabled":
        import importlib.util

        if importlib.util.find_spec("wandb") is None:

            raise ConfigError(f"logging.wandb.mode={wandb_cfg.mode} needs the wandb package, which is not installed: "
                              "pip install 'gpt2jax[wandb]' (or pip install wandb), or leave "
                              "--config.logging.wandb.mode=disabled")


def _scalars(record: dict) -> dict:
    """The numeric fields of a record as `<kind>/<field>`: what TensorBoard and W&B both get."""
    return {f"{record['kind']}/{key}": value for key, value in record.items()
            if key not in ("step", "kind") and isinstance(value, (int, float))
            and math.isfinite(value)}


class WandbRun:
    """One W&B run per run dir (the id is kept in <run dir>/wandb_id, so a resumed run continues it)."""

    def __init__(self, wandb_cfg, run_dir: Path, name: str, config: dict | None):
        import wandb

        id_file = Path(run_dir) / WANDB_ID_FILE
        run_id = id_file.read_text().strip() if id_file.is_file() else ""
        if not run_id:
            run_id = secrets.token_hex(4)  # W&B ids: lowercase letters and digits
            id_file.write_text(run_id + "\n")
        # create_new: several runs at once in one process (training/replicas.py trains seeds as one program)
        settings = wandb.Settings(console="off", save_code=False, x_disable_stats=True, silent=True,
                                  reinit="create_new")
        try:
            self.run = wandb.init(project=wandb_cfg.project or None, entity=wandb_cfg.entity or None,
                                  group=wandb_cfg.get("group") or None, name=name, id=run_id, resume="allow",
                                  mode=wandb_cfg.mode, dir=str(run_dir), config=config, settings=settings)
        except Exception as e:  # noqa: BLE001 - no login, no network, a bad entity: one line with the way out

            why = (str(e).strip().splitlines() or [""])[0]
            raise ConfigError(f"logging.wandb.mode={wandb_cfg.mode}: W&B could not start a run ({type(e).__name__}: "
                              f"{why}); log in (wandb login) or use --config.logging.wandb.mode=offline (no network; "
                              "wandb sync later) or =disabled") from None

    def log(self, record: dict) -> None:
        scalars = _scalars(record)
        if scalars:
            self.run.log(scalars, step=int(record["step"]))

    def finish(self, summary: dict | None = None, exit_code: int = 0) -> None:
        if summary:
            self.run.summary.update({k: v for k, v in summary.items() if v is not None})
        self.run.finish(exit_code=exit_code)


class MetricsLogger:
    """Appends records to run_dir/metrics.jsonl and mirrors numeric fields to TensorBoard (`<kind>/<field>`) and,
    with `wandb` (the config's logging.wandb section, mode not disabled), to Weights & Biases with `config` (the
    resolved config) and the summary given to `close`. Only the writing process (process 0) should pass
    enabled=True."""

    def __init__(self, run_dir: Path, tensorboard: bool = True, enabled: bool = True, wandb=None,
                 config: dict | None = None, name: str = ""):
        self.path = Path(run_dir) / METRICS_FILE
        self.enabled = enabled
        self.tb = self.wandb = None
        if enabled and tensorboard:
            self.tb = summary_writer_class()(str(run_dir))
        if enabled and wandb is not None and wandb.mode != "disabled":
            check_wandb(wandb)
            self.wandb = WandbRun(wandb, run_dir, name or Path(run_dir).name, config)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in _scalars(record).items():
                self.tb.add_scalar(key, value, record["step"])
        if self.wandb is not None:
            self.wandb.log(record)

    def close(self, summary: dict | None = None, exit_code: int = 0) -> None:
        """Close the writers (again: a no-op); `summary` goes to the W&B run's summary."""
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self.wandb is not None:
            wandb_run, self.wandb = self.wandb, None
            wandb_run.finish(summary, exit_code)


def read_metrics(run_dir: Path) -> list[dict]:
    """The records of metrics.jsonl. A torn line (a process killed while writing it) is skipped."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        # a hand-edited or foreign line ({"step": "x"}) is skipped like a torn one: rewind compares steps
        if (isinstance(record, dict) and isinstance(record.get("step"), int) and not isinstance(record["step"], bool)
                and isinstance(record.get("kind"), str)):
            records.append(record)
    return records


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def rewind_metrics(run_dir: Path, step: int) -> int:
    """Before (re)starting at `step`: move records of later steps (logged after the checkpoint the run resumes
    from, or by a run that stopped before its first checkpoint when step is 0) to metrics.rewound.jsonl, so
    metrics.jsonl reads as one uninterrupted run with no step twice. Torn lines are dropped. Returns how many
    records moved. The rewrite is atomic: a kill during it leaves the old or the new file."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return 0
    records = read_metrics(run_dir)
    # a "final" record at the resume step belongs to the run's end and is redone when it ends again; from step 0
    # everything is redone (an eval at step 0 included)
    later = [r for r in records if r["step"] > step or (r["kind"] == "final" and r["step"] >= step) or step == 0]
    kept = "".join(json.dumps(r) + "\n" for r in records if r not in later)
    if later:
        with open(Path(run_dir) / "metrics.rewound.jsonl", "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in later)
    if later or path.read_text(errors="replace") != kept:
        _write_atomically(path, kept)
    return len(later)


def plot_losses(run_dir: Path) -> Path | None:
    """Train and validation loss against step, saved as run_dir/loss.png."""
    records = read_metrics(run_dir)
    train = [(r["step"], r["loss"]) for r in records if r["kind"] == "train"]
    val = [(r["step"], r["val_loss"]) for r in records if r["kind"] == "eval"]
    if not train and not val:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for points, label, style in ((train, "train (batch)", "-"), (val, "val (fixed batches)", "o-")):
        if points:
            ax.plot(*np.array(points).T, style, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(Path(run_dir).name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(run_dir) / PLOT_FILE
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
