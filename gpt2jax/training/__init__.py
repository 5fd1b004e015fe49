"""Training: the config schema and its resolution, the optimizer, the state layout, the loop, replicas, metrics."""
