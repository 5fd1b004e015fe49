"""`python -m gpt2jax.sweep EXP --launcher slurm|submitit_local`: a sweep's jobs through submitit (the scheduler is
submitit's and SLURM's; nothing here schedules), and `--status`.

    slurm           one SLURM job array per sweep (per phase: cooldown forks are a second array that depends on the
                    first, `afterok`); each array task trains one job of the sweep in-process, as a `--parallel`
                    child does (`SweepTask`). Resources: `partition`, `time` (minutes), `gpus_per_run` (per node),
                    `nodes_per_run`, `account`, `cpus_per_task` from the command line or `Experiment.slurm` (the
                    command line wins). A task runs gpus_per_run processes per node on nodes_per_run nodes (srun
                    tasks, one per GPU) with `distributed.enabled=True`, so that jax.distributed.initialize joins
                    them through its SLURM auto-detection (docs/cluster.md). The driver waits for the array and
                    then writes the results table (`--no_wait`: submit and return; rerun the command, or `--status`).
    submitit_local  submitit's LocalExecutor (one local process per job, all at once, one task each): the same
                    callable, pickles and requeue path as on SLURM, without a cluster (what the tests use).

Preemption: SUBMITIT_PREEMPT_SIGNAL=USR1 is set before submitit is imported (and exported in the batch script), so
submitit writes `#SBATCH --signal=USR1@<signal_delay_s>` and, in the job, installs its checkpoint-and-requeue
handler for USR1. `--requeue` is added to the sbatch options. The trainer (gpt2jax.runtime.signals.StopSignals)
replaces that handler while it trains: on USR1 it saves a checkpoint and returns with summary.json
`stopped_by="SIGUSR1"`, then restores submitit's handler; `SweepTask` then raises USR1 again, so submitit's handler
pickles the same callable (`Checkpointable.checkpoint`) and requeues the job (SLURM: `scontrol requeue`; local:
the controller reruns the task, exit code 144). The requeued task resumes the run from its run directory.

The job ids go to runs/<experiment>/launch.json, submitit's files to runs/<experiment>/submitit/. The results table
is built from the run directories, whatever launched the runs.
"""
from __future__ import annotations

import fcntl
import json
import os
import signal
import sys
import time
from pathlib import Path

from gpt2jax.config import ConfigError

LAUNCHERS = ("local", "slurm", "submitit_local")
SLURM_OPTIONS = ("partition", "time", "gpus_per_run", "nodes_per_run", "account", "cpus_per_task")
PREEMPT_SIGNAL = "USR1"  # the trainer checkpoints and stops on it (gpt2jax.runtime.signals)
LAUNCH_FILE = "launch.json"
DEFAULT_TIME_MIN = 60
# submitit reads its preemption signal from here when it is imported (job_environment.JobEnvironment.USR_SIG)
os.environ["SUBMITIT_PREEMPT_SIGNAL"] = PREEMPT_SIGNAL
SIGNAL_DELAY_S = 120  # SLURM sends USR1 this long before the time limit: time for a checkpoint


def import_submitit():
    """submitit, with USR1 as its preemption signal (it reads SUBMITIT_PREEMPT_SIGNAL when imported; a submitit
    imported earlier with another signal is set to USR1 as well). One ConfigError line when it is missing."""
    os.environ["SUBMITIT_PREEMPT_SIGNAL"] = PREEMPT_SIGNAL
    try:
        import submitit
        from submitit.core.job_environment import JobEnvironment
    except ImportError:
        raise ConfigError("--launcher slurm|submitit_local needs submitit: pip install 'gpt2jax[slurm]' (the `slurm` "
                          "extra), or pip install 'submitit>=1.5'") from None
    JobEnvironment.USR_SIG = PREEMPT_SIGNAL
    return submitit


