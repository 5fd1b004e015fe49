"""Checkpoints of a training run (orbax-checkpoint), verified against a manifest, and loading a run's weights.

A run directory `runs/<name>/` holds:
    config.json       the resolved training config (model.vocab_size filled in from the data)
    tokenizer.json    the data's tokenizer (`tokenizer.to_dict()`)
    metrics.jsonl     one JSON record per log / eval step (see gpt2jax.training.metrics)
    checkpoints/<step>/{params, train, meta, manifest.gpt2jax.json}
                      params: the model parameters; train: optimizer state, step counter, RNG key;
                      meta (JSON): step, data position, model shape and tokenizer fingerprint;
                      the manifest: size and CRC-32 of every other file of the step, and its val loss.

Saves are asynchronous (the copy off the devices blocks, the write does not). Orbax keeps no checksums, so once
a save has committed a background thread checksums its files and writes the manifest (atomically): the manifest
is the commit marker. Every restore checks the files against it and refuses non-finite arrays; a bad step is
named (step and file) and the newest good one is used instead, unless fallback is off. Kept: the newest `keep`
verified checkpoints plus the verified one with the lowest finite validation loss; older steps are deleted only
after a newer manifest is written, so the last good checkpoint is never rotated away. Steps that fail
verification when a run resumes are moved to `rejected_checkpoints/`; the newest `keep_rejected` of those are
kept (default 1), older ones deleted, saying which.

This module is the save path and the restore-with-fallback; the integrity rules (manifest, checks) are
`gpt2jax/weights/manifest.py` and the retention policy `gpt2jax/weights/retention.py`.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp

from gpt2jax.config import GPTConfig
from gpt2jax.errors import CorruptCheckpointError, RunDirError, SaveError  # noqa: F401 (ckpt_lib.X)
from gpt2jax.tokenizer import tokenizer_from_dict
from gpt2jax.weights import retention
from gpt2jax.weights.manifest import (MANIFEST_FILE, check_files, file_digests, nonfinite_leaf,  # noqa: F401
                                      read_manifest, write_manifest)
from gpt2jax.runtime.watchdog import injected_sleep

CHECKPOINT_DIR = "checkpoints"
REJECTED_DIR = "rejected_checkpoints"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
# Fields that fix parameter shapes: a checkpoint made with other values cannot be loaded into this model.
SHAPE_FIELDS = ("n_layer", "n_head", "n_embd", "n_positions", "vocab_size", "padded_vocab_size")


# RunDirError, CorruptCheckpointError: the checkpoint errors' family is in gpt2jax.errors


# orbax splits the writing of a replicated array across its replicas, slicing it with one small jit per shape;
# below this size per slice that costs more (a compile per parameter shape) than it saves.
MIN_REPLICA_SLICE_BYTES = 1 << 20


def configure_orbax() -> None:
    """Quiet orbax's per-save absl logging and keep small arrays out of replica-parallel writes."""
    logging.getLogger("absl").setLevel(logging.CRITICAL)  # failures reach the user as one message, not a log
    # a failed asynchronous write (e.g. a full disk) leaves tensorstore callbacks aimed at orbax's closed event
    # loop, and asyncio tasks whose exception nobody read: ~95 traceback lines before our one-line error
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    if sys.unraisablehook is sys.__unraisablehook__:  # only Python's own hook is replaced (pytest has its own)
        sys.unraisablehook = _quiet_closed_loop()
    ocp.type_handlers.register_type_handler(
        jax.Array, ocp.type_handlers.ArrayHandler(min_slice_bytes_for_replica_parallel=MIN_REPLICA_SLICE_BYTES),
        override=True)


def _quiet_closed_loop():
    """sys.unraisablehook that drops the "Event loop is closed" RuntimeError of a callback that tensorstore delivers
    to orbax's asyncio loop after that loop was closed (tensorstore reports it with PyErr_WriteUnraisable); the
    rest goes to Python's own hook. (Installed only over Python's own hook, never wrapping another one, such as a
    test runner's per-test hook, which could outlive its test.)"""
    def hook(unraisable):
        frames, t = [], unraisable.exc_traceback
        while t is not None:
            frames.append(t.tb_frame.f_code.co_name)
            t = t.tb_next
        if (unraisable.exc_type is RuntimeError and str(unraisable.exc_value) == "Event loop is closed"
                and "call_soon_threadsafe" in frames):
            return
        sys.__unraisablehook__(unraisable)

    hook.quiet_closed_loop = True
    return hook


