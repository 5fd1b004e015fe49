"""The retention policy (gpt2jax/weights/retention.py) on hand-made step lists."""
import os

from gpt2jax.weights import retention


def test_keeps_the_newest_verified_the_best_and_the_step_just_written():
    steps = [10, 20, 30, 40, 50]
    assert retention.steps_to_delete(steps, steps, 50, keep=2, best=None) == [10, 20, 30]
    assert retention.steps_to_delete(steps, steps, 50, keep=2, best=20) == [10, 30]
    # an unverified step (no manifest: a save in flight or cut) is not counted among the newest kept ...
    assert retention.steps_to_delete(steps, [10, 20, 30, 50], 50, keep=2, best=None) == [10, 20, 40]
    # ... and nothing newer than the step just written is ever deleted
    assert retention.steps_to_delete(steps, steps, 30, keep=1, best=None) == [10, 20]


def test_best_step_is_the_lowest_finite_loss_newest_first():
    assert retention.best_step({10: 2.0, 20: 1.5, 30: float("nan"), 40: 1.5, 50: None}) == 40
    assert retention.best_step({10: None, 20: float("inf")}) is None


def test_rejected_keeps_the_newest_entries(tmp_path):
    paths = []
    for i, name in enumerate(["20.a", "30.b", "40.c"]):
        (path := tmp_path / name).mkdir()
        os.utime(path, ns=(i * 10**9, i * 10**9))
        paths.append(path)
    assert retention.rejected_to_delete(paths[::-1], 1) == paths[:2]
    assert retention.rejected_to_delete(paths, 5) == []
