"""The errors a user can cause or must act on, and the one place that turns them into `error: ...` + an exit code.

Every command-line entry point runs its `main(argv)` through `run_cli`: a known error prints one line to stderr and
exits 2 (bad input) or 1 (a run that stopped and says why); anything else is a bug and keeps its traceback.
More error types live beside the code that raises them (ConfigError in `gpt2jax.config`, TokenizerError in
`gpt2jax.tokenizer`, GenerationError in `gpt2jax.generation.generate`, RunDirError in `gpt2jax.weights.checkpoint`).
"""
from __future__ import annotations

import sys


class UsageError(ValueError):
    """A bad command-line value (flag, path, file content). The message names it and the fix."""


class DataError(ValueError):
    """Data that cannot be used as asked: a missing or damaged shard or dataset file, an unknown data option. The
    message names the file or option and the fix. (Raised by `gpt2jax.data` and by the eval suite's tasks.)"""


class CheckpointError(ValueError):
    """Weights that cannot be loaded (a Hugging Face directory, a hub id, --init_from). The message names the
    file and the fix."""


class SaveError(RuntimeError):
    """A checkpoint could not be written (disk full, permissions). The message names the previous intact one."""


class TrainingStopped(RuntimeError):
    """Training stopped on purpose (non-finite loss, a hung step): the message says where and what to do."""


class StartupInterrupted(Exception):
    """SIGTERM/SIGINT arrived before training started: nothing needed saving, the run stops cleanly (exit 0)."""


def user_errors() -> tuple[type[BaseException], ...]:
    """The exception types whose message is the whole story (imported lazily: this module is imported first)."""
    from gpt2jax.config import ConfigError
    from gpt2jax.generation.generate import GenerationError
    from gpt2jax.tokenizer import TokenizerError

    return (UsageError, ConfigError, DataError, GenerationError, CheckpointError, TokenizerError)


def exit_code(error: BaseException) -> int:
    return 1 if isinstance(error, (SaveError, TrainingStopped)) else 2


def run_cli(main, argv=None) -> int:
    """Run `main(argv)`; returns the exit code (0, or 1/2 after printing one `error: ...` line)."""
    try:
        result = main(argv)
    except (SaveError, TrainingStopped, *user_errors()) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return exit_code(e)
    except StartupInterrupted as e:
        print(str(e), file=sys.stderr, flush=True)
        return 0
    except KeyboardInterrupt:  # Ctrl-C before a command installed its own handling (e.g. while importing jax)
        print("interrupted", file=sys.stderr, flush=True)
        return 130
    except SystemExit as e:  # argparse (exit 2 after its usage line) and mains that exit with a message
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr, flush=True)
            return 2 if e.code.startswith("error:") else 1
        return e.code or 0
    return result if isinstance(result, int) else 0