def resolve_options(experiment, options: dict) -> dict:
    """Experiment.slurm under the command line's options (those that are not None)."""
    merged = dict(getattr(experiment, "slurm", None) or {})
    bad = [k for k in merged if k not in SLURM_OPTIONS]
    if bad:
        raise ConfigError(f"experiment {experiment.name}: slurm={{{bad[0]!r}: ...}} is not an option; options: "
                          f"{', '.join(SLURM_OPTIONS)}")
    merged.update({k: v for k, v in options.items() if k in SLURM_OPTIONS and v is not None})
    for key in ("time", "gpus_per_run", "nodes_per_run", "cpus_per_task"):
        if key in merged and (not isinstance(merged[key], int) or merged[key] < (0 if key == "gpus_per_run" else 1)):
            raise ConfigError(f"slurm option {key}={merged[key]!r} must be an integer >= "
                              f"{0 if key == 'gpus_per_run' else 1}")
    return merged


def tasks_per_run(opts: dict) -> tuple[int, int]:
    """(nodes, tasks per node): one process per GPU, at least one."""
    return int(opts.get("nodes_per_run", 1)), max(1, int(opts.get("gpus_per_run", 0)))


def make_executor(submitit, launcher: str, folder: Path, opts: dict, name: str):
    nodes, per_node = tasks_per_run(opts)
    minutes = int(opts.get("time", DEFAULT_TIME_MIN))
    if launcher == "submitit_local":
        if nodes > 1 or per_node > 1:
            raise ConfigError("--launcher submitit_local runs one process per run on this machine: nodes_per_run and "
                              "gpus_per_run > 1 need --launcher slurm")
        executor = submitit.LocalExecutor(folder=folder)
        params = dict(timeout_min=minutes, signal_delay_s=SIGNAL_DELAY_S)
        if opts.get("gpus_per_run"):
            params["gpus_per_node"] = int(opts["gpus_per_run"])
        else:  # LocalExecutor sets CUDA_VISIBLE_DEVICES to its gpus_per_node GPUs: keep what this process sees
            from gpt2jax.studies.parallel import gpu_count

            params["gpus_per_node"] = gpu_count()
        executor.update_parameters(**params)
        return executor
    executor = submitit.SlurmExecutor(folder=folder)
    params = dict(job_name=f"gpt2jax-{name}", time=minutes, nodes=nodes, ntasks_per_node=per_node,
                  signal_delay_s=SIGNAL_DELAY_S, additional_parameters={"requeue": True},
                  setup=[f"export SUBMITIT_PREEMPT_SIGNAL={PREEMPT_SIGNAL}"])
    if opts.get("gpus_per_run"):
        params["gpus_per_node"] = int(opts["gpus_per_run"])
    for key in ("partition", "account", "cpus_per_task"):
        if opts.get(key) is not None:
            params[key] = opts[key]
    executor.update_parameters(**params)
    return executor


