"""lm-evaluation-harness backend: run the harness's tasks on a gpt2jax model (a run directory, a Hugging Face
GPT-2 directory or a hub id), scored by our own jitted scorer and generator.

    python -m gpt2jax.eval.harness --model gpt2jax --model_args init_from=runs/my_run --tasks lambada_openai
    gpt2jax-lm-eval --model gpt2jax --model_args init_from=./gpt2,batch_size=16 --tasks wikitext,hellaswag

These take exactly `lm_eval`'s arguments: they register the model type `gpt2jax` and then run lm-eval's own
CLI (lm-eval 0.4.13 has a fixed model table and no plug-in discovery, so a bare `lm_eval --model gpt2jax` cannot
find it). From Python, importing this module registers it:

    import gpt2jax.eval.harness  # noqa: F401  (registers "gpt2jax")
    from lm_eval import simple_evaluate
    results = simple_evaluate(model="gpt2jax", model_args="init_from=runs/my_run", tasks=["lambada_openai"])

The requests are computed as lm-eval's `hf` backend computes them (tests/test_harness.py checks equality on
local tasks): loglikelihood encodes (context, continuation) with `_encode_pair` and scores the continuation
after the last max_length + 1 tokens; loglikelihood_rolling uses disjoint windows after an <|endoftext|>
prefix; generate_until decodes greedily (or samples, when the task asks) with the KV-cache generator and cuts
the text at the first stop string. Scoring is data parallel over the local devices (`gpt2jax.eval.scoring`).

model_args: init_from (required), batch_size (rows per forward pass; rounded up to a multiple of the local
device count; default 8 per device), max_length (default: the model's n_positions), max_gen_toks (default 256),
dtype (float32 | bfloat16 | float16); any other key (a typo, hf's device=...) is refused. batch_size may be given
in model_args, with --batch_size (simple_evaluate's batch_size), or both: a number wins over 'auto' or nothing, two
different numbers are refused. There is no device argument (--device is refused too): JAX picks the devices, all
local ones of its platform (JAX_PLATFORMS, CUDA_VISIBLE_DEVICES). Needs the `harness` extra:
pip install "gpt2jax[harness]"; without it the CLI prints that in one error line.
From Python, pass `bootstrap_iters=0` to simple_evaluate (or call
`multiprocessing.set_start_method("forkserver")` first): lm-eval bootstraps stderrs in a forked pool, and forking
a process with JAX's threads can deadlock. This module imports lm_eval; nothing else in gpt2jax does.
"""
from __future__ import annotations

import json
import sys

import jax
import numpy as np
from tqdm.auto import tqdm

try:  # the `harness` extra; without it main() prints how to install it (the entry point imports this module)
    import lm_eval.models  # noqa: F401  lm-eval's own table first: it is only loaded while the registry is empty
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
    from lm_eval.models.utils import normalize_gen_kwargs
    from lm_eval.utils import simple_parse_args_string
except ImportError as e:
    HARNESS_MISSING: ImportError | None = e
    TemplateLM = object  # GPT2JaxLM is still defined (never registered): the module imports, main() explains
else:
    HARNESS_MISSING = None

from gpt2jax.runtime import hostmem
from gpt2jax.config import ConfigError
from gpt2jax.eval.protocols import continuation_requests, rolling_requests
from gpt2jax.eval.windows import score_requests

MODEL_NAME = "gpt2jax"
DEFAULT_MAX_GEN_TOKS = 256
MODEL_ARGS = ("init_from", "batch_size", "max_length", "max_gen_toks", "dtype")  # what --model_args accepts
INSTALL_HINT = 'pip install "gpt2jax[harness]"'
DEVICES_HINT = ("JAX chooses the devices, not lm-eval: the backend runs data parallel over every local device of "
                "JAX's platform; pick the platform with JAX_PLATFORMS=cpu|cuda|tpu and the GPUs with "
                "CUDA_VISIBLE_DEVICES (e.g. CUDA_VISIBLE_DEVICES=3)")


