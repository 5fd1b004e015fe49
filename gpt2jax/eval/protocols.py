"""Scoring protocols. Each returns `Result`s that name the protocol, the metric and the counting convention,
because the same model gets very different numbers from each (see docs/eval.md).

- `paper_perplexity`: the GPT-2 paper's protocol (Sec. 3.1) as Megatron-LM implements it: de-tokenize the whole
  word-level test file, BPE it as one stream, score it with overlapping sliding windows, and report perplexity per
  ORIGINAL token (exp(total NLL / word-level token count)) and per BPE token.
- `lm_eval_rolling`: lm-evaluation-harness `loglikelihood_rolling`: per document, `<|endoftext|>` prefix, disjoint
  windows of the model's length (each later window conditions on the max_length tokens before its targets);
  word perplexity (words of the original document by `\\s+`), byte perplexity and bits per byte.
- `lambada`: last-BPE-token accuracy, strict whole-word greedy accuracy (Megatron-LM `--strict-lambada`),
  the same with a stop-word filter on the first predicted token, and lm-eval's `lambada_openai` accuracy and
  perplexity.
- `bits_per_byte`: enwik8 / text8 (sliding windows over the last 5M bytes / characters).
- `cbt`: Children's Book Test, each candidate scored with the rest of the sentence after the blank.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Callable, Sequence

import numpy as np

from gpt2jax.eval.detokenizers import count_original_tokens, get_detokenizer
from gpt2jax.eval.windows import Request, plan_windows, score_requests, sliding_window_nll, window_requests

LN2 = math.log(2.0)


@dataclasses.dataclass
class Result:
    protocol: str  # "paper", "lm-eval", "last-token", ...
    metric: str  # "ppl", "word_ppl", "acc", "bpb", ...
    value: float | None  # None: not computed (see note)
    count: int | None = None  # the denominator (tokens, words, bytes or examples)
    convention: str = ""  # what `count` counts
    note: str = ""


def _stream(tokenizer, text: str) -> tuple[np.ndarray, bool]:
    """BPE ids of text as one stream, prefixed with <|endoftext|> when the tokenizer has one (then every token of
    the text is a target; otherwise the first token is context only)."""
    ids = tokenizer.encode(text)
    if tokenizer.eot_id is not None:
        return np.asarray([tokenizer.eot_id] + ids, np.int32), True
    return np.asarray(ids, np.int32), False


def paper_perplexity(scorer, tokenizer, text: str, *, detokenizer: str, n_ctx: int, stride: int,
                     count_words: Callable[[str], int] = count_original_tokens,
                     convention: str = "words + one end-of-line token per line", progress=False) -> list[Result]:
    n_original = count_words(text)
    stream, prefixed = _stream(tokenizer, get_detokenizer(detokenizer)(text))
    nll = sliding_window_nll(scorer.nll_fn, stream, n_ctx, stride, scorer.batch_size, progress=progress)
    total = float(nll.sum())
    how = (f"sliding window n_ctx={n_ctx} stride={stride} (each target has >= {n_ctx - stride} tokens of "
           f"context); {detokenizer} de-tokenizer; " + ("<|endoftext|> prefix" if prefixed else "no prefix"))
    return [
        Result("paper", "ppl", math.exp(total / n_original), n_original, f"original tokens: {convention}", how),
        Result("paper", "ppl_bpe", math.exp(total / len(nll)), len(nll), "BPE tokens of the de-tokenized text", how),
    ]


def bits_per_byte(scorer, tokenizer, data: bytes, *, n_ctx: int, stride: int, unit: str = "byte",
                  progress=False) -> list[Result]:
    """Bits per byte (enwik8) or per character (text8, where characters are bytes) of raw data."""
    text = data.decode("utf-8", errors="replace")  # a cut through a multi-byte character becomes U+FFFD
    stream, prefixed = _stream(tokenizer, text)
    nll = sliding_window_nll(scorer.nll_fn, stream, n_ctx, stride, scorer.batch_size, progress=progress)
    how = f"sliding window n_ctx={n_ctx} stride={stride}; " + ("<|endoftext|> prefix" if prefixed else "no prefix")
    metric = "bpb" if unit == "byte" else "bpc"
    return [Result("paper", metric, float(nll.sum()) / (len(data) * LN2), len(data), f"{unit}s of the test data",
                   how)]


# ---- lm-evaluation-harness loglikelihood_rolling ------------------------------------------------------------

def rolling_requests(tokens: Sequence[int], prefix_id: int, max_len: int) -> list[Request]:
    """lm-eval's disjoint rolling windows for one document, as `Request`s.

    Its targets are the document's tokens in disjoint chunks of max_len; each chunk is predicted from the max_len
    tokens before its last target (the first from <|endoftext|> + the chunk). That is exactly `plan_windows`
    with stride = n_ctx = max_len on the stream [prefix] + tokens.
    """
    stream = np.asarray([prefix_id] + list(tokens), np.int32)
    if len(stream) < 2:
        return []
    return list(window_requests(stream, plan_windows(len(stream), max_len, max_len)))


def words_of(doc: str) -> int:
    """lm-eval's word count: `len(re.split(r"\\s+", doc))` (a leading space gives an empty first word)."""
    return len(re.split(r"\s+", doc))


