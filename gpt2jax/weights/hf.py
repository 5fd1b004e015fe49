"""Hugging Face interop without torch: official GPT-2 weights in, gpt2jax weights out.

A Hugging Face GPT-2 directory is `config.json` + `model.safetensors`. HF's GPT-2 uses `Conv1D` layers whose
weight is stored (in_features, out_features) — already the layout of a Flax Dense kernel — so every tensor maps by
name and a plain copy; only the per-layer tensors `h.{i}.*` are stacked into our scanned `h` (leading layer axis).
(A torch `nn.Linear` would need a transpose; GPT-2's only Linear, `lm_head`, is tied to `wte` and not stored.)
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from gpt2jax.config import GPT2_PRESETS, GPTConfig
from gpt2jax.errors import CheckpointError
from gpt2jax.model import abstract_params

# Our leaf path inside one block  <->  HF tensor name inside `h.{i}.`
BLOCK_TENSORS = {
    ("ln_1", "scale"): "ln_1.weight",
    ("ln_1", "bias"): "ln_1.bias",
    ("attn", "c_attn", "kernel"): "attn.c_attn.weight",
    ("attn", "c_attn", "bias"): "attn.c_attn.bias",
    ("attn", "c_proj", "kernel"): "attn.c_proj.weight",
    ("attn", "c_proj", "bias"): "attn.c_proj.bias",
    ("ln_2", "scale"): "ln_2.weight",
    ("ln_2", "bias"): "ln_2.bias",
    ("mlp", "c_fc", "kernel"): "mlp.c_fc.weight",
    ("mlp", "c_fc", "bias"): "mlp.c_fc.bias",
    ("mlp", "c_proj", "kernel"): "mlp.c_proj.weight",
    ("mlp", "c_proj", "bias"): "mlp.c_proj.bias",
}
TOP_TENSORS = {
    ("wte", "embedding"): "wte.weight",
    ("wpe", "embedding"): "wpe.weight",
    ("ln_f", "scale"): "ln_f.weight",
    ("ln_f", "bias"): "ln_f.bias",
}
# Buffers some checkpoints carry that are not parameters (the causal mask of older transformers versions).
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")


def offline_help(name: str) -> str:
    return (
        f"To use {name!r} without network access, download it once on a machine that has it:\n"
        f"    huggingface-cli download {name} config.json model.safetensors --local-dir ./{name}\n"
        f"copy the folder here and pass its path instead (e.g. --init_from ./{name})."
    )


# ---- loading -----------------------------------------------------------------------------------------------

def resolve_hf_dir(path_or_id: str) -> Path:
    """A local directory as is; a hub id through huggingface_hub (its local cache first, then the network)."""
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        return path
    if path.exists() or not is_hub_id(path_or_id):
        raise CheckpointError(
            f"{path_or_id!r} is not a directory holding config.json and model.safetensors, nor a hub id "
            f"({', '.join(GPT2_PRESETS)} or owner/name)"
        )
    try:
        import huggingface_hub
    except ImportError:
        raise CheckpointError(
            f"{path_or_id!r} is not a local directory, and fetching it from the hub needs `pip install "
            f"huggingface_hub`.\n{offline_help(path_or_id)}"
        ) from None
    files = ["config.json", "model.safetensors", "model.safetensors.index.json", "model-*.safetensors"]
    try:  # already downloaded earlier? then no network at all
        return Path(huggingface_hub.snapshot_download(path_or_id, allow_patterns=files, local_files_only=True))
    except Exception:
        pass
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise CheckpointError(f"{path_or_id!r} is not in the local cache and HF_HUB_OFFLINE is set.\n"
                              f"{offline_help(path_or_id)}")
    try:
        return Path(huggingface_hub.snapshot_download(path_or_id, allow_patterns=files, etag_timeout=10))
    except Exception as e:
        raise CheckpointError(
            f"could not fetch {path_or_id!r} from the Hugging Face hub ({type(e).__name__}); are you offline?\n"
            f"{offline_help(path_or_id)}"
        ) from None


def config_from_hf(hf_config: dict[str, Any], **overrides) -> GPTConfig:
    act = hf_config.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise CheckpointError(f"activation_function={act!r} is not GPT-2's tanh GELU; this model cannot load it")
    if hf_config.get("scale_attn_by_inverse_layer_idx") or hf_config.get("scale_attn_weights") is False:
        raise CheckpointError("attention scaling options differ from GPT-2's; this checkpoint is not plain GPT-2")
    n_inner = hf_config.get("n_inner")
    if n_inner not in (None, 4 * hf_config["n_embd"]):
        raise CheckpointError(f"n_inner={n_inner} differs from GPT-2's 4 * n_embd; not supported")
    fields = dict(
        n_layer=hf_config["n_layer"], n_head=hf_config["n_head"], n_embd=hf_config["n_embd"],
        n_positions=hf_config.get("n_positions", hf_config.get("n_ctx", 1024)),
        vocab_size=hf_config["vocab_size"],
        layer_norm_epsilon=hf_config.get("layer_norm_epsilon", 1e-5),
    )
    return GPTConfig(**{**fields, **overrides})


def load_hf(path_or_id: str, **config_overrides) -> tuple[GPTConfig, dict[str, Any]]:
    """Load a Hugging Face GPT-2 (local dir or hub id) -> (GPTConfig, params as numpy float32).

    config_overrides set GPTConfig fields that are not in the checkpoint (dtype, attention, remat,
    padded_vocab_size: extra embedding rows are zeros and their logits are masked).
    """
    from safetensors.numpy import load_file

    directory = resolve_hf_dir(path_or_id)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{config_path} is missing: a Hugging Face GPT-2 directory needs config.json")
    cfg = config_from_hf(json.loads(config_path.read_text()), **config_overrides)
    weight_files = safetensors_files(directory)
    tensors = {}
    for path in weight_files:
        try:
            tensors.update(load_file(str(path)))
        except Exception as e:
            raise CheckpointError(f"{path} could not be read as safetensors: {e}") from None
    weights_path = weight_files[0] if len(weight_files) == 1 else directory / SHARD_INDEX
    return cfg, params_from_hf_tensors(cfg, tensors, source=str(weights_path))


SHARD_INDEX = "model.safetensors.index.json"


def safetensors_files(directory: Path) -> list[Path]:
    """model.safetensors, or the shards that model.safetensors.index.json lists (save_pretrained splits > 5 GB)."""
    single, index = directory / "model.safetensors", directory / SHARD_INDEX
    if single.is_file():
        return [single]
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [s for s in shards if not (directory / s).is_file()]
        if missing:
            raise CheckpointError(f"{index} lists shards that are missing: {missing}")
        return [directory / s for s in shards]
    hint = " (found pytorch_model.bin: re-save it with `save_pretrained(dir, safe_serialization=True)`)" \
        if (directory / "pytorch_model.bin").exists() else ""
    raise CheckpointError(f"{single} is missing{hint}; gpt2jax reads safetensors only")


def params_from_hf_tensors(cfg: GPTConfig, tensors: dict[str, np.ndarray], source: str = "checkpoint"):
    tensors = {k.removeprefix("transformer."): v for k, v in tensors.items() if not k.endswith(IGNORED_SUFFIXES)}
    lm_head = tensors.pop("lm_head.weight", None)

    def take(name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in tensors:
            raise CheckpointError(f"{source} has no tensor {name!r}: not a GPT-2 checkpoint of this config")
        value = np.asarray(tensors.pop(name), dtype=np.float32)
        if value.shape != shape:
            raise CheckpointError(f"{source}: tensor {name!r} has shape {value.shape}, expected {shape}")
        return value


    shapes = abstract_params(cfg.replace(padded_vocab_size=0))
    params: dict[str, Any] = {}
    for path, hf_name in TOP_TENSORS.items():
        _set(params, path, take(hf_name, _get(shapes, path).shape))
    for path, hf_name in BLOCK_TENSORS.items():
        per_layer = _get(shapes["h"], path).shape[1:]
        _set(params, ("h",) + path, np.stack([take(f"h.{i}.{hf_name}", per_layer) for i in range(cfg.n_layer)]))
    if tensors:
        raise CheckpointError(f"{source} has tensors this GPT-2 does not use: {sorted(tensors)[:5]}")
    if lm_head is not None and not np.array_equal(lm_head, params["wte"]["embedding"]):
        raise CheckpointError(f"{source}: lm_head.weight differs from wte.weight; GPT-2 ties them (untied unsupported)")
    if cfg.padded_vocab_size:
        wte = params["wte"]["embedding"]
        pad = np.zeros((cfg.padded_vocab_size - wte.shape[0], wte.shape[1]), np.float32)
        params["wte"]["embedding"] = np.concatenate([wte, pad])
    return params


# ---- export ------------------------------------------------------------------------------------------------

def hf_config_dict(cfg: GPTConfig) -> dict[str, Any]:
    eot = cfg.vocab_size - 1  # GPT-2's <|endoftext|> is the last id (50256)
    return {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.n_positions,
        "n_ctx": cfg.n_positions,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": None,
        "activation_function": "gelu_new",
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout,
        "layer_norm_epsilon": cfg.layer_norm_epsilon,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "tie_word_embeddings": True,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "torch_dtype": "float32",
    }


def export_hf(cfg: GPTConfig, params, out_dir: str | os.PathLike) -> Path:
    """Write params as a Hugging Face GPT-2 directory (config.json + model.safetensors, float32).

    Padded vocabulary rows are dropped: the exported model has exactly cfg.vocab_size tokens.
    """
    from safetensors.numpy import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    params = _to_numpy(params)
    tensors: dict[str, np.ndarray] = {}
    for path, hf_name in TOP_TENSORS.items():
        tensors[f"transformer.{hf_name}"] = _get(params, path)
    tensors["transformer.wte.weight"] = tensors["transformer.wte.weight"][: cfg.vocab_size]
    for path, hf_name in BLOCK_TENSORS.items():
        stacked = _get(params["h"], path)
        for i in range(cfg.n_layer):
            tensors[f"transformer.h.{i}.{hf_name}"] = stacked[i]
    tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(hf_config_dict(cfg), indent=2) + "\n")
    return out


# ---- small tree helpers ------------------------------------------------------------------------------------

def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def _set(tree, path, value):
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _to_numpy(params):
    import jax

    return jax.tree.map(lambda x: np.asarray(jax.device_get(x), dtype=np.float32), params)


def is_hub_id(name: str) -> bool:
    """GPT-2 sizes by name, or an `owner/model` id."""
    return name in GPT2_PRESETS or (name.count("/") == 1 and not name.startswith((".", "/", "~")))