def launch(experiment_file: str, experiment, extra: dict, phases: list, launcher: str, options: dict | None,
           on_change: str) -> bool:
    """Submit the sweep's unfinished jobs (`phases`: lists of jobs, see gpt2jax.sweep.jobs_of) through submitit.
    Returns True once every job is done (the caller then writes the table), False after submitting without waiting
    (options["wait"] False). Raises SystemExit naming the failed jobs and their logs."""
    from gpt2jax.sweep import job_name

    if launcher not in LAUNCHERS[1:]:
        raise ConfigError(f"--launcher must be one of {LAUNCHERS}, got {launcher!r}")
    options = options or {}
    opts = resolve_options(experiment, options)
    submitit = import_submitit()
    out_dir = Path(experiment.run_root) / experiment.name
    folder = (out_dir / "submitit").resolve()
    try:
        executor = make_executor(submitit, launcher, folder, opts, experiment.name)
    except RuntimeError as e:  # SlurmExecutor without srun on PATH
        raise ConfigError(f"--launcher slurm: {e} (run the sweep where SLURM's commands are, e.g. a login node or "
                          "scripts/slurm/sweep.sbatch)") from None
    nodes, per_node = tasks_per_run(opts)
    run_extra = dict(extra)
    if nodes * per_node > 1:
        run_extra["distributed.enabled"] = True  # the srun tasks join through JAX's SLURM auto-detection
    task = SweepTask(str(Path(experiment_file).resolve()), run_extra, on_change)
    wait = options.get("wait", True)
    record = read_launch(out_dir)
    record.update(launcher=launcher, folder=str(folder), options=opts)
    submitted, previous, active = [], None, set()
    if launcher == "slurm":  # a rerun while the array is still queued or running must not submit its jobs again
        names = [c.name for phase in phases for job in phase for _, c in job]
        active = {n for n, (_, state) in submitit_states(out_dir, names).items()
                  if (state.split() or ["?"])[0] in QUEUED_STATES + ("RUNNING",)}
        if active:
            print(f"{len(active)} run(s) still queued or running in SLURM (launch.json): not submitted again: "
                  + ", ".join(sorted(active)))
    for phase in phases:
        phase = [job for job in phase if not active & {c.name for _, c in job}]
        if not phase:
            continue
        runs = [[c.name for _, c in job] for job in phase]
        if launcher == "slurm" and previous is not None:  # cooldown forks start once their stable runs are done
            executor.update_parameters(dependency=f"afterok:{previous}")
        jobs = executor.map_array(task, runs)
        previous = jobs[0].job_id.split("_")[0]
        record.setdefault("arrays", []).append(dict(array=previous, jobs=len(jobs),
                                                    submitted=time.strftime("%Y-%m-%dT%H:%M:%S")))
        for job, names, sweep_job in zip(jobs, runs, phase):
            for name in names:
                record.setdefault("runs", {})[name] = job.job_id
            submitted.append((job, job_name(sweep_job)))
            print(f"submitted {job_name(sweep_job)} as job {job.job_id} ({launcher})", flush=True)
        write_launch(out_dir, record)
        if launcher == "submitit_local":  # no dependencies locally: the next phase waits here
            _wait(submitted[-len(jobs):])
    if not wait or active:
        print(f"submitted {len(submitted)} job(s); follow them with: python -m gpt2jax.sweep {experiment_file} "
              "--status; when they are done, rerun this command to write the results table")
        return False
    _wait(submitted)
    return True


def _wait(submitted: list) -> None:
    failed = []
    for job, name in submitted:
        try:
            job.result()
        except Exception as e:  # submitit's FailedJobError / UncompletedJobError carry the job's traceback
            last = str(e).strip().splitlines()[-1:] or [type(e).__name__]
            failed.append(f"job {name} ({job.job_id}) failed: {last[0]}; log {job.paths.stderr}")
    if failed:
        raise SystemExit("error: " + "; ".join(failed) + ". Finished runs are kept: rerun to resume.")


