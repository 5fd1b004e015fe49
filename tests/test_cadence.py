"""Periodic actions are declared once (gpt2jax.training.loop.periodic_actions): a new action with its `<name>_every`
field runs on its steps, and the multi-step calls line up with it without any other change."""
import jax

from gpt2jax.train import parse_config, train
from gpt2jax.training import cadence, loop
from gpt2jax.training.cadence import Action

from tests.conftest import REPO


def test_a_new_periodic_action_is_one_entry_and_one_field(char_data, tmp_path, monkeypatch):
    """The worked example of docs/training.md ("Adding a periodic action"), with a probe in place of the zero-shot
    suite: it runs exactly every 4 steps, the calls of several steps end on those steps, and eval and checkpoint
    keep their own steps."""
    c = parse_config(["train", "--config", str(REPO / "configs" / "tiny_test.py")])
    c.data.dir, c.run_root, c.name = str(char_data), str(tmp_path), "run"
    with c.unlocked():
        c.train.probe_every = 4  # the new field (base_config would hold its default)
    c.train.update(max_steps=12, eval_every=6, log_every=6, steps_per_call=0)
    seen = []
    ordinary = loop.periodic_actions

    def with_probe(run):  # the one-line change: an Action appended to the list
        return ordinary(run) + [Action("probe", run.spec.train.probe_every,
                                       lambda run, watchdog, done: seen.append((run.step, sorted(done))))]

    monkeypatch.setattr(loop, "periodic_actions", with_probe)
    summary = train(c, devices=jax.devices()[:1])
    assert summary["step"] == 12
    # steps 4, 8, 12; at 12 eval and checkpoint ran first (the order of the list)
    assert seen == [(4, []), (8, []), (12, ["checkpoint", "eval"])]
    assert cadence.cadence(c.train) == 2  # gcd(eval 6, checkpoint 0 -> eval, probe 4, stop_at 0)


def test_periods_and_due_steps():
    t = parse_config(["train", "--config", str(REPO / "configs" / "tiny_test.py")]).train
    assert set(cadence.periods(t)) >= {"log", "eval", "checkpoint"}
    action = Action("eval", 10, print, also_at=(25,))
    assert [s for s in range(1, 31) if action.due(s)] == [10, 20, 25, 30]
    assert not Action("never", 0, print).due(10)
