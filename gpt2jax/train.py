"""Train a GPT-2: `python -m gpt2jax.train --config configs/default.py [--config.train.max_steps=500 ...]`.

The command line: parse the config file and its `--config.<section>.<field>=value` overrides, join a multi-process
job when `distributed.enabled`, and hand the config to the training loop (`gpt2jax.training.loop.train`, also
importable from here). What a run does, in order, is described in `gpt2jax/training/loop.py`.
"""
from __future__ import annotations

if __name__ == "__main__":  # a stop signal while the libraries below import: nothing started, one line, exit 3
    import os as _os
    import signal as _signal

    def _stopped_while_importing(signum, frame):  # (errors.STOPPED_EXIT_CODE; gpt2jax.errors is not imported yet)
        _os.write(2, f"{_signal.Signals(signum).name} during start-up (importing): stopped before training; nothing "
                     "needed saving\n".encode())
        _os._exit(3)

    for _sig in (_signal.SIGTERM, _signal.SIGINT, _signal.SIGUSR1, _signal.SIGHUP):
        _signal.signal(_sig, _stopped_while_importing)

import sys
from pathlib import Path

import jax

from gpt2jax import shipped
from gpt2jax.errors import STOPPED_EXIT_CODE, DataError, run_cli
from gpt2jax.runtime import hostmem
from gpt2jax.training.loop import __doc__ as LOOP_DOC
from gpt2jax.training.loop import train
from gpt2jax.config import ConfigError
from gpt2jax.training.schema import base_config

def unknown_field(argv: list[str]) -> str | None:
    """The first `--config.<path>=...` override that names no field of the config file (loaded without the
    overrides), as one line with the nearest field name; None if every path exists."""
    import difflib

    from absl import flags
    from ml_collections import config_flags

    config_args = [a for i, a in enumerate(argv) if a.startswith("--config=")
                   or a == "--config" or (i and argv[i - 1] == "--config")]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True, sys_argv=config_args)
    try:
        fv(argv[:1] + config_args)
    except Exception:  # noqa: BLE001 - the caller reports the original error
        return None
    for a in argv[1:]:
        if not a.startswith("--config."):
            continue
        parts, node = a.split("=", 1)[0][len("--config."):].split("."), fv.config
        for i, part in enumerate(parts):
            if not hasattr(node, "keys"):
                return (f"--config.{'.'.join(parts)}: {'.'.join(parts[:i])} is a field, not a section; set it with "
                        f"--config.{'.'.join(parts[:i])}=<value>")
            if part not in node.keys():
                near = difflib.get_close_matches(part, list(node.keys()), n=1)
                hint = f" (did you mean --config.{'.'.join(parts[:i] + near)}?)" if near else ""
                return f"unknown config field --config.{'.'.join(parts)}{hint}"
            node = node[part]
    return None


def parse_config(argv: list[str]):
    """`--config <file>[:arg] --config.x.y=value ...` -> ConfigDict (a fresh FlagValues, so tests can parse twice).
    Raises ConfigError (one line) for a missing config file, an unknown field or a value of the wrong type."""
    from absl import flags
    from ml_collections import config_flags


    if not any(a == "--config" or a.startswith("--config=") for a in argv[1:]):
        raise ConfigError("--config is missing: python -m gpt2jax.train --config <config name or file.py> "
                          "[--config.<section>.<field>=<value> ...]; shipped configs: "
                          f"{', '.join(shipped.shipped_configs())} (--help describes them and lists the fields)")
    argv = check_config_file(argv)
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "training config file (configs/*.py)", flag_values=fv,
                                    lock_config=True, sys_argv=argv)
    try:
        fv(argv)
        config = fv.config
    except flags.Error as e:
        raise ConfigError(f"{str(e).splitlines()[0]}; see python -m gpt2jax.train --help for the fields") from None
    except (AttributeError, KeyError, TypeError) as e:  # ml_collections: a path that names no field
        what = unknown_field(argv) or f"unknown config field ({type(e).__name__}: {str(e).splitlines()[0]})"
        raise ConfigError(f"{what}; python -m gpt2jax.train --help lists the fields") from None
    except (SyntaxError, ImportError) as e:
        raise ConfigError(f"the config file cannot be loaded: {type(e).__name__}: {e}") from None
    if config is None:
        raise SystemExit("usage: python -m gpt2jax.train --config <name or file.py> [--config.<field>=<value> ...]\n"
                         f"shipped configs (--config <name>; the files are in {shipped.configs_dir()}):\n"
                         + shipped.describe_configs())
    return config


def check_config_file(argv: list[str]) -> list[str]:
    """The --config value must be an existing Python file with get_config() (ml_collections defers the error), or
    the name of a shipped config (`--config gpt2[:variant]`, gpt2jax/configs/), which is replaced by its path.
    -> argv with names replaced."""
    argv, i = list(argv), 0
    while i < len(argv):
        a = argv[i]
        if a == "--config" or a.startswith("--config="):
            value = a.split("=", 1)[1] if "=" in a else (argv[i + 1] if i + 1 < len(argv) else "")
            name, colon, variant = value.partition(":")
            path = Path(name)
            if not path.is_file() and "/" not in name and (found := shipped.shipped_config(name)) is not None:
                path, value = found, f"{found}{colon}{variant}"
                argv[i:i + 1 + ("=" not in a)] = [f"--config={value}"]
            if not path.is_file():
                raise ConfigError(f"--config {value!r}: no such file (or a directory), and no shipped config of that "
                                  f"name; pass a config file or one of {', '.join(shipped.shipped_configs())}")
            if "def get_config" not in path.read_text(errors="replace"):
                raise ConfigError(f"--config {path} defines no get_config(); pass a config file such as "
                                  "configs/default.py")
        i += 1
    return argv


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv if argv is None else argv)
    if any(a in ("-h", "--help", "--helpfull") for a in argv[1:]):
        print(__doc__)
        print(LOOP_DOC)
        print(f"Shipped configs (--config <name>[:variant], or --config <your file.py>; in {shipped.configs_dir()}):")
        print(shipped.describe_configs() + "\n")
        print("Config fields (override any with --config.<section>.<field>=value):")

        print(base_config())
        return {}

    try:
        hostmem.choice()  # a bad GPT2JAX_HOST_MALLOC fails before any work
        config = parse_config(argv)
        d = config.distributed
        if d.enabled:  # before any JAX computation
            jax.distributed.initialize(coordinator_address=d.coordinator_address or None,
                                       num_processes=d.num_processes or None,
                                       process_id=None if d.process_id < 0 else d.process_id,
                                       initialization_timeout=d.initialization_timeout)
        return train(config)
    except (ConfigError, DataError) as e:
        raise SystemExit(f"error: {e}") from None


def cli(argv: list[str] | None = None) -> int:
    """`main` for the command line: the exit code is 3 (errors.STOPPED_EXIT_CODE) when a signal stopped the run
    before max_steps (checkpoint saved; rerun to resume), so `train && eval` does not go on with a partial model."""
    summary = main(argv)
    if summary.get("stopped_by") and summary.get("stopped_early"):
        print(f"stopped early by {summary['stopped_by']} at step {summary['step']} of {summary['max_steps']} "
              f"(checkpoint saved): exit {STOPPED_EXIT_CODE}; rerun the same command to resume", file=sys.stderr,
              flush=True)
        return STOPPED_EXIT_CODE
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(cli))