def warn(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---- manifests -------------------------------------------------------------------------------------------------

def step_numbers(directory: Path) -> list[int]:
    """Committed step directories (integer names; orbax's temporary *.orbax-checkpoint-tmp* ones are not)."""
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit())


# ---- the checkpoints of one run --------------------------------------------------------------------------------

class Checkpoints:
    """The checkpoints of one run directory: verified listing and restore with fallback; asynchronous saves whose
    manifest is written in the background once orbax has committed them."""

    def __init__(self, run_dir: str | Path, keep: int = 3, keep_best: bool = True, async_save: bool = True,
                 read_only: bool = False, log: Callable[[str], None] = None, keep_rejected: int = 1):
        configure_orbax()
        self.run_dir = Path(run_dir).absolute()
        self.directory = self.run_dir / CHECKPOINT_DIR
        self.keep, self.keep_best, self.read_only, self.log = keep, keep_best, read_only, log or warn
        self.keep_rejected = keep_rejected
        self.lead = jax.process_index() == 0
        self._writer = None
        self._async = async_save
        self._pending: threading.Thread | None = None
        self._error: SaveError | None = None
        self.last_saved: int | None = None  # newest step whose manifest this process wrote (or found)
        self.manifest_seconds: list[float] = []

    # -- listing
    def steps(self) -> list[int]:
        return step_numbers(self.directory)

    def verified_steps(self) -> list[int]:
        """Steps with a manifest (their files are checked when restored)."""
        return [s for s in self.steps() if (self.directory / str(s) / MANIFEST_FILE).is_file()]

    def latest_step(self) -> int | None:
        steps = self.verified_steps() or self.steps()  # a run dir from before manifests: orbax's committed steps
        return steps[-1] if steps else None

    def best_step(self) -> int | None:
        return retention.best_step({s: (read_manifest(self.directory / str(s)) or {}).get("val_loss")
                                    for s in self.verified_steps()})

    # -- reading
    def _item(self, step: int, **items):
        handler = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
        return handler.restore(self.directory / str(step), args=ocp.args.Composite(**items))

    def meta(self, step: int) -> dict:
        return self._item(step, meta=ocp.args.JsonRestore())["meta"]

    def problem(self, step: int, restored: dict | None = None) -> str | None:
        """What is wrong with a step (naming the file), or None: its files against the manifest, or, given the
        restored trees, their finiteness. Without a manifest (a run dir from before manifests, or a kill between
        orbax's commit and the manifest) only the restored arrays can be checked."""
        if restored is not None:
            for item in ("params", "train"):
                if item in restored and (leaf := nonfinite_leaf(restored[item])):
                    return f"{item}{leaf} holds NaN or Inf"
            return None
        step_dir = self.directory / str(step)
        return check_files(step_dir) if (step_dir / MANIFEST_FILE).exists() else None

    def restore(self, step: int, abstract_params, abstract_train=None) -> dict[str, Any]:
        """Restore one step onto the shardings of the abstract trees (jax.ShapeDtypeStruct leaves with .sharding),
        after checking its files; raises CorruptCheckpointError naming the step and the file."""
        bad = self.problem(step)
        if bad is None:
            items = dict(params=ocp.args.StandardRestore(abstract_params), meta=ocp.args.JsonRestore())
            if abstract_train is not None:
                items["train"] = ocp.args.StandardRestore(abstract_train)
            try:
                restored = self._item(step, **items)
                restored = {k: restored[k] for k in items}
            except Exception as e:  # orbax / tensorstore / JSON errors of a damaged step
                bad = f"it cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})"
            else:
                bad = self.problem(step, restored)
        if bad:
            raise CorruptCheckpointError(f"checkpoint step {step} in {self.directory} is unusable: {bad}")
        return restored

    def candidates(self) -> list[int]:
        """Steps to try, in order: the verified ones newest first, then the unverified ones."""
        verified = self.verified_steps()[::-1]
        return verified + [s for s in self.steps()[::-1] if s not in verified]

    def restore_good(self, abstract_params, abstract_train=None, fallback: bool = True,
                     below: int | None = None) -> tuple[int | None, dict | None, list[tuple[int, str]]]:
        """-> (step, restored, [(rejected step, why)]): the newest step that verifies and restores.
        With fallback=False a bad first choice raises instead. `below`: only steps < below (a tighter retry)."""
        rejected = []
        for step in self.candidates():
            if below is not None and step >= below:
                continue
            try:
                return step, self.restore(step, abstract_params, abstract_train), rejected
            except CorruptCheckpointError as e:
                if not fallback:
                    raise CorruptCheckpointError(
                        f"{e}. Fallback to an older checkpoint is off (train.checkpoint_fallback=False): move the "
                        f"step aside or turn the fallback on") from None
                self.log(f"warning: {e}; trying an older checkpoint")
                rejected.append((step, str(e)))
        return None, None, rejected

    def reject(self, steps: list[int]) -> None:
        """Move steps aside to rejected_checkpoints/ (process 0), so they are neither resumed from nor overwritten;
        then keep only the newest `keep_rejected` there (each kill between orbax's commit and the manifest leaves
        one whole checkpoint), naming what was deleted."""
        if not self.lead or not steps:
            return
        target = self.run_dir / REJECTED_DIR
        target.mkdir(exist_ok=True)
        for step in steps:
            stamp, n = time.strftime('%Y%m%d-%H%M%S'), 0
            while (dest := target / (f"{step}.{stamp}" + (f".{n}" if n else ""))).exists():  # same step, same second
                n += 1
            os.replace(self.directory / str(step), dest)
            self.log(f"moved unusable checkpoint step {step} to {dest}")
        self.prune_rejected()

    def prune_rejected(self) -> None:
        """Delete all but the newest `keep_rejected` entries of rejected_checkpoints/ (newest: last moved there)."""
        target = self.run_dir / REJECTED_DIR
        if not target.is_dir():
            return
        drop = retention.rejected_to_delete(list(target.iterdir()), self.keep_rejected)
        for path in drop:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        if drop:
            self.log(f"deleted {len(drop)} older rejected checkpoint(s) ({', '.join(p.name for p in drop)}): "
                     f"train.keep_rejected={self.keep_rejected} keeps the newest in {target}")

    # -- writing
    def _checkpointer(self):
        if self._writer is None:
            handler = ocp.CompositeCheckpointHandler()
            self._writer = ocp.AsyncCheckpointer(handler) if self._async else ocp.Checkpointer(handler)
        return self._writer

    def check(self) -> None:
        """Raise the SaveError of a background save that failed (once)."""
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _save_failed(self, step: int, error: BaseException) -> SaveError:
        previous = self.last_saved if self.last_saved is not None else self.latest_step()
        intact = (f"the previous checkpoint, step {previous}, is intact" if previous is not None
                  else "no earlier checkpoint exists")
        return SaveError(f"saving the checkpoint of step {step} to {self.directory} failed: "
                         f"{type(error).__name__}: {error}; {intact}. {save_error_advice(error)}, then rerun to "
                         "resume from it")

    def save(self, step: int, params, train_state, meta: dict, val_loss: float | None = None) -> None:
        """Start saving a step (returns once the arrays are off the devices); raises SaveError for this save or
        for an earlier one that failed in the background."""
        self.wait()
        args = ocp.args.Composite(params=ocp.args.StandardSave(params), train=ocp.args.StandardSave(train_state),
                                  meta=ocp.args.JsonSave(meta))
        if self.lead:
            self.directory.mkdir(parents=True, exist_ok=True)
        try:
            self._checkpointer().save(self.directory / str(step), args=args)
        except Exception as e:
            raise self._save_failed(step, e) from None
        self._pending = threading.Thread(target=self._commit, args=(step, val_loss), name=f"commit-{step}",
                                         daemon=True)
        self._pending.start()
        if not self._async:
            self.wait()

    def _commit(self, step: int, val_loss: float | None) -> None:
        """Background: wait for orbax's commit, then (process 0) write the manifest and apply retention."""
        try:
            writer = self._checkpointer()
            if self._async:
                writer.wait_until_finished()
                writer.check_for_errors()
            injected_sleep("commit", step)
            if self.lead:
                step_dir = self.directory / str(step)
                if not step_dir.is_dir():
                    raise OSError(f"{step_dir} was not created")
                self.manifest_seconds.append(write_manifest(step_dir, step, val_loss))
                self.last_saved = step
                self._apply_retention(step)
            else:
                self.last_saved = step
        except Exception as e:
            self._error = self._save_failed(step, e)

    def _apply_retention(self, newest: int) -> None:
        """Delete what the retention policy (gpt2jax.weights.retention) no longer keeps."""
        best = self.best_step() if self.keep_best else None
        for step in retention.steps_to_delete(self.steps(), self.verified_steps(), newest, self.keep, best):
            shutil.rmtree(self.directory / str(step), ignore_errors=True)

    def wait(self) -> None:
        """Block until the last save is committed and its manifest written; raises its SaveError."""
        if self._pending is not None:
            # short joins: a signal delivered to another thread (XLA's, orbax's) does not interrupt a blocking
            # join, and the main thread must stay responsive to a second SIGTERM/SIGINT (gpt2jax.runtime.signals)
            while self._pending.is_alive():
                self._pending.join(timeout=0.1)
            self._pending = None
        self.check()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            if self._writer is not None:
                self._writer.close()
                self._writer = None