def lm_eval_rolling(scorer, tokenizer, docs: Sequence[str], *, detokenizer: str, n_ctx: int,
                    progress=False) -> list[Result]:
    if tokenizer.eot_id is None:
        return [Result("lm-eval", "word_ppl", None, note="not applicable: the tokenizer has no <|endoftext|>")]
    detok = get_detokenizer(detokenizer)
    per_doc = [rolling_requests(tokenizer.encode(detok(d)), tokenizer.eot_id, n_ctx) for d in docs]
    flat = [r for reqs in per_doc for r in reqs]
    scored = score_requests(scorer, flat, n_ctx, scorer.batch_size, progress=progress)
    loglik = -sum(float(s["nll"].astype(np.float64).sum()) for s in scored)
    words = sum(words_of(d) for d in docs)
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    how = f"{len(docs)} documents, max_length={n_ctx}, {detokenizer} de-tokenizer, <|endoftext|> prefix"
    return [
        Result("lm-eval", "word_ppl", math.exp(-loglik / words), words, r"words of the original documents by \s+", how),
        Result("lm-eval", "byte_ppl", math.exp(-loglik / n_bytes), n_bytes, "UTF-8 bytes of the original documents",
               how),
        Result("lm-eval", "bits_per_byte", -loglik / n_bytes / LN2, n_bytes, "UTF-8 bytes of the original documents",
               how),
    ]


def wikitext_pages(raw_text: str) -> list[str]:
    """Split a WikiText raw file into articles the way EleutherAI/wikitext_document_level does (the dataset lm-eval's
    `wikitext` task reads): a new page starts at each top-level heading line " = Title = "; pages are their lines
    joined with "\\n". WikiText-2 test: 62 pages."""
    pages, current = [], []
    for line in raw_text.split("\n"):
        squeezed = line.replace("= = =", "===").replace("= =", "==").strip()
        if squeezed.startswith("= ") and squeezed.endswith(" ="):
            if "\n".join(current).strip():
                pages.append("\n".join(current))
            current = []
        current.append(line)
    if "\n".join(current).strip():
        pages.append("\n".join(current))
    return pages


# ---- continuation scoring (LAMBADA, CBT) --------------------------------------------------------------------

def continuation_requests(pairs: Sequence[tuple[Sequence[int], Sequence[int]]], n_ctx: int) -> list[Request]:
    """(context ids, continuation ids) -> requests scoring the continuation, the context cut from the left to fit
    (lm-eval `_loglikelihood_tokens`: the last n_ctx + 1 tokens, inputs all but the last)."""
    out = []
    for ctx, cont in pairs:
        if not 0 < len(cont) <= n_ctx or not ctx:
            raise ValueError(f"continuation of {len(cont)} tokens after {len(ctx)} context tokens does not fit "
                             f"a window of {n_ctx}")
        whole = np.asarray(list(ctx) + list(cont), np.int32)[-(n_ctx + 1):]
        out.append(Request(whole[:-1], whole[1:], len(cont)))
    return out


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's `_encode_pair`: trailing spaces of the context move to the continuation, the pair is encoded
    whole and the continuation is what follows the context's own encoding."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tokenizer.encode(context + continuation)
    ctx = tokenizer.encode(context)
    return ctx, whole[len(ctx):]


# Common English function words (articles, pronouns, prepositions, conjunctions, auxiliaries): the candidates a
# stop-word filter removes. Ours; the GPT-2 paper does not publish its list.
STOP_WORDS = frozenset("""
a an the and or but nor so yet if then than that this these those there here what which who whom whose when where
why how i me my mine myself you your yours yourself he him his himself she her hers herself it its itself we us our
ours ourselves they them their theirs themselves of in on at by for with about against between into through during
before after above below to from up down out off over under again further once all any both each few more most
other some such no not only own same too very can will just should would could might must shall may is am are was
were be been being have has had having do does did doing as until while because s t don now
""".split())


def stop_word_ids(tokenizer) -> list[int]:
    """Token ids that are a whole stop word after a space (" the", " The", ...): what the filter bans."""
    ids = set()
    for word in STOP_WORDS:
        for form in (word, word.capitalize()):
            enc = tokenizer.encode(" " + form)
            if len(enc) == 1:
                ids.add(enc[0])
    return sorted(ids)


