"""gpt2jax.studies.lr_transfer: best lr per width, its spread across widths, a best at the edge of the lrs tried
(flagged: the spread is then a lower bound, not a measurement), and the seed count of each cell."""
import json

from gpt2jax.studies import lr_transfer


def test_best_lr_per_width_spread_edges_and_seed_counts():
    data = {"sp": {32: {1e-3: [2.6, 2.7], 2e-3: [2.4, 2.5], 4e-3: [2.5, 2.6]},
                   512: {1e-3: [2.3], 2e-3: [2.35, 2.37], 4e-3: [float("inf"), float("inf")]}},
            "mup": {32: {1e-3: [2.6, 2.6], 2e-3: [2.4, 2.4], 4e-3: [2.5, 2.5]},
                    512: {1e-3: [2.5, 2.5], 2e-3: [2.3, 2.3], 4e-3: [2.4, 2.4]}}}
    result = lr_transfer.analyse(data)
    sp, mup = result["sp"], result["mup"]
    assert sp["best"] == {32: 2e-3, 512: 1e-3} and sp["spread_steps"] == 1
    assert sp["edge"] == {32: "", 512: "lowest"}  # a diverged lr (inf) counts as tried: 4e-3 is not the edge
    assert mup["best"] == {32: 2e-3, 512: 2e-3} and mup["spread_steps"] == 0 and not any(mup["edge"].values())
    assert sp["seeds"][512] == {1e-3: 1, 2e-3: 2, 4e-3: 2}
    text = lr_transfer.markdown(result, "final val loss")
    assert ("## sp: best lr per width 32: 0.002, 512: 0.001 (lowest tried); spread 1 grid step(s) or more: the best "
            "lr of width(s) 512 is at the edge of the lrs tried there, extend the grid") in text
    assert "## mup: best lr per width 32: 0.002, 512: 0.002; spread 0 grid step(s)\n" in text
    assert "| 512 | **2.3000 (1)** | 2.3600 | inf |" in text  # one seed of two: said in the cell


def test_from_runs_reads_finished_summaries_only(tmp_path):
    def run(name, step, max_steps, loss):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps(
            {"step": step, "max_steps": max_steps, "final": {"val_loss": loss} if loss is not None else None}))

    run("parametrization=mup,n_embd=64,lr=0.008,seed=0", 300, 300, 2.5)
    run("parametrization=mup,n_embd=64,lr=0.008,seed=1", 300, 300, 2.7)
    run("parametrization=mup,n_embd=64,lr=0.016,seed=0", 120, 300, 2.1)  # stopped: no result
    run("parametrization=sp,n_embd=64,lr=0.016,seed=0", 300, 300, None)  # no final eval: no result
    assert lr_transfer.load_runs(tmp_path) == {"mup": {64: {0.008: [2.5, 2.7]}}}
    result = lr_transfer.main([str(tmp_path), "--from_runs"])
    assert result["mup"]["mean"][64][0.008] == 2.6
    assert (tmp_path / "lr_transfer.png").stat().st_size > 0 and "2.6000" in (tmp_path / "lr_transfer.md").read_text()