def save_error_advice(error: BaseException) -> str:
    """What to do about a failed save, from what failed (not always the disk)."""
    text = str(error)
    if isinstance(error, TimeoutError) or "Timed out" in text or "did not complete within" in text:
        return ("orbax gave up waiting for the background write: its timeout runs on the wall clock (time.time()), "
                "so a clock jump (NTP, a suspended VM) or a file system that stalled ends it early; check the clock "
                "and the file system")
    no_space = isinstance(error, OSError) and error.errno in (28, 122) or "No space left" in text
    denied = isinstance(error, PermissionError) or "Permission denied" in text or "Read-only file system" in text
    if no_space:
        return "Free disk space"
    if denied:
        return "Fix the permissions (or use a writable --config.run_root)"
    return "Check the file system"


def checkpoint_meta(step: int, cfg: GPTConfig, tokenizer, seed: int, windows_per_step: int) -> dict:
    """What a checkpoint records besides arrays. The loader is a pure function of (seed, step), so the data
    position is the step; windows_consumed says how far into the (permuted, epoch-wise) window order that is."""
    return {
        "step": step,
        "data_position": {"step": step, "seed": seed, "windows_consumed": step * windows_per_step},
        "model": cfg.to_dict(),
        "tokenizer_fingerprint": tokenizer.fingerprint,
    }


