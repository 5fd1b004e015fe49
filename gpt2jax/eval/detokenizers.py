"""Invertible-style de-tokenizers: undo the whitespace tokenization of word-level benchmark files so a byte-level
BPE model sees natural text (GPT-2 paper, Sec. 3.1: "we use invertible de-tokenizers to remove as many of these
tokenization / pre-processing artifacts as possible").

OpenAI did not publish theirs. The WikiText, PTB and LAMBADA rules below are written from the published rules of
Megatron-LM `tasks/zeroshot_gpt/detokenizer.py` (the de facto reference), expressed as ordered rule tables. One
deliberate deviation, named in `PTB_RULES`: Megatron's PTB rule turns " N " into "1 " (dropping the space before
the number); we keep the space, as its WikiText rule does. CBT and the One Billion Word benchmark have no published
rules; ours are a small set of generic punctuation rules in the same style, and say so.

Each rule is (kind, pattern, replacement): kind "text" is a plain substring replacement, "regex" a re.sub. Rules
apply in order to the whole file (they see line ends).
"""
from __future__ import annotations

import re
from typing import Callable

Rule = tuple[str, str, str]

# no spaces around line ends (every space-tokenized format needs it)
LINE_END_RULES: tuple[Rule, ...] = (("text", " \n", "\n"), ("text", "\n ", "\n"))

WIKITEXT_RULES: tuple[Rule, ...] = (
    # contractions: a possessive apostrophe after a plural s ("players ' union" -> "players' union")
    ("text", "s '", "s'"),
    # (Megatron-LM's next rule, re.sub(r"/' [0-9]/", r"/'[0-9]/"), is omitted: its pattern needs literal slashes,
    # so it never matches WikiText, and when it does it writes the literal text "[0-9]".)
    # number separators: WikiText writes 1,000 as "1 @,@ 000", 3.5 as "3 @.@ 5", well-known as "well @-@ known"
    ("text", " @-@ ", "-"),
    ("text", " @,@ ", ","),
    ("text", " @.@ ", "."),
    # punctuation followed by a space loses the space before it
    ("text", " : ", ": "),
    ("text", " ; ", "; "),
    ("text", " . ", ". "),
    ("text", " ! ", "! "),
    ("text", " ? ", "? "),
    ("text", " , ", ", "),
    # brackets and quotes hug their contents (pairs are matched left to right, non-greedily)
    ("regex", r"\(\s*([^\)]*?)\s*\)", r"(\1)"),
    ("regex", r"\[\s*([^\]]*?)\s*\]", r"[\1]"),
    ("regex", r"{\s*([^}]*?)\s*}", r"{\1}"),
    ("regex", r"\"\s*([^\"]*?)\s*\"", r'"\1"'),
    ("regex", r"'\s*([^']*?)\s*'", r"'\1'"),
    # section headings "= = Name = =" -> "== Name =="
    ("text", "= = = =", "===="),
    ("text", "= = =", "==="),
    ("text", "= =", "=="),
    # degree sign
    ("text", " \u00b0 ", "\u00b0"),
    *LINE_END_RULES,
    # the number placeholder
    ("text", " N ", " 1 "),
    # possessive 's
    ("text", " 's", "'s"),
)

PTB_RULES: tuple[Rule, ...] = (
    ("text", " '", "'"),  # 's, 're, 've ... and closing quotes attach to the previous word
    *LINE_END_RULES,
    ("text", " n't", "n't"),  # "was n't" -> "wasn't"
    # the number placeholder N becomes a number. Megatron-LM writes "1 " (no leading space: "plunged1 points"),
    # which looks like a typo next to its WikiText rule " 1 "; we keep the space.
    ("text", " N ", " 1 "),
    ("text", "$ 1", "$1"),
    ("text", "# 1", "#1"),
)

# LAMBADA (OpenAI's jsonl) is already natural text; Megatron-LM's LAMBADA de-tokenizer is the identity.
LAMBADA_RULES: tuple[Rule, ...] = ()

# Generic rules for space-tokenized news / book text (CBT, One Billion Word). Not from a published source.
GENERIC_RULES: tuple[Rule, ...] = (
    ("text", " n't", "n't"),
    ("regex", r" ('s|'re|'ve|'ll|'d|'m)\b", r"\1"),
    ("regex", r" ([.,;:!?%])", r"\1"),
    ("text", "`` ", '"'),
    ("text", " ''", '"'),
    ("text", "( ", "("),
    ("text", " )", ")"),
    ("text", "$ ", "$"),
    *LINE_END_RULES,
)

DETOKENIZER_RULES: dict[str, tuple[Rule, ...]] = {
    "wikitext": WIKITEXT_RULES,
    "ptb": PTB_RULES,
    "lambada": LAMBADA_RULES,
    "generic": GENERIC_RULES,
    "none": (),
}


def apply_rules(text: str, rules: tuple[Rule, ...]) -> str:
    for kind, pattern, replacement in rules:
        if kind == "text":
            text = text.replace(pattern, replacement)
        elif kind == "regex":
            text = re.sub(pattern, replacement, text)
        else:  # pragma: no cover - the tables above are the only rules
            raise ValueError(f"unknown rule kind {kind!r}")
    return text


def get_detokenizer(name: str) -> Callable[[str], str]:
    if name not in DETOKENIZER_RULES:
        raise ValueError(f"unknown detokenizer {name!r}; valid: {sorted(DETOKENIZER_RULES)}")
    rules = DETOKENIZER_RULES[name]
    return lambda text: apply_rules(text, rules)


wikitext_detokenize = get_detokenizer("wikitext")
ptb_detokenize = get_detokenizer("ptb")
lambada_detokenize = get_detokenizer("lambada")
generic_detokenize = get_detokenizer("generic")


def count_original_tokens(text: str) -> int:
    """Word-level tokens of a whitespace-tokenized file, counting one end-of-line token per line.

    The convention of the standard WikiText and PTB sizes (WikiText-2 test 245,569; PTB test 82,430 =
    78,669 words + 3,761 line ends): perplexity per original token divides the total NLL by this count.
    """
    return len(text.split()) + text.count("\n")
