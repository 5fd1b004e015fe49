"""The model: GPT-2 in Flax (`gpt.py`), its hand-differentiated LayerNorm (`layernorm.py`) and how its parameters
and activations are laid out over a device mesh (`sharding.py`). `from gpt2jax.model import GPT, init_params` is the
public API; everything below is defined in gpt.py."""
from gpt2jax.model.gpt import (ATTENTION_BLOCK, GPT, INIT_STD, Block, CausalSelfAttention, MLP, abstract_params,
                               attention_impl, attention_scale, blocked_causal_attention, causal_mask,
                               cudnn_flash_takes, dot_product_attention, flops_per_token, hidden_init_std,
                               init_layer_caches, init_params, layer_norm, layer_norm_impl, layer_unroll,
                               logical_axes, mask_padded_vocab, mean_loss, param_count, reference_attention,
                               split_layers, token_nll)

__all__ = ["ATTENTION_BLOCK", "GPT", "INIT_STD", "Block", "CausalSelfAttention", "MLP", "abstract_params",
           "attention_impl", "attention_scale", "blocked_causal_attention", "causal_mask", "cudnn_flash_takes",
           "dot_product_attention", "flops_per_token", "hidden_init_std", "init_layer_caches", "init_params",
           "layer_norm", "layer_norm_impl", "layer_unroll", "logical_axes", "mask_padded_vocab", "mean_loss",
           "param_count", "reference_attention", "split_layers", "token_nll"]