def check_compatible(run_dir: Path, saved: dict, cfg: GPTConfig, tokenizer) -> None:
    """Raise before training when the run's latest checkpoint cannot continue with this model and tokenizer."""
    diffs = [f"model.{k}: checkpoint {saved['model'].get(k)} vs config {getattr(cfg, k)}"
             for k in SHAPE_FIELDS if saved["model"].get(k) != getattr(cfg, k)]
    if saved.get("tokenizer_fingerprint") != tokenizer.fingerprint:
        diffs.append(f"tokenizer: checkpoint {saved.get('tokenizer_fingerprint')} vs data {tokenizer.fingerprint}")
    if diffs:
        raise RunDirError(
            f"run directory {run_dir} holds a checkpoint (step {saved['step']}) from an incompatible config: "
            + "; ".join(diffs)
            + ". Nothing was changed. Train this config under a new name (--config.name=<new name>), or restore the "
            "original settings to resume."
        )


def load_run(run_dir: str | Path, fallback: bool = True,
             log: Callable[[str], None] = None) -> tuple[GPTConfig, Any, Any]:
    """(GPTConfig, params, tokenizer) of a training run: the latest checkpoint that verifies, restored
    on the default device, and the tokenizer its data used. A damaged step is named and an older one used."""
    run_dir = Path(run_dir)
    if not (run_dir / CHECKPOINT_DIR).is_dir():
        from gpt2jax.weights.load import is_run_dir

        if is_run_dir(run_dir):
            raise RunDirError(f"{run_dir} is a training run with no checkpoint yet (it stopped before its first save); "
                              "rerun its training command to resume it, or pick a run that saved one")
        raise RunDirError(f"{run_dir} is not a training run directory (no {CHECKPOINT_DIR}/ inside)")
    tokenizer_path = run_dir / TOKENIZER_FILE
    if not tokenizer_path.is_file():
        raise RunDirError(f"{tokenizer_path} is missing; it is written at the start of every training run")
    try:
        tokenizer = tokenizer_from_dict(json.loads(tokenizer_path.read_text()))
    except (ValueError, KeyError, TypeError) as e:
        raise RunDirError(f"{tokenizer_path} is unreadable ({e}); copy it from the run's data directory") from None
    log = log or warn
    ckpts = Checkpoints(run_dir, read_only=True, log=log)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    for attempt in range(LIVE_RUN_RETRIES):
        listed = ckpts.candidates()
        found = _load_newest(ckpts, listed, device, fallback, log)
        if found is not None:
            cfg, params, meta = found
            if tokenizer.fingerprint != meta["tokenizer_fingerprint"]:
                raise RunDirError(f"{tokenizer_path} ({tokenizer.fingerprint}) does not match the checkpoint's "
                                  f"tokenizer ({meta['tokenizer_fingerprint']})")
            return cfg, params, tokenizer
        # nothing usable among the steps listed: a live run may have rotated them away while we read (it deletes
        # an old step right after a newer one verifies) or be writing its first one; look again
        writing = any(_modified_within(p, 60) for p in ckpts.directory.glob("*.orbax-checkpoint-tmp*"))
        if ckpts.candidates() == listed and not writing:
            break
        time.sleep(0.5 if writing else 0.0)
    raise RunDirError(f"{run_dir / CHECKPOINT_DIR} holds no usable checkpoint; train first (an interrupted first "
                      "save leaves only a *.orbax-checkpoint-tmp directory)")