def read_launch(out_dir: Path) -> dict:
    try:
        value = json.loads((Path(out_dir) / LAUNCH_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def write_launch(out_dir: Path, record: dict) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / (LAUNCH_FILE + ".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(out_dir / LAUNCH_FILE)


class SweepTask:
    """One array task: train the sweep jobs that hold these runs (by run name, so that a replica group that was
    split into single runs by a resume is still found), in this process, as `--parallel`'s children do.
    Checkpointable as submitit understands it (a `checkpoint` method): on a preemption its checkpoint() resubmits
    this same call, which resumes. Not a subclass of submitit.helpers.Checkpointable, so that this module never
    imports submitit unless a sweep goes through it: importing submitit reconfigures the logging module (its
    logger.py calls logging.config.dictConfig at import), which closed a test runner's captured stderr."""

    def __init__(self, experiment_file: str, extra: dict, on_change: str = "stop"):
        self.experiment_file = experiment_file
        self.extra = extra
        self.on_change = on_change

    def checkpoint(self, *args, **kwargs):
        """submitit's requeue after a preemption: the same call again, which resumes from the run directories."""
        from submitit.helpers import DelayedSubmission  # lazily: see the class docstring

        return DelayedSubmission(self, *args, **kwargs)

    def __call__(self, runs: list[str]) -> dict:
        from gpt2jax import sweep
        from gpt2jax.errors import Stopped

        experiment = sweep.load_py(self.experiment_file, "get_experiment")
        configs = sweep.build_configs(experiment, self.extra)
        sweep.name_runs(experiment, configs, self.on_change)
        wanted = set(runs)
        mine = [job for job in sweep.jobs_of(experiment, configs) if wanted & {c.name for _, c in job}]
        if any(c.distributed.enabled for job in mine for _, c in job):
            _initialize_distributed(mine[0][0][1])
        preempted = False
        for job in mine:
            try:
                sweep.run_job(job)
            except Stopped as e:  # the run checkpointed and stopped, or the signal came before its first step
                if f"SIG{PREEMPT_SIGNAL}" not in str(e):
                    raise  # another stop signal (scancel's SIGTERM): the task ends, exit 3
                print(str(e), file=sys.stderr, flush=True)
                preempted = True
            if preempted:
                break
        if preempted:
            hand_to_submitit()
        return {c.name: ("stopped" if preempted else "trained") for job in mine for _, c in job}


def hand_to_submitit() -> None:
    """The run saved a checkpoint and stopped on USR1, and the trainer restored the handler that was there before
    (submitit's checkpoint_and_try_requeue): raise USR1 again so that submitit checkpoints this callable and
    requeues the job (it exits the process). Outside a submitit job there is no such handler: just return."""
    handler = signal.getsignal(signal.SIGUSR1)
    if type(getattr(handler, "__self__", None)).__name__ != "SignalHandler":
        print("stopped on SIGUSR1 outside a submitit job: not requeued; rerun to resume", file=sys.stderr, flush=True)
        return
    print("stopped on SIGUSR1 with a checkpoint: handing over to submitit to requeue this job", file=sys.stderr,
          flush=True)
    signal.raise_signal(signal.SIGUSR1)


def _initialize_distributed(config) -> None:
    import jax

    d = config.distributed
    jax.distributed.initialize(coordinator_address=d.coordinator_address or None,
                               num_processes=d.num_processes or None,
                               process_id=None if d.process_id < 0 else d.process_id,
                               initialization_timeout=d.initialization_timeout)


# --status -------------------------------------------------------------------------------------------------------

QUEUED_STATES = ("PENDING", "REQUEUED", "CONFIGURING", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED")
FAILED_STATES = ("FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE",
                 "PREEMPTED", "INTERRUPTED")


def lock_held(directory: Path) -> bool:
    """Whether a live process holds <run dir>/train.lock (gpt2jax.runtime.lock; a stale file is not held)."""
    from gpt2jax.runtime.lock import LOCK_FILE

    path = Path(directory) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def run_dir_state(config) -> tuple[str, str]:
    """(finished | running | stopped | failed | not started, detail) from the run directory alone."""
    from gpt2jax.studies.runs import _read_json, complete, run_dir

    directory = run_dir(config)
    summary = _read_json(directory / "summary.json") or {}
    end = config.train.max_steps
    if complete(summary, config):
        return "finished", f"step {end}"
    if lock_held(directory):
        return "running", "train.lock held"
    if summary.get("stopped_early"):
        return "stopped", f"stopped by {summary.get('stopped_by')} at step {summary.get('step')} of {end}; resumes"
    if summary:
        return "failed", f"summary at step {summary.get('step')} of {end}, incomplete"
    if (directory / "metrics.jsonl").exists():
        return "failed", "metrics but no summary: killed or crashed"
    return "not started", "nothing yet"


def submitit_states(out_dir: Path, names: list[str]) -> dict:
    """{run: (job id, submitit's state or '?')} from launch.json, where it was launched through submitit."""
    record = read_launch(out_dir)
    ids = record.get("runs") or {}
    if not ids:
        return {}
    try:
        submitit = import_submitit()
    except ConfigError:
        return {n: (ids[n], "?") for n in names if n in ids}
    folder = record.get("folder") or str(out_dir / "submitit")
    out = {}
    for name in names:
        if name not in ids:
            continue
        state = "?"
        try:
            if record.get("launcher") == "slurm":
                state = submitit.SlurmJob(folder=folder, job_id=ids[name]).state
            else:
                job = submitit.LocalJob(folder=folder, job_id=ids[name])
                state = job.get_info().get("jobState", "?")
                if state.startswith("NO PROCESS") and not job.paths.result_pickle.exists():
                    state = "?"
        except Exception:  # no sacct here, an unreadable folder: the run dirs still say what they hold
            state = "?"
        out[name] = (ids[name], state or "?")
    return out


def status(experiment_file: str, extra: dict | None = None, on_change: str = "stop") -> dict:
    """Print and return each run's state: the run directory's, refined by submitit's view of the recorded job
    (queued when SLURM still holds it pending, failed when SLURM says it failed and the run is not finished)."""
    from gpt2jax import sweep

    experiment = sweep.load_py(experiment_file, "get_experiment")
    configs = sweep.build_configs(experiment, extra or {})
    sweep.name_runs(experiment, configs, on_change)
    out_dir = Path(experiment.run_root) / experiment.name
    jobs = submitit_states(out_dir, [c.name for _, c in configs])
    rows, counts = [], {}
    for _, config in configs:
        state, detail = run_dir_state(config)
        job_id, job_state = jobs.get(config.name, (None, None))
        head = (job_state or "").split()[0] if job_state else ""
        if state in ("not started", "stopped") and head in QUEUED_STATES:
            state = "queued"
        elif state in ("not started", "stopped") and head == "RUNNING":
            state = "running"
        elif state not in ("finished", "running") and head in FAILED_STATES:
            state = "failed"
        counts[state] = counts.get(state, 0) + 1
        rows.append(dict(run=config.name, state=state, detail=detail, job_id=job_id, job_state=job_state))
    print(f"sweep {experiment.name}: {len(rows)} runs in {out_dir}: "
          + ", ".join(f"{counts.get(s, 0)} {s}" for s in ("finished", "running", "queued", "stopped", "failed",
                                                          "not started")))
    for r in rows:
        job = f"  [job {r['job_id']}: {r['job_state']}]" if r["job_id"] else ""
        print(f"  {r['run']}: {r['state']} ({r['detail']}){job}")
    return {"runs": rows, "counts": counts}


# the command line (gpt2jax.sweep.main) ---------------------------------------------------------------------------

def add_arguments(parser) -> None:
    parser.add_argument("--launcher", choices=LAUNCHERS, default="local",
                        help="local (default): this machine, --parallel K at once; slurm: one SLURM job array per "
                             "sweep through submitit (pip install 'gpt2jax[slurm]'); submitit_local: submitit's "
                             "local executor (the same path without a cluster)")
    group = parser.add_argument_group("--launcher slurm (also Experiment.slurm={...}; the command line wins)")
    group.add_argument("--partition", default=None)
    group.add_argument("--time", type=int, default=None, metavar="MINUTES",
                       help=f"time limit of each run's job (default {DEFAULT_TIME_MIN}); SLURM sends USR1 "
                            f"{SIGNAL_DELAY_S} s before it: the run checkpoints and is requeued")
    group.add_argument("--gpus_per_run", type=int, default=None, metavar="G",
                       help="GPUs per node for each run, one process (srun task) per GPU")
    group.add_argument("--nodes_per_run", type=int, default=None, metavar="N")
    group.add_argument("--account", default=None)
    group.add_argument("--cpus_per_task", type=int, default=None)
    group.add_argument("--no_wait", action="store_true",
                       help="submit and return (default: wait for the array, then write the results table)")
    parser.add_argument("--status", action="store_true",
                        help="what is queued, running, finished and failed (run directories; submitit's job states "
                             "for a sweep launched through it)")


def options_from(args) -> dict:
    options = {k: getattr(args, k) for k in SLURM_OPTIONS}
    options["wait"] = not args.no_wait
    return options
