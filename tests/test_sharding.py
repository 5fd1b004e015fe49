"""One rules table, three parallelism layouts: loss and gradients equal the unsharded computation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt2jax.config import ConfigError, GPTConfig
from gpt2jax.model import GPT, init_params, mean_loss
from gpt2jax.model.sharding import (activation_context, batch_sharding, data_parallel_size, make_mesh, param_shardings,
                              resolve_mesh_shape)

CFG = GPTConfig(n_layer=2, n_head=4, n_embd=32, n_positions=16, vocab_size=61, padded_vocab_size=64)


def _loss_and_grads(params, tokens):
    return jax.value_and_grad(lambda p: mean_loss(GPT(CFG).apply({"params": p}, tokens[:, :-1]), tokens[:, 1:]))(
        params)


@pytest.mark.parametrize("sizes, dp", [
    (dict(data=-1), 8),
    (dict(data=1, fsdp=-1), 8),
    (dict(data=2, fsdp=-1, tensor=2), 4),
], ids=["dp", "fsdp", "dp_fsdp_tp"])
def test_sharded_loss_and_grads_match_one_device(sizes, dp):
    assert len(jax.devices()) == 8
    params = init_params(CFG, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (8, 16), 0, CFG.vocab_size)
    ref_loss, ref_grads = jax.jit(_loss_and_grads)(params, tokens)  # one device, no mesh

    mesh = make_mesh(sizes)
    assert data_parallel_size(mesh) == dp
    p_sh = param_shardings(CFG, mesh)
    b_sh = batch_sharding(mesh)
    with activation_context(mesh):
        step = jax.jit(_loss_and_grads, in_shardings=(p_sh, b_sh), out_shardings=(None, p_sh))
        loss, grads = step(jax.device_put(params, p_sh), jax.device_put(tokens, b_sh))
    # The layout really is sharded the way the config says.
    wte = grads["wte"]["embedding"].sharding.spec
    assert wte == jax.sharding.PartitionSpec("tensor", "fsdp")
    assert abs(float(loss) - float(ref_loss)) <= 1e-6
    for g, g0 in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(g0), rtol=1e-4, atol=1e-6)


def test_mesh_sizes_resolve_and_errors_are_clear():
    assert resolve_mesh_shape({"data": -1, "tensor": 2}, 8) == {"data": 4, "fsdp": 1, "tensor": 2}
    with pytest.raises(ConfigError, match="at most one mesh axis may be -1"):
        resolve_mesh_shape({"data": -1, "fsdp": -1}, 8)
    with pytest.raises(ConfigError, match="needs 4 devices but 8 are available"):
        resolve_mesh_shape({"data": 2, "fsdp": 2}, 8)
    with pytest.raises(ConfigError, match="not divisible by the fixed axes' product 3"):
        resolve_mesh_shape({"data": -1, "tensor": 3}, 8)
    with pytest.raises(ConfigError, match=r"unknown mesh axis \['model'\]"):
        resolve_mesh_shape({"model": 2}, 8)


def test_indivisible_parameter_is_named():
    cfg = CFG.replace(padded_vocab_size=0)  # 61 rows cannot split over 2 tensor devices
    with pytest.raises(ConfigError, match=r"\['wte'\]\['embedding'\].*size 61.*padded_vocab_size"):
        param_shardings(cfg, make_mesh({"fsdp": -1, "tensor": 2}))