def check_model_args(args: dict) -> None:
    """Refuse --model_args keys the backend does not know (a typo like max_lenght=64, or hf's device=cuda:3),
    which lm-eval would otherwise pass through and the backend silently drop."""
    unknown = [k for k in args if k not in MODEL_ARGS]
    if unknown:
        given = ", ".join(f"{k}={args[k]}" for k in unknown)
        raise ConfigError(f"unknown --model_args {given} for --model {MODEL_NAME}; it accepts "
                          f"{', '.join(MODEL_ARGS)}" + (f". {DEVICES_HINT}" if "device" in unknown else ""))
    if args.get("init_from") in (None, ""):
        raise ConfigError(f"--model {MODEL_NAME} needs --model_args init_from=<run directory | Hugging Face GPT-2 "
                          f"directory | hub id>")


def _is_auto(value) -> bool:
    return value is None or str(value).strip().startswith("auto")


def merge_batch_size(model_arg, flag):
    """batch_size may come from --model_args (batch_size=16), from --batch_size (simple_evaluate's batch_size), or
    both: a number wins over 'auto' (or nothing), two equal numbers are one, two different numbers are refused."""
    if _is_auto(flag):
        return flag if model_arg is None else model_arg
    if _is_auto(model_arg) or str(model_arg).strip() == str(flag).strip():
        return flag
    raise ConfigError(f"batch_size={model_arg} in --model_args and --batch_size {flag} disagree; give one of them")


