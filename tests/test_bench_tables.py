"""bench/bench_train.py's results text: the per-side table that reports --ours_variants and every torch thread
count (before 2026-12-05 those medians reached only train.json's all_ms)."""
import sys

from .conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import bench_train  # noqa: E402


def _row(part, all_ms, ref=None):
    return dict(part=part, all_ms=all_ms, ref=ref)


def test_sides_table_lists_variants_and_thread_counts_relative_to_ours():
    rows = [_row("char", {"gpt2jax": 36.0, "gpt2jax[layer_norm=autodiff]": 40.0, "torch_0t": float("nan")}),
            _row("score", {"gpt2jax": 1800.0, "transformers_1t": 2700.0, "transformers_2t": 1200.0}),
            _row("124m", {"gpt2jax": 4000.0, "torch_2t": 3000.0}, "torch_2t")]  # one side of each kind: in the main table only
    lines = bench_train.sides_table(rows).splitlines()
    assert lines[0] == "| part | side | median | speed vs gpt2jax |"
    body = lines[2:]
    assert "| char | gpt2jax[layer_norm=autodiff] | 40.0 ms/step | 0.900x |" in body
    assert "| score | transformers_2t | 1200.0 ms/call | 1.500x |" in body
    assert not any("torch_0t" in line or "| 124m |" in line for line in body)
    assert len(body) == 5


def test_sides_table_is_empty_when_every_part_timed_one_side_of_each_kind():
    rows = [_row("char", {"gpt2jax": 36.0, "torch_2t": 39.0}, "torch_2t")]
    assert bench_train.sides_table(rows) == ""
    assert "Every side" not in bench_train.results_text([dict(rows[0], **{k: v for k, v in _table_fields().items() if k != "ref"})])


def _table_fields():
    return dict(shape="s", ours_step_ms=36.0, ours_tok_s=1.0, ref_step_ms=39.0, ref_tok_s=1.0, ref="torch_2t",
                ratio=1.08, ours_mfu=0.4, ref_mfu=0.4, ours_compile_s=2.0, loads=["1/1/1"])


def test_main_table_says_when_the_reference_was_not_run():
    row = dict(part="char", **_table_fields())
    row.update(ref_step_ms=float("nan"), ref_tok_s=float("nan"), ref="torch_0t", ratio=float("nan"),
               ref_mfu=float("nan"))
    line = bench_train.table([row]).splitlines()[-1]
    assert "not run (--no_ref)" in line and "nan" not in line
    ran = bench_train.table([dict(part="char", **_table_fields())]).splitlines()[-1]
    assert "39.0 ms/step" in ran and "1.08x" in ran


def test_results_command_line_carries_the_environment_that_picks_kernels(monkeypatch):
    """XLA_FLAGS chooses XLA:CPU's matmul library; a results file timed under them must say so (on 2026-12-05
    five gemm runs differed only in XLA_FLAGS, and their train.md files read alike)."""
    monkeypatch.delenv("GPT2JAX_HOST_MALLOC", raising=False)
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert bench_train.command_line(["--only", "gemm"]) == "python bench/bench_train.py --only gemm"
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_use_onednn=true --xla_cpu_experimental_ynn_fusion_type=")
    monkeypatch.setenv("GPT2JAX_HOST_MALLOC", "system")
    assert bench_train.command_line(["--out_dir", "/tmp/a b"]) == (
        "XLA_FLAGS='--xla_cpu_use_onednn=true --xla_cpu_experimental_ynn_fusion_type=' GPT2JAX_HOST_MALLOC=system "
        "python bench/bench_train.py --out_dir '/tmp/a b'")


def test_alternate_blocks_times_no_call_right_after_the_other_side():
    """Every timed call follows a call of its own side (an untimed one opens each block), so no side is timed
    while the other's thread pool still spins; the block order flips every round."""
    log = []
    sides = {name: (lambda name=name: log.append(name)) for name in ("ours", "torch")}
    times = bench_train.alternate_blocks(sides, rounds=3, calls=2)
    assert {name: len(t) for name, t in times.items()} == {"ours": 6, "torch": 6}
    assert log == ["ours"] * 3 + ["torch"] * 3 + ["torch"] * 3 + ["ours"] * 3 + ["ours"] * 3 + ["torch"] * 3


def test_alternate_blocks_without_lead_is_call_by_call():
    log = []
    sides = {name: (lambda name=name: log.append(name)) for name in ("ours", "torch")}
    times = bench_train.alternate_blocks(sides, rounds=4, calls=1, lead=False)
    assert {name: len(t) for name, t in times.items()} == {"ours": 4, "torch": 4}
    assert log == ["ours", "torch", "torch", "ours", "ours", "torch", "torch", "ours"]


def test_products_table_lists_each_gemm_product_with_its_call_by_call_figures_when_timed():
    """The docs' claim that call-by-call alternation understated XLA rests on these figures, so train.md shows
    them (before 2026-12-06 only train.json had the per-product numbers)."""
    both = dict(ours_gflops=150.0, ref_gflops=160.0, ratio=0.9375, call_by_call_ours_gflops=120.0,
                call_by_call_ratio=0.75)
    blocks_only = dict(ours_gflops=170.0, ref_gflops=170.0, ratio=1.0)
    row = dict(part="gemm", products={"c_attn dW": both, "head fwd": blocks_only}, **_table_fields())
    lines = bench_train.products_table([row]).splitlines()
    assert lines[2:] == ["| c_attn dW | 150.0 | 160.0 | 0.94x | 120.0 | 0.75x |",
                         "| head fwd | 170.0 | 170.0 | 1.00x | - | - |"]
    assert "The gemm part's products:" in bench_train.results_text([row])
    assert bench_train.products_table([dict(part="char", **_table_fields())]) == ""


def test_runs_table_lists_every_timed_run_with_its_page_faults():
    """A median of five moves when one run faults in fresh heap; the results file shows which runs did."""
    row = dict(part="124m", run_s={"gpt2jax": [6.395, 10.874], "torch_2t": [5.496, 5.437]},
               run_faults={"gpt2jax": [100611, 537810], "torch_2t": [0, 0]}, **_table_fields())
    lines = bench_train.runs_table([row]).splitlines()
    assert lines[2:] == ["| 124m | gpt2jax | 6.395 (100611), 10.874 (537810) |", "| 124m | torch_2t | 5.496, 5.437 |"]
    assert "Every timed run:" in bench_train.results_text([row])
    assert bench_train.runs_table([dict(part="gemm", **_table_fields())]) == ""


def test_phases_table_splits_the_full_run_for_both_sides():
    phases = lambda **kw: {k: kw.get(k, 0.0) for k in bench_train.PHASES}  # noqa: E731
    full = dict(part="full", time_s=dict(ours=phases(startup=7.6, steps=97.8, evals=23.0, final=8.6, wall=138.6,
                                                     xla_compile=8.8),
                                         ref=phases(startup=1.0, steps=86.1, evals=19.0, final=3.5, wall=115.1)))
    lines = bench_train.phases_table([dict(part="char"), full]).splitlines()
    assert lines[0] == "| phase of the full run | gpt2jax s | reference s | difference s |"
    assert "| steps | 97.8 | 86.1 | +11.7 |" in lines
    assert "| wall | 138.6 | 115.1 | +23.5 |" in lines
    assert "| of which XLA compiling (ours) | 8.8 | 0.0 | +8.8 |" in lines
    assert len(lines) == 2 + len(bench_train.PHASES)
    assert bench_train.phases_table([dict(part="full")]) == ""  # a results file from before the phases were kept
