"""What a sweep may read from a run directory: whether the run is finished, its summary (rebuilt from
metrics.jsonl and the checkpoints when summary.json is missing or incomplete), and whether it was trained with
the config the sweep asks for now.

    run_state(config)       -> ("finished" | "rebuilt" | "unfinished", summary)
    config_differences(config) -> ["optim.lr 0.003 -> 0.1", ...]: fields that change results and differ from
                              the run dir's config.json (or from a config.before_step*.json of a resumed run)
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from gpt2jax.training.drift import flatten  # the nested config as {'a.b': value}

# Fields that do not change a run's results: how it is shown, logged, checkpointed, compiled, laid out on
# devices, or where it lives. Any other difference from the run dir's config.json makes the run not current.
IGNORED_FIELDS = (
    "name", "run_root", "distributed", "mesh", "sharding_rules",
    "train.stop_at", "train.steps_per_call", "train.log_every", "train.eval_every", "train.eval_at_start",
    "train.checkpoint_every", "train.keep_checkpoints", "train.keep_best", "train.async_checkpoint",
    "train.resume", "train.allow_config_change", "train.keep_rejected", "train.sample_tokens",
    "train.sample_prompt", "train.sample_temperature", "train.sample_top_k", "train.tensorboard", "train.progress",
    "train.plot", "train.peak_flops", "train.compilation_cache_dir", "train.checkpoint_fallback",
    "train.watchdog_timeout_s", "train.watchdog_step_factor", "train.watchdog_min_s", "train.watchdog_exit",
)
SUMMARY_KEYS = ("params", "tokens", "flops", "loss", "val_loss")  # a summary without one of these is incomplete


def run_dir(config) -> Path:
    return Path(config.run_root) / config.name


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def checkpoint_steps(directory: Path) -> list[int]:
    root = directory / "checkpoints"
    return sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit()) if root.is_dir() else []


def complete(summary: dict, config) -> bool:
    return (summary.get("step") == config.train.max_steps and all(summary.get(k) is not None for k in SUMMARY_KEYS)
            and (summary.get("final") is not None or not config.train.final_eval))


def run_state(config) -> tuple[str, dict]:
    """("finished", summary) for a complete summary.json at max_steps; ("rebuilt", summary) when summary.json was
    missing or incomplete but the run reached max_steps (a checkpoint there) and metrics.jsonl holds its losses
    (and its final eval when the config has one): the summary is rebuilt from them and written; otherwise
    ("unfinished", whatever summary there is) and the run is to be trained (resumed)."""
    directory = run_dir(config)
    summary = _read_json(directory / "summary.json") or {}
    if complete(summary, config):
        return "finished", summary
    end = config.train.max_steps
    if end not in checkpoint_steps(directory):
        return "unfinished", summary
    rebuilt = rebuild_summary(config, summary)
    if rebuilt is None:
        return "unfinished", summary
    (directory / "summary.json").write_text(json.dumps(rebuilt, indent=1))
    return "rebuilt", rebuilt


def rebuild_summary(config, old: dict) -> dict | None:
    """A summary at max_steps from metrics.jsonl (losses, final eval), the config (compute) and processes.jsonl
    (wall time), keeping what an incomplete old summary had; None when metrics.jsonl lacks the losses."""
    from gpt2jax.data.shards import open_split
    from gpt2jax.training.compute import compute_summary, logged_losses, run_wall_time
    from gpt2jax.training.spec import resolve

    directory, step = run_dir(config), config.train.max_steps
    logged = logged_losses(directory, step)
    if logged["loss"] is None or logged["val_loss"] is None or (config.train.final_eval and logged["final"] is None):
        return None
    spec = resolve(config, open_split(config.data.dir, "train", config.data.tokenizer).tokenizer)
    kept = {k: v for k, v in old.items() if v is not None}
    summary = dict(run_dir=str(directory), start_step=step, max_steps=step, stopped_by=None)
    summary.update(kept)
    summary.update(step=step, stopped_early=False)
    summary.update(compute_summary(spec.model, spec.seq_len, spec.tokens_per_step, step, 0, 0.0, 0.0, None))
    for k in ("train_loop_s", "achieved_flops_per_s", "peak_flops_per_s", "mfu"):  # this process's, when known
        summary[k] = kept.get(k)
    summary.update(loss=logged["loss"], val_loss=logged["val_loss"],
                   final=logged["final"] if config.train.final_eval else kept.get("final"),
                   **run_wall_time(directory), rebuilt_from="metrics.jsonl, checkpoints, processes.jsonl")
    return summary


# ---- is the run the one the sweep asks for? -----------------------------------------------------------------

def _ignored(key: str) -> bool:
    return any(key == f or key.startswith(f + ".") for f in IGNORED_FIELDS)


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


def resolved_dict(config) -> dict:
    """The config as the trainer writes config.json (resolved against the data's tokenizer), flattened."""
    from gpt2jax.data.shards import open_split
    from gpt2jax.training.spec import resolve

    try:
        spec = resolve(config, open_split(config.data.dir, "train", config.data.tokenizer).tokenizer)
        return flatten(json.loads(spec.config.to_json_best_effort(sort_keys=True)))
    except Exception:  # noqa: BLE001 - missing data etc. is the trainer's to report; compare as written
        return flatten(json.loads(config.to_json_best_effort(sort_keys=True)))


def config_differences(config, defaults: dict | None = None) -> list[str]:
    """Fields that change results and differ between `config` and the run dir's config.json (or an older
    config.before_step*.json of a run resumed under other settings): ["optim.lr 0.003 -> 0.1", ...].
    A field the run dir's file lacks (added to the schema since) counts as equal when the requested value is its
    default (`defaults`, flattened base_config())."""
    directory = run_dir(config)
    files = sorted(directory.glob("config.before_step*.json")) + [directory / "config.json"]
    written = [d for d in (_read_json(p) for p in files if p.is_file()) if d is not None]
    if not written:
        return []
    if defaults is None:
        from gpt2jax.training.schema import base_config

        defaults = flatten(json.loads(base_config().to_json_best_effort(sort_keys=True)))
    now = resolved_dict(config)
    diffs = []
    for old in (flatten(d) for d in written):
        for key in sorted(set(now) | set(old)):
            if _ignored(key):
                continue
            if key not in old:
                if key in defaults and _same(now[key], defaults[key]):
                    continue
                diffs.append(f"{key} (not set) -> {now[key]!r}")
            elif key not in now:
                diffs.append(f"{key} {old[key]!r} -> (not set)")
            elif not _same(old[key], now[key]):
                diffs.append(f"{key} {old[key]!r} -> {now[key]!r}")
    tokenizer = _read_json(directory / "tokenizer.json")
    if tokenizer is not None:
        try:
            from gpt2jax.data.shards import open_split

            current = open_split(config.data.dir, "train", config.data.tokenizer).tokenizer.to_dict()
            if json.loads(json.dumps(current)) != tokenizer:
                diffs.append(f"the tokenizer of {config.data.dir} differs from the run's tokenizer.json")
        except Exception:  # noqa: BLE001 - unreadable data: the trainer reports it
            pass
    return list(dict.fromkeys(diffs))


def config_tag(config) -> str:
    """8 hex digits of the result-changing fields of the resolved config: the suffix of a renamed run."""
    now = resolved_dict(config)
    text = json.dumps({k: v for k, v in sorted(now.items()) if not _ignored(k)}, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:8]