LIVE_RUN_RETRIES = 20  # load_run: looks at the listing again while a live run rotates or writes (0.5 s apart)


def _modified_within(path: Path, seconds: float) -> bool:
    try:
        return path.stat().st_mtime > time.time() - seconds
    except OSError:  # renamed (committed) or deleted meanwhile
        return True


def _load_newest(ckpts: Checkpoints, steps: list[int], device, fallback: bool, log) -> tuple | None:
    """(cfg, params, meta) of the first of `steps` that verifies, or None. A step that vanished while being read
    (rotated away by a live run, which verified a newer one) ends the pass quietly: the caller lists again."""
    from gpt2jax.model import abstract_params

    for step in steps:
        try:
            try:
                meta = ckpts.meta(step)
                cfg = GPTConfig.from_dict(meta["model"])
            except Exception as e:  # a damaged meta item
                raise CorruptCheckpointError(f"checkpoint step {step} in {ckpts.directory} is unusable: "
                                             + (ckpts.problem(step) or f"its meta cannot be read ({e})")) from None
            target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                                  abstract_params(cfg))
            params = ckpts.restore(step, target)["params"]
        except CorruptCheckpointError as e:
            tried = steps[:steps.index(step)]
            if not (ckpts.directory / str(step)).is_dir() or any(s > step and s not in tried
                                                                  for s in ckpts.verified_steps()):
                return None  # rotated away (or being deleted) by a live run that verified a newer step: list again
            if not fallback:
                raise
            log(f"warning: {e}; trying an older checkpoint")
            continue
        return cfg, params, meta
    return None