def _batch_size(value, n_devices: int) -> int:
    """lm-eval passes --batch_size as given (an int, "4", "auto", "auto:4"); 'auto' means 8 per device."""
    text = str(value if value is not None else "auto").strip()
    try:
        size = 8 * n_devices if text.startswith("auto") else int(text)
    except ValueError:
        raise ConfigError(f"batch_size={value}: give a number of rows per forward pass or 'auto'") from None
    if size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {value}")
    return n_devices * -(-size // n_devices)


class GPT2JaxLM(TemplateLM):
    """lm-eval `LM` over a gpt2jax model. See the module docstring for the arguments."""

    def __init__(self, init_from: str | None = None, batch_size=None, max_length=None,
                 max_gen_toks=DEFAULT_MAX_GEN_TOKS, dtype: str | None = None, **unknown):
        check_model_args({"init_from": init_from, **unknown})
        super().__init__()
        from gpt2jax.eval.scoring import Scorer  # lazily: the host-memory policy must be set before JAX starts (runtime.hostmem)
        from gpt2jax.weights.load import load_model, logits_bytes  # lazily: the host-memory policy must be set before JAX starts (runtime.hostmem)

        # CPU: keep freed host memory when the scored logits are large (gpt2jax.runtime.hostmem), before JAX starts
        rows = batch_size if str(batch_size).isdigit() else 8
        hostmem.keep_freed_memory(logits_bytes(str(init_from), int(rows), int(max_length) if max_length else None))
        if jax.process_count() > 1:
            raise ConfigError("the gpt2jax harness backend runs in one process (data parallel over its local "
                              "devices); start it without jax.distributed")
        self.cfg, params, self.tokenizer = load_model(str(init_from), **({"dtype": dtype} if dtype else {}))
        if self.tokenizer.eot_id is None:
            raise ConfigError(f"{init_from}: lm-eval needs a tokenizer with an end-of-text token (GPT-2 BPE); this "
                              f"model uses the {self.tokenizer.name!r} tokenizer")
        self._max_length = int(max_length) if max_length else self.cfg.n_positions
        if not 2 <= self._max_length <= self.cfg.n_positions:
            raise ConfigError(f"max_length={max_length} must be between 2 and the model's n_positions "
                              f"({self.cfg.n_positions})")
        self._max_gen_toks = int(max_gen_toks)
        self._batch_size = _batch_size(batch_size, jax.local_device_count())
        self.scorer = Scorer(self.cfg, params, self._batch_size)
        self.params = self.scorer.params  # the generator reuses the placed copy
        self.init_from = str(init_from)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> "GPT2JaxLM":
        """lm-eval's constructor for a "key=value,..." model_args string; see create_from_arg_obj."""
        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None) -> "GPT2JaxLM":
        """lm-eval's constructor: arg_dict is --model_args, additional_config simple_evaluate's batch_size,
        max_batch_size and device (lm-eval's own would pass batch_size twice when both have one, a TypeError).
        --model_args are checked against MODEL_ARGS; batch_size is merged (merge_batch_size); device and
        max_batch_size are not used (the CLI always sends device=cuda:0; main() refuses an explicit --device)."""
        args = dict(arg_dict or {})
        check_model_args(args)
        args["batch_size"] = merge_batch_size(args.get("batch_size"), (additional_config or {}).get("batch_size"))
        return cls(**args)

    # ---- what lm-eval reads ------------------------------------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eot_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.fingerprint

    def tok_encode(self, string: str, add_special_tokens=None, **kwargs) -> list[int]:
        # '<|endoftext|>' in text is the special token, as with the hf backend's GPT-2 tokenizer
        return self.tokenizer.encode(string, allow_special=True)

    def tok_decode(self, tokens) -> str:
        return self.tokenizer.decode([t for t in tokens if t != self.eot_token_id])

    def get_model_info(self) -> dict:
        return {"model": MODEL_NAME, "init_from": self.init_from, "config": self.cfg.to_dict(),
                "devices": jax.local_device_count(), "platform": jax.devices()[0].platform}

    # ---- requests ----------------------------------------------------------------------------------------------

    def _score(self, requests, desc: str, disable_tqdm: bool) -> list[dict[str, np.ndarray]]:
        return score_requests(self.scorer, requests, self.max_length, self.batch_size,
                              progress=False if disable_tqdm else desc)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """((context, continuation), context ids, continuation ids) -> (log p(continuation), all greedy)."""
        reqs = continuation_requests([(ctx, cont) for _, ctx, cont in requests], self.max_length)
        out = []
        for (key, _, _), s in zip(requests, self._score(reqs, "loglikelihood", disable_tqdm)):
            answer = (-float(s["nll"].astype(np.float64).sum()), bool(s["greedy"].all()))
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, answer)
            out.append(answer)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Whole-document log-likelihood: disjoint max_length windows after an <|endoftext|> prefix."""
        per_doc = [rolling_requests(self.tok_encode(string), self.prefix_token_id, self.max_length)
                   for (string,) in (r.args for r in requests)]
        scored = iter(self._score([r for reqs in per_doc for r in reqs], "loglikelihood_rolling", disable_tqdm))
        out = []
        for (string,), reqs in zip((r.args for r in requests), per_doc):
            total = -sum(float(next(scored)["nll"].astype(np.float64).sum()) for _ in reqs)
            self.cache_hook.add_partial("loglikelihood_rolling", (string,), total)
            out.append(total)
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Generate until a stop string (or <|endoftext|>, or max_gen_toks), requests with equal generation
        arguments batched together, longest prompts first."""
        args = [r.args for r in requests]
        groups: dict[str, list[int]] = {}
        for i, (_, gen_kwargs) in enumerate(args):
            groups.setdefault(json.dumps(gen_kwargs, sort_keys=True, default=str), []).append(i)
        out: list[str | None] = [None] * len(args)
        bar = tqdm(total=len(args), desc="generate_until", disable=disable_tqdm)
        for indices in groups.values():
            kwargs = normalize_gen_kwargs(args[indices[0]][1], self.max_gen_toks)
            encoded = {i: self.tok_encode(args[i][0]) for i in indices}
            indices.sort(key=lambda i: -len(encoded[i]))
            for lo in range(0, len(indices), self.batch_size):
                chunk = indices[lo:lo + self.batch_size]
                for i, text in zip(chunk, self._generate([encoded[i] for i in chunk], dict(kwargs))):
                    self.cache_hook.add_partial("generate_until", args[i], text)
                    out[i] = text
                bar.update(len(chunk))
        bar.close()
        return out  # type: ignore[return-value]

    def _generate(self, prompts: list[list[int]], kwargs: dict) -> list[str]:
        from gpt2jax.generation.generate import Sampling, generate_text_ids, nonempty_prompt  # lazily: the host-memory policy must be set before JAX starts (runtime.hostmem)

        until = kwargs.pop("until", None) or []
        until = ([until] if isinstance(until, str) else list(until)) + [self.tokenizer.decode([self.eot_token_id])]
        max_new = int(kwargs.pop("max_gen_toks"))
        if max_new >= self.max_length:
            raise ConfigError(f"max_gen_toks={max_new} leaves no room for a prompt in max_length={self.max_length}")
        keep = self.max_length - max_new  # the hf backend's left truncation of the context
        prompts = [nonempty_prompt(p[-keep:], self.tokenizer) for p in prompts]
        sampling = {"temperature": float(kwargs.pop("temperature", 0.0) or 0.0) if kwargs.pop("do_sample") else 0.0}
        for name in ("top_k", "top_p", "seed"):
            if kwargs.get(name) is not None:
                sampling[name] = kwargs.pop(name)
        texts, _ = generate_text_ids(self.cfg, self.params, self.tokenizer, prompts, max_new,
                                     Sampling(stop=tuple(until), **sampling))
        return texts


