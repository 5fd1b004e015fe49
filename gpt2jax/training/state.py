"""The training state and where it lives, from one place: `StateLayout`.

The state is a dict: params, opt_state (AdamW moments + counters), step (int32) and rng (raw uint32 key data,
which orbax can save). `StateLayout.build` gives, together, its abstract shapes (nothing allocated), the
shardings of every leaf (params by the logical-axis rules, Adam moments like their params, the rest
replicated), the shardings of the token batches, the targets that checkpoints restore onto, and the jitted
function that creates a fresh state directly in those shardings.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from gpt2jax.model import init_params
from gpt2jax.model.sharding import batch_sharding, opt_state_shardings, param_shardings, replicated

TRAIN_KEYS = ("opt_state", "step", "rng")  # what a checkpoint saves beside the params (its "train" item)


def initial_state(cfg, tx, seed: int) -> dict:
    """Training state at step 0: GPT-2-initialised params, fresh optimizer state, and the dropout RNG key
    (raw uint32 key data, which orbax can save)."""
    params = init_params(cfg, jax.random.key(seed))
    return dict(params=params, opt_state=tx.init(params), step=jnp.int32(0),
                rng=jax.random.key_data(jax.random.key(seed + 1)))


def train_items(state: dict) -> dict:
    """The part of the state a checkpoint keeps beside the params."""
    return {k: state[k] for k in TRAIN_KEYS}


@dataclasses.dataclass(frozen=True)
class StateLayout:
    cfg: object  # GPTConfig
    tx: object  # optax.GradientTransformation
    mesh: Mesh
    rules: tuple  # the logical-axis rules the shardings were made with
    abstract: dict  # ShapeDtypeStructs of the state, no sharding
    shardings: dict  # the same tree of NamedShardings
    batch: NamedSharding  # one step's tokens (A, B, T+1): micro-batches whole, rows over the data axes
    replicas: int = 0  # S > 0: every leaf (and the batch) has a leading (S,) replica axis, on one device

    @classmethod
    def build(cls, cfg, tx, mesh: Mesh, rules) -> "StateLayout":
        abstract = jax.eval_shape(functools.partial(initial_state, cfg, tx), 0)
        p_sh = param_shardings(cfg, mesh, rules)
        rep = replicated(mesh)
        shardings = dict(params=p_sh, opt_state=opt_state_shardings(tx, abstract["params"], p_sh, mesh),
                         step=rep, rng=rep)
        batch = NamedSharding(mesh, P(None, *batch_sharding(mesh, rules).spec))
        return cls(cfg, tx, mesh, tuple(rules), abstract, shardings, batch)

    @property
    def stacked_batch(self) -> NamedSharding:
        """Several steps' batches (n, A, B, T+1): a K-steps call's batches, or the fixed eval batches."""
        return NamedSharding(self.mesh, P(None, *self.batch.spec))

    def target(self, key: str):
        """Restore target of one state entry: its shapes with the shardings to restore onto."""
        return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            self.abstract[key], self.shardings[key])

    def train_target(self) -> dict:
        return {k: self.target(k) for k in TRAIN_KEYS}

    def over_replicas(self, S: int) -> "StateLayout":
        """The layout of S replicas of this state (`gpt2jax.training.replicas`): a leading (S,) axis on every leaf
        and on the batches, on one device (replicas are for models too small to shard)."""
        if self.mesh.devices.size != 1:
            raise ValueError(f"replicas train on one device, got a mesh of {self.mesh.devices.size}")
        rep = replicated(self.mesh)
        abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct((S, *a.shape), a.dtype), self.abstract)
        return dataclasses.replace(self, abstract=abstract, shardings=jax.tree.map(lambda _: rep, self.abstract),
                                   batch=rep, replicas=S)

    def create_replicas(self, seeds) -> dict:
        """Fresh states for these seeds as one program, stacked on the replica axis; each is bitwise what `create`
        gives its seed (tests/test_replicas.py)."""
        init = jax.vmap(functools.partial(initial_state, self.cfg, self.tx))
        return jax.jit(init, out_shardings=self.shardings)(jnp.asarray(seeds, jnp.int32))

    def create(self, seed: int) -> dict:
        """A fresh state for `seed`, created directly in its shardings. The seed is a traced int32 argument, not a
        constant of the program: every seed runs the same compiled program, which JAX's persistent compilation
        cache then serves to every later run of this config (a seed sweep, a test suite: 2-3 s per run on this
        CPU). The params are bitwise those of `init_params(cfg, jax.random.key(seed))` with a Python int seed
        (tests/test_model.py)."""
        init = functools.partial(initial_state, self.cfg, self.tx)
        return jax.jit(init, out_shardings=self.shardings)(jnp.int32(seed))
