"""Which checkpoints a run keeps: the retention policy, as pure functions of step numbers and losses.

Kept: the newest `keep` verified steps, the verified step with the lowest finite validation loss (with
keep_best), and always the step just written; older steps are deleted only after a newer manifest is written, so
the last good checkpoint is never rotated away, and never a step newer than the one just written. Steps moved
aside as unusable (rejected_checkpoints/) keep their newest `keep_rejected` entries.
"""
from __future__ import annotations

import math
from pathlib import Path


def best_step(val_losses: dict[int, float | None]) -> int | None:
    """The step with the lowest finite val loss (the newest of equals), or None."""
    finite = {s: v for s, v in val_losses.items() if v is not None and math.isfinite(v)}
    return min(finite, key=lambda s: (finite[s], -s)) if finite else None


def steps_to_delete(steps: list[int], verified: list[int], newest: int, keep: int, best: int | None) -> list[int]:
    """The steps to delete once `newest` has its manifest: older than it, and neither among the newest `keep`
    verified ones nor the best."""
    kept = set([s for s in verified if s <= newest][-keep:]) | {newest}
    if best is not None:
        kept.add(best)
    return [s for s in steps if s < newest and s not in kept]


def rejected_to_delete(entries: list[Path], keep_rejected: int) -> list[Path]:
    """All but the newest `keep_rejected` entries of rejected_checkpoints/ (newest: last moved there)."""
    entries = sorted(entries, key=lambda p: (p.stat().st_mtime_ns, p.name))
    return entries[: max(0, len(entries) - keep_rejected)]
