"""Data files that ship with gpt2jax: the demo corpus and the evaluation sets, with their attribution.

They live in the checkout's `data/` (tinyshakespeare.txt, eval/..., README.md) and travel inside the package as
`gpt2jax/shipped/` (a link to `data/` in the checkout, real files in an installed wheel), so they are found the
same way from a checkout, an editable install or a `pip install gpt2jax-*.whl` anywhere:

    python -m gpt2jax.shipped                      # the directory and what is in it
    python -m gpt2jax.data.prepare --input "$(python -m gpt2jax.shipped tinyshakespeare.txt)" --out DIR --tokenizer char

`GPT2JAX_SHIPPED_DATA=DIR` points at another copy of the same layout (e.g. a shared filesystem).
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


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        print(__doc__)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
