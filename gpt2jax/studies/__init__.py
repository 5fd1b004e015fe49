"""Studies over many runs: parallel sweep jobs, seed statistics."""
