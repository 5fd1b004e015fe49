"""What a resumed run's new settings do to its learning-rate schedule, said in one line at start-up.

A run resumed with a larger `train.max_steps` (and `optim.decay_steps` 0, which follows it) stretches the decay:
the schedule continues on a different curve from the resume step on, and the learning rate jumps there. Both
schedules are computed (`gpt2jax.training.optim.make_optimizer`), the previous one from `<run dir>/config.json`
as the last start resolved it, e.g.

    max_steps 1000 -> 2000: the cosine decay now ends at step 2000 (was 1000); the learning rate at the resume
    step 800 jumps from 9.4e-05 to 3.3e-04
"""
from __future__ import annotations

import json
from pathlib import Path

import ml_collections

from gpt2jax.training.optim import make_optimizer


def schedule_change(old_config: dict, spec, step: int) -> str | None:
    """The line for a run resumed at `step` with `spec`, trained before with `old_config` (a resolved config as
    config.json holds it); None when neither max_steps nor the schedule changed."""
    old_steps = (old_config.get("train") or {}).get("max_steps")
    old_optim = old_config.get("optim")
    if not isinstance(old_steps, int) or not isinstance(old_optim, dict):
        return None
    new_steps, new = spec.train.max_steps, spec.optim
    current = spec.config.optim.to_dict()
    # fields that only the new schema has keep their new values, so a newer schema alone changes nothing
    previous = {**current, **{k: v for k, v in old_optim.items() if k in current}}
    if old_steps == new_steps and previous == current:
        return None
    try:
        old_schedule = make_optimizer(ml_collections.ConfigDict(previous), spec.model, old_steps)[1]
        x = float(old_schedule(step))
    except Exception:  # noqa: BLE001 - a config.json this version cannot build a schedule from
        x = None
    y = float(make_optimizer(new, spec.model)[1](step))
    name = getattr(new, "schedule", "cosine")
    parts = [f"max_steps {old_steps} -> {new_steps}" if old_steps != new_steps else "optim settings changed"]
    old_end = previous.get("decay_steps")
    if name != "constant":
        if old_end != new.decay_steps:
            parts.append(f"the {name} decay now ends at step {new.decay_steps} (was {old_end})")
        else:
            parts.append(f"the {name} decay still ends at step {new.decay_steps} (optim.decay_steps is set; 0 "
                         "follows max_steps)" + (f", after which steps train at min_lr {new.min_lr:g}"
                                                 if new_steps > new.decay_steps else ""))
    if x is None:
        parts.append(f"the learning rate at the resume step {step} is {y:.3g}")
    elif abs(x - y) > 1e-6 * max(abs(x), abs(y), 1e-30):
        parts.append(f"the learning rate at the resume step {step} jumps from {x:.3g} to {y:.3g}")
    else:
        parts.append(f"the learning rate at the resume step {step} stays {y:.3g}")
    return ": ".join(parts[:2]) + "".join(f"; {p}" for p in parts[2:])


def say_schedule_change(spec, step: int, say) -> None:
    """At a resume (step > 0), before config.json is replaced: say `schedule_change`'s line, if any."""
    if step <= 0:
        return
    try:
        old = json.loads((Path(spec.run_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return
    line = schedule_change(old, spec, step) if isinstance(old, dict) else None
    if line:
        say(line)
