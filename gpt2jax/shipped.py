"""Data files that ship with gpt2jax: the demo corpus and the evaluation sets, with their attribution.

They live in the checkout's `data/` (tinyshakespeare.txt, eval/..., README.md) and travel inside the package as
`gpt2jax/shipped/` (a link to `data/` in the checkout, real files in an installed wheel), so they are found the
same way from a checkout, an editable install or a `pip install gpt2jax-*.whl` anywhere:

    python -m gpt2jax.shipped                      # the directory and what is in it
    python -m gpt2jax.data.prepare --input "$(python -m gpt2jax.shipped tinyshakespeare.txt)" --out DIR --tokenizer char

`GPT2JAX_SHIPPED_DATA=DIR` points at another copy of the same layout (e.g. a shared filesystem).

The training configs ship the same way: the checkout's `configs/*.py` travel as `gpt2jax/configs/` (a link to
`configs/` in the checkout, real files in a wheel), so `python -m gpt2jax.train --config gpt2` finds `gpt2.py` by
name anywhere (`shipped_config`), and `python -m gpt2jax.shipped configs` lists them.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

DEMO_CORPUS = "tinyshakespeare.txt"
FILES = (DEMO_CORPUS, "README.md", "eval/README.md", "eval/wikitext-2/wiki.test.tokens",
         "eval/wikitext-2-raw/wiki.test.raw", "eval/lambada/lambada_test.jsonl")


def shipped_dir() -> Path:
    """The directory that holds the shipped files: beside this module (gpt2jax is a namespace package, so
    `importlib.resources.files("gpt2jax")` could merge several directories; this file's own is the one)."""
    override = os.environ.get("GPT2JAX_SHIPPED_DATA")
    return Path(override) if override else Path(__file__).parent / "shipped"


def shipped_path(relpath: str) -> Path:
    """The path of one shipped file, e.g. shipped_path("eval/lambada/lambada_test.jsonl")."""
    return shipped_dir() / relpath


def configs_dir() -> Path:
    """The shipped training configs' directory (not moved by GPT2JAX_SHIPPED_DATA: configs are code)."""
    return Path(__file__).parent / "configs"


def shipped_configs() -> dict[str, Path]:
    """{name: path} of the shipped training configs, e.g. {"gpt2": .../gpt2jax/configs/gpt2.py, ...}."""
    return {p.stem: p for p in sorted(configs_dir().glob("*.py")) if not p.name.startswith("_")}


def shipped_config(name: str) -> Path | None:
    """The shipped config called `name` ("gpt2" or "gpt2.py"), or None."""
    return shipped_configs().get(name[:-3] if name.endswith(".py") else name)


def describe_configs() -> str:
    """One line per shipped config: its name and the first line of its docstring."""
    import ast

    lines = []
    for name, path in shipped_configs().items():
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        first = doc.split("\n\n")[0].replace("\n", " ")
        lines.append(f"  {name:18s} {first[:100] + ('...' if len(first) > 100 else '')}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if args == ["configs"]:
        print(configs_dir())
        print(describe_configs())
        return 0
    if args:
        missing = [a for a in args if not shipped_path(a).is_file()]
        if missing:
            print(f"error: {', '.join(missing)} not shipped; shipped files: {', '.join(FILES)}", file=sys.stderr)
            return 2
        print("\n".join(str(shipped_path(a)) for a in args))
        return 0
    print(shipped_dir())
    for f in FILES:
        p = shipped_path(f)
        print(f"  {f:40s} {p.stat().st_size if p.is_file() else 'MISSING':>10}")
    print(f"{configs_dir()} (python -m gpt2jax.train --config <name>)")
    print(describe_configs())
    return 0


if __name__ == "__main__":
    sys.exit(main())
