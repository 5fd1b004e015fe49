"""Sharding, declared once: a device mesh built from per-axis sizes, and a rules table that maps the model's
logical axis names (see `model.logical_axes`) to mesh axes.

Data parallel, FSDP and tensor parallel differ only in the mesh sizes of the config:
    data parallel:  mesh = {data: -1, fsdp: 1,  tensor: 1}
    FSDP:           mesh = {data: 1,  fsdp: -1, tensor: 1}
    FSDP + TP:      mesh = {data: 1,  fsdp: -1, tensor: 2}
One size may be -1 and takes the devices left over. Model code never names a mesh axis.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from gpt2jax.config import GPT2_PADDED_VOCAB_SIZE, ConfigError, GPTConfig
from gpt2jax.model import abstract_params, logical_axes

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axis (or axes, or None = replicated). Batch is split over data and fsdp; parameters are
# split over fsdp on their embedding axis and over tensor on their wide (Megatron) axis.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("activation_batch", ("data", "fsdp")),
    ("activation_seq", None),
    ("activation_embed", None),
    ("layers", None),
    ("vocab", "tensor"),
    ("positions", None),
    ("embed", "fsdp"),
    ("qkv", "tensor"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("norm", None),
)


def normalize_rules(rules) -> tuple[tuple[str, Any], ...]:
    """Rules as read from a config (lists after JSON / ConfigDict) -> tuples that flax accepts."""
    out = []
    for logical, mesh_axes in rules:
        if isinstance(mesh_axes, (list, tuple)):
            mesh_axes = tuple(mesh_axes)
        out.append((str(logical), mesh_axes))
    return tuple(out)


def resolve_mesh_shape(sizes: Mapping[str, int], n_devices: int) -> dict[str, int]:
    """Fill the one -1 in `sizes` so the product equals n_devices; clear errors otherwise."""
    unknown = sorted(set(sizes) - set(MESH_AXES))
    if unknown:
        raise ConfigError(f"unknown mesh axis {unknown}; the mesh axes are {MESH_AXES}")
    shape = {axis: int(sizes.get(axis, 1)) for axis in MESH_AXES}
    free = [a for a, s in shape.items() if s == -1]
    if len(free) > 1:
        raise ConfigError(f"at most one mesh axis may be -1, got {free} in {shape}")
    fixed = math.prod(s for s in shape.values() if s != -1)
    if any(s == 0 or s < -1 for s in shape.values()):
        raise ConfigError(f"mesh sizes must be positive or -1, got {shape}")
    if free:
        if n_devices % fixed:
            raise ConfigError(f"mesh {shape}: {n_devices} devices are not divisible by the fixed axes' product {fixed}")
        shape[free[0]] = n_devices // fixed
    if math.prod(shape.values()) != n_devices:
        raise ConfigError(
            f"mesh {shape} needs {math.prod(shape.values())} devices but {n_devices} are available; "
            "set one axis to -1 to absorb the rest (e.g. --config.mesh.data=-1)"
        )
    return shape


def make_mesh(sizes: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over all (or the given) devices.

    Axis types are Auto: jax.make_mesh defaults to Explicit since 0.7, which this model code does not use.
    """
    devices = list(devices if devices is not None else jax.devices())
    shape = resolve_mesh_shape(sizes, len(devices))
    dims = tuple(shape[a] for a in MESH_AXES)
    auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    if devices == list(jax.devices()):
        return jax.make_mesh(dims, MESH_AXES, axis_types=auto)
    return Mesh(np.asarray(devices).reshape(dims), MESH_AXES, axis_types=auto)


def logical_to_sharding(logical_specs, mesh: Mesh, rules) -> Any:
    """A tree of logical PartitionSpecs -> a tree of NamedSharding on `mesh`."""
    return nn.logical_to_mesh_sharding(logical_specs, mesh, normalize_rules(rules))


