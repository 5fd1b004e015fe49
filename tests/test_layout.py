"""The package layout: a few files at the top, the README's map generated from the tree and current."""
import importlib.util
from pathlib import Path

from tests.conftest import REPO

spec = importlib.util.spec_from_file_location("layout", REPO / "scripts" / "layout.py")
layout = importlib.util.module_from_spec(spec)
spec.loader.exec_module(layout)

ENTRY_POINTS = {"train.py", "sample.py", "sweep.py", "scaling.py", "shipped.py"}
SHARED = {"config.py", "errors.py", "tokenizer.py"}


def test_top_level_holds_entry_points_and_a_few_shared_modules():
    top = {p.name for p in (REPO / "gpt2jax").glob("*.py")}
    assert len(top) <= 12 and top <= ENTRY_POINTS | SHARED | {"__init__.py"}, sorted(top)


def test_readme_layout_is_the_generated_one():
    current = layout.readme_section((REPO / "README.md").read_text())
    assert current is not None, "README.md lost its layout markers"
    assert current == layout.section(), "README's Layout is stale: run python scripts/layout.py --write"


def test_every_module_says_what_it_is():
    for path in (REPO / "gpt2jax").rglob("*.py"):
        assert layout.first_line(path) != "(no docstring)", path


def test_training_guide_stays_a_guide():
    """docs/training.md explains how to train; run-by-run history lives in bench/results/HISTORY.md."""
    assert len((REPO / "docs" / "training.md").read_text().splitlines()) < 250