def _cli_setting(args, key: str):
    """A run option as the user gave it: on the command line, else in the --config YAML, else None (lm-eval's
    EvaluatorConfig fills what is absent with its defaults: batch_size 1, device cuda:0)."""
    if vars(args).get(key) is not None:
        return vars(args)[key]
    if vars(args).get("config"):
        from lm_eval.config.evaluate_config import EvaluatorConfig

        try:
            return EvaluatorConfig.load_yaml_config(args.config).get(key)
        except Exception:  # noqa: BLE001  lm-eval reports an unreadable config itself
            return None
    return None


def _gpt2jax_cli_defaults(args) -> None:
    """For `--model gpt2jax` runs: an absent --batch_size means 'auto' (--model_args' batch_size, else 8 per device)
    rather than lm-eval's default of 1, which would contradict batch_size=16 in --model_args; --device is refused
    (JAX picks the devices)."""
    if getattr(args, "command", "run") != "run" or _cli_setting(args, "model") != MODEL_NAME:
        return
    if (device := _cli_setting(args, "device")) is not None:
        raise ConfigError(f"--device {device}: --model {MODEL_NAME} takes no device. {DEVICES_HINT}")
    if _cli_setting(args, "batch_size") is None:
        args.batch_size = "auto"


def main(argv: list[str] | None = None) -> int:
    """lm-eval's CLI with the `gpt2jax` model type registered (lm_eval.__main__.cli_evaluate, plus
    _gpt2jax_cli_defaults between parsing and running)."""
    if HARNESS_MISSING is not None:
        print(f"error: gpt2jax-lm-eval needs lm-evaluation-harness, the `harness` extra ({HARNESS_MISSING}); "
              f"install it with: {INSTALL_HINT}", file=sys.stderr)
        return 2
    import multiprocessing

    from lm_eval._cli import HarnessCLI
    from lm_eval.utils import setup_logging

    # lm-eval bootstraps metric stderrs in a multiprocessing pool; forking this process (JAX threads running)
    # can deadlock, so workers start from a clean server process instead.
    multiprocessing.set_start_method("forkserver", force=True)

    sys.argv = ["lm_eval", *(sys.argv[1:] if argv is None else argv)]
    try:
        setup_logging()
        parser = HarnessCLI()
        args = parser.parse_args()
        _gpt2jax_cli_defaults(args)
        parser.execute(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    from gpt2jax.eval.harness import main as registered_main  # the importable module registers the class once

    sys.exit(registered_main())
elif HARNESS_MISSING is None:
    register_model(MODEL_NAME)(GPT2JaxLM)
