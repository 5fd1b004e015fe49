"""The errors a user can cause or must act on, and the one place that turns them into `error: ...` + an exit code.

Every command-line entry point runs its `main(argv)` through `run_cli`: a known error prints one line to stderr and
exits 2 (bad input) or 1 (a run that stopped and says why); anything else is a bug and keeps its traceback.

Exit codes (docs/reliability.md has the table of faults):
    0    done
    1    the run stopped and says why (non-finite loss, a failed save, a file system that refused a write:
         full, read-only, not ours), with one `error: ...` line
    2    bad input (flag, config, path, data), one `error: ...` line, nothing changed
    3    stopped early on a signal (SIGTERM, SIGINT, SIGUSR1, SIGHUP: a scheduler's preemption notice or Ctrl-C),
         after a checkpoint; rerun the same command to resume. Also a signal during start-up (nothing trained).
         Not 0, so `train && eval` does not go on with a partial model.
    75   the watchdog found a hung step (`train.watchdog_exit`, EX_TEMPFAIL): restart to resume
    128+N a second signal N: exited at once without saving (completed checkpoints untouched)
More error types live beside the code that raises them (ConfigError in `gpt2jax.config`, TokenizerError in
`gpt2jax.tokenizer`, GenerationError in `gpt2jax.generation.generate`).
"""
from __future__ import annotations

import errno
import sys

from gpt2jax.config import ConfigError

STOPPED_EXIT_CODE = 3  # stopped early on a signal, with a checkpoint (see the table above)


class UsageError(ValueError):
    """A bad command-line value (flag, path, file content). The message names it and the fix."""


class DataError(ValueError):
    """Data that cannot be used as asked: a missing or damaged shard or dataset file, an unknown data option. The
    message names the file or option and the fix. (Raised by `gpt2jax.data` and by the eval suite's tasks.)"""


class CheckpointError(ValueError):
    """Weights that cannot be loaded or saved: the one family of `gpt2jax.weights` (a Hugging Face directory, a hub
    id, --init_from, a run directory and its checkpoints). The message names the file and the fix."""


class RunDirError(CheckpointError, ConfigError):
    """A run directory that cannot be used as asked (also a ConfigError: the run's settings point at it). The
    message names the problem and the fix."""


class CorruptCheckpointError(RunDirError):
    """A checkpoint whose files do not match its manifest, cannot be read, or hold non-finite numbers."""


class SaveError(RuntimeError):
    """A checkpoint could not be written (disk full, permissions). The message names the previous intact one."""


class TrainingStopped(RuntimeError):
    """Training stopped on purpose (non-finite loss, a hung step): the message says where and what to do."""


class Stopped(Exception):
    """A stop signal ended the command cleanly (exit 3, STOPPED_EXIT_CODE): whatever needed saving was saved; the
    message says so and how to resume."""


class StartupInterrupted(Stopped):
    """A stop signal arrived before training started: nothing needed saving, the run stops cleanly (exit 3)."""


class SweepStopped(Stopped):
    """A stop signal reached a sweep: the runs in training checkpointed and stopped, no further run was started."""


# OSErrors that are the machine's state, not a bug: the message (with the path) is the whole story
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EISDIR,
                      errno.ENOTDIR, errno.ENAMETOOLONG, errno.EIO, errno.EMFILE, errno.ENFILE}


def environment_error(e: OSError) -> str:
    """One line for an OSError of the environment (full disk, read-only file system, not our file, ...)."""
    where = f": {e.filename}" if e.filename else ""
    fixes = {errno.ENOSPC: "free disk space", errno.EDQUOT: "free space within your quota",
             errno.EROFS: "the file system is mounted read-only; use a writable --config.run_root",
             errno.EACCES: "fix its permissions or use a directory you own",
             errno.EPERM: "fix its permissions or use a directory you own"}
    fix = fixes.get(e.errno, "fix the path")
    return (f"{e.strerror or type(e).__name__}{where} ({errno.errorcode.get(e.errno, e.errno)}); {fix}, then rerun "
            "(a training run resumes from its last checkpoint)")


def user_errors() -> tuple[type[BaseException], ...]:
    """The exception types whose message is the whole story (imported lazily: this module is imported first)."""
    from gpt2jax.generation.generate import GenerationError  # lazily: these modules import this one
    from gpt2jax.tokenizer import TokenizerError  # lazily: these modules import this one

    return (UsageError, ConfigError, DataError, GenerationError, CheckpointError, TokenizerError)


def exit_code(error: BaseException) -> int:
    return 1 if isinstance(error, (SaveError, TrainingStopped)) else 2


def run_cli(main, argv=None) -> int:
    """Run `main(argv)`; returns the exit code (0, or 1/2 after printing one `error: ...` line, 3 after a stop
    signal (`Stopped`))."""
    try:
        result = main(argv)
    except (SaveError, TrainingStopped, *user_errors()) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return exit_code(e)
    except Stopped as e:
        print(str(e), file=sys.stderr, flush=True)
        return STOPPED_EXIT_CODE
    except OSError as e:
        if e.errno not in ENVIRONMENT_ERRNOS:
            raise
        print(f"error: {environment_error(e)}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:  # Ctrl-C before a command installed its own handling (e.g. while importing jax)
        print("interrupted", file=sys.stderr, flush=True)
        return 130
    except SystemExit as e:  # argparse (exit 2 after its usage line) and mains that exit with a message
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr, flush=True)
            return 2 if e.code.startswith("error:") else 1
        return e.code or 0
    return result if isinstance(result, int) else 0