def param_shardings(cfg: GPTConfig, mesh: Mesh, rules=DEFAULT_RULES):
    """NamedSharding for every parameter, after checking each sharded dimension divides evenly."""
    specs = logical_to_sharding(logical_axes(cfg), mesh, rules)

    def check_divisible(path, shape, sharding):
        for dim, axes in zip(shape.shape, sharding.spec):
            n = math.prod(mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes or ()))
            if dim % n:
                raise ConfigError(
                    f"parameter {jax.tree_util.keystr(path)} has a dimension of size {dim} that mesh axes {axes} "
                    f"({n} devices) cannot split evenly. Change the mesh, the model width, or pad the vocabulary "
                    f"(--config.model.padded_vocab_size={GPT2_PADDED_VOCAB_SIZE})."
                )

    jax.tree_util.tree_map_with_path(check_divisible, abstract_params(cfg), specs)
    return specs


def batch_sharding(mesh: Mesh, rules=DEFAULT_RULES) -> NamedSharding:
    """Sharding of a (B, T) token batch: batch over the data-parallel axes, sequence whole."""
    return logical_to_sharding(P("activation_batch", None), mesh, rules)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def data_parallel_size(mesh: Mesh, rules=DEFAULT_RULES) -> int:
    """How many ways a batch is split (the product of the mesh axes that activation_batch maps to)."""
    spec = batch_sharding(mesh, rules).spec
    axes = spec[0] if spec else None
    if axes is None:
        return 1
    return math.prod(mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes))


def check_batch_splits(batch_size: int, dp: int, flag: str, where: str = "", fix: str = "") -> None:
    """The one rule for every batch that is split over data-parallel devices (training, evaluation, scoring):
    it must be a positive multiple of `dp`. Raises ConfigError naming `flag` (e.g. --config.train.batch_size),
    `where` (what the devices are) and a value that works (`fix`: another remedy, appended)."""
    if batch_size >= 1 and batch_size % dp == 0:
        return
    name = flag.removeprefix("--config.")
    raise ConfigError(
        f"{name}={batch_size} is not divisible by the {dp} data-parallel devices{where}: the batch is not a "
        f"multiple of the {dp} devices. Use a multiple of {dp}, e.g. {flag}={max(dp, batch_size // dp * dp)}{fix}."
    )


def opt_state_shardings(tx: optax.GradientTransformation, abstract_params_tree, p_shardings, mesh: Mesh):
    """Optimizer-state shardings mirror the parameters' (Adam moments sharded like params; counters replicated).

    States that are not params-shaped trees (Adafactor's factored moments, Muon's split Muon/Adam states) cannot
    be mirrored leaf by leaf; for them XLA's sharding propagation decides, from the params' shardings, what
    `tx.init` returns."""
    abstract_state = jax.eval_shape(tx.init, abstract_params_tree)
    mismatch = object()
    try:
        mirrored = optax.tree_map_params(
            tx,
            lambda leaf, sharding, param: sharding if leaf.shape == param.shape else mismatch,
            abstract_state,
            p_shardings,
            abstract_params_tree,
            transform_non_params=lambda _: replicated(mesh),
            is_leaf=lambda x: isinstance(x, NamedSharding),
        )
        if not any(s is mismatch for s in jax.tree.leaves(mirrored, is_leaf=lambda x: x is mismatch)):
            return mirrored
    except (ValueError, TypeError):
        pass
    return jax.jit(tx.init, in_shardings=(p_shardings,)).lower(abstract_params_tree).compile().output_shardings


def activation_context(mesh: Mesh, rules=DEFAULT_RULES):
    """Context under which the model's `with_logical_constraint` calls take effect. Use around jit tracing:

        with activation_context(mesh, rules):
            step = jax.jit(train_step, ...)
            step(state, batch)
    """
    import contextlib

    stack = contextlib.ExitStack()
    stack.enter_context(jax.set_mesh(mesh))
    stack.enter_context(nn.logical_axis_rules(normalize_rules(rules)))
    return stack
