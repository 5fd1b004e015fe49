"""Config drift on resume: a run resumed with settings that change what it trains is refused, naming them.

A resumed run continues bitwise exactly (tests/test_resume.py) only with the settings it was trained with. The
previous start's resolved config is `<run dir>/config.json`; against it, before anything in the run dir changes:
    refused   seed, every data.*, model.* and optim.* field, train.batch_size / grad_accum (and the other batch
              sizing fields; not where batch_size_per_device / tokens_per_step derive them from the device
              count): they change the data order, the batches, the model or the updates. With
              `--config.train.allow_config_change=True` the run continues with the new values, said in one line.
    allowed   everything else, named in one note line: stop_at, logging, eval and checkpoint cadence,
              sampling, retention, the watchdog, the mesh and sharding rules, name / run_root / init_from
              (ignored on resume). max_steps, and an optim field that only follows it (a resolved decay_steps),
              pass without a note: the trainer says what a new max_steps does to the schedule.
The old config file is kept as `config.before_step<N>.json` either way (`write_run_files`).
"""
from __future__ import annotations

import json
from pathlib import Path

from gpt2jax.config import ConfigError

TRAJECTORY_SECTIONS = ("data", "model", "optim")
TRAJECTORY_FIELDS = ("seed", "train.batch_size", "train.grad_accum", "train.batch_size_per_device",
                     "train.tokens_per_step")
MAX_LISTED = 8


class ConfigDriftError(ConfigError):
    """A resume with settings that break its exact continuation, without train.allow_config_change."""


def flatten(tree, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def changes_trajectory(field: str) -> bool:
    return field in TRAJECTORY_FIELDS or field.split(".")[0] in TRAJECTORY_SECTIONS


def diff(old: dict, new: dict) -> tuple[list[str], list[str]]:
    """(trajectory changes, harmless changes) between two resolved configs, as "field old -> new" strings; fields
    that only one of them has (an older or newer schema) are skipped."""
    a, b = flatten(old), flatten(new)
    steps = (a.get("train.max_steps"), b.get("train.max_steps"))
    # sized per device / per step (gpt2jax.training.spec): batch_size and grad_accum follow the device count, so a
    # resume on another count (docs/cluster.md) re-splits the same step; that is noted, not refused
    derived = {"train.batch_size": "train.batch_size_per_device", "train.grad_accum": "train.tokens_per_step"}
    breaking, harmless = [], []
    for field in sorted(a.keys() & b.keys()):
        x, y = a[field], b[field]
        if _same(field, x, y):
            continue
        if field == "train.max_steps" or field.startswith("optim.") and (x, y) == steps:
            continue  # a longer (or shorter) run: the trainer's own line says what it does to the schedule
        line = f"{field} {x!r} -> {y!r}"
        follows_devices = field in derived and a.get(derived[field]) and a.get(derived[field]) == b.get(derived[field])
        (breaking if changes_trajectory(field) and not follows_devices else harmless).append(line)
    return breaking, harmless


def _same(field: str, x, y) -> bool:
    if x == y or (isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)) and list(x) == list(y)):
        return True
    if field == "data.dir" and isinstance(x, str) and isinstance(y, str):
        return Path(x).expanduser().resolve() == Path(y).expanduser().resolve()
    return False


def _listed(lines: list[str]) -> str:
    more = f" (and {len(lines) - MAX_LISTED} more)" if len(lines) > MAX_LISTED else ""
    return ", ".join(lines[:MAX_LISTED]) + more


def check_config_drift(run_dir: Path, new_config: dict, allow: bool, say) -> None:
    """Compare this start's resolved config with the run dir's config.json (when it has one); see the module doc."""
    try:
        old = json.loads((Path(run_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return  # a run dir from before config.json, or one being replaced: nothing to compare
    if not isinstance(old, dict):
        return
    breaking, harmless = diff(old, new_config)
    if breaking and not allow:
        raise ConfigDriftError(
            f"run directory {run_dir} was trained with other settings, which the resumed run would not continue "
            f"exactly: {_listed(breaking)}. Nothing was changed. Restore them to resume, pass "
            "--config.train.allow_config_change=True to continue with the new ones, or train under a new "
            "--config.name")
    if breaking:
        say(f"note: resuming {run_dir} with changed settings (train.allow_config_change=True), so not an exact "
            f"continuation: {_listed(breaking)}")
    if harmless:
        say(f"note: settings changed since the last start of {run_dir}: {_listed(harmless)}")