def lambada(scorer, tokenizer, texts: Sequence[str], *, n_ctx: int, progress=False) -> list[Result]:
    """All LAMBADA metrics. `scorer` must have been built with banned_ids=stop_word_ids(tokenizer)."""
    n = len(texts)
    # last BPE token: the whole text, predict its final token (Megatron-LM without --strict-lambada)
    last = []
    for t in texts:
        ids = tokenizer.encode(t)
        last.append((ids[:-1], ids[-1:]))
    # strict whole word (Megatron-LM --strict-lambada): context = text before the last word, stripped
    strict = []
    for t in texts:
        word = t.split()[-1]
        strict.append((tokenizer.encode(t[:t.rfind(word)].strip()), tokenizer.encode(" " + word)))
    # lm-eval lambada_openai: context = text.rsplit(" ", 1)[0], target = " " + last piece, encoded as a pair
    lm = [encode_pair(tokenizer, t.rsplit(" ", 1)[0], " " + t.rsplit(" ", 1)[1]) for t in texts]

    reqs = continuation_requests(last + strict + lm, n_ctx)
    scored = score_requests(scorer, reqs, n_ctx, scorer.batch_size, progress=progress)
    s_last, s_strict, s_lm = scored[:n], scored[n:2 * n], scored[2 * n:]
    acc = lambda flags: 100.0 * float(np.mean(flags))  # noqa: E731
    lm_loglik = np.array([-s["nll"].astype(np.float64).sum() for s in s_lm])
    filtered = [bool(s["greedy_filtered"][0] and s["greedy"][1:].all()) for s in s_strict]
    examples = f"{n} examples"
    return [
        Result("last-token", "acc", acc([bool(s["greedy"][0]) for s in s_last]), n, examples,
               "greedy prediction of the text's last BPE token"),
        Result("strict", "acc", acc([bool(s["greedy"].all()) for s in s_strict]), n, examples,
               "every BPE token of the last word greedy (Megatron-LM --strict-lambada)"),
        Result("stopword-filter", "acc", acc(filtered), n, examples,
               f"strict, with {len(STOP_WORDS)} stop words banned from the first predicted token"),
        Result("lm-eval", "acc", acc([bool(s["greedy"].all()) for s in s_lm]), n, examples,
               "lambada_openai: greedy whole target (' ' + last space-separated piece)"),
        Result("lm-eval", "ppl", math.exp(-lm_loglik.mean()), n, examples,
               "lambada_openai: exp(-mean log p(target | context)) over examples"),
    ]


# ---- CBT ------------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class CBTExample:
    context: list[str]  # the 20 story sentences
    query: str  # the 21st sentence, with XXXXX for the blank
    answer: str
    candidates: list[str]


def parse_cbt(text: str) -> list[CBTExample]:
    """The CBT file format: numbered lines "1 ..." to "20 ...", then "21 query\\tanswer\\t\\tc1|c2|...", blank line."""
    examples, context = [], []
    for line in text.split("\n"):
        if not line.strip():
            continue
        number, _, rest = line.partition(" ")
        if "\t" in rest:
            query, answer, _, candidates = rest.split("\t")[:4]
            examples.append(CBTExample(context, query, answer, [c for c in candidates.split("|") if c]))
            context = []
        elif number.isdigit():
            context.append(rest)
        else:
            raise ValueError(f"not a CBT line: {line[:80]!r}")
    return examples


def cbt(scorer, tokenizer, examples: Sequence[CBTExample], *, n_ctx: int, progress=False) -> list[Result]:
    """Pick the candidate that makes "candidate + rest of the sentence" most likely after the story and the
    sentence's beginning (GPT-2 paper, Sec. 3.2)."""
    detok = get_detokenizer("generic")
    pairs, owners = [], []
    for i, ex in enumerate(examples):
        head, _, tail = ex.query.partition("XXXXX")
        context = detok(" ".join(ex.context) + " " + head).rstrip()
        for cand in ex.candidates:
            ctx, cont = encode_pair(tokenizer, context, " " + detok(cand + tail).strip())
            pairs.append((ctx, cont))
            owners.append((i, cand))
    scored = score_requests(scorer, continuation_requests(pairs, n_ctx), n_ctx, scorer.batch_size, progress=progress)
    best: dict[int, tuple[float, str]] = {}
    for (i, cand), s in zip(owners, scored):
        loglik = -float(s["nll"].astype(np.float64).sum())
        if i not in best or loglik > best[i][0]:
            best[i] = (loglik, cand)
    correct = [best[i][1] == ex.answer for i, ex in enumerate(examples)]
    return [Result("paper", "acc", 100.0 * float(np.mean(correct)), len(examples), f"{len(examples)} examples",
                   "candidate + rest of the sentence, scored after the 20-sentence story (generic de-tokenizer)")]
