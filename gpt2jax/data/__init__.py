"""Token data: shard files and dataset directories (`gpt2jax.data.shards`), the preparation CLI
(`python -m gpt2jax.data.prepare`), and the step-indexed batch loader (`gpt2jax.data.loader`).

Import from the submodules; this package init stays empty so the preparation CLI does not import JAX.
"""
