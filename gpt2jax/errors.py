"""The errors a user can cause or must act on (more live beside the code that raises them: ConfigError in
`gpt2jax.config`, TokenizerError in `gpt2jax.tokenizer`, GenerationError in `gpt2jax.generate`)."""
from __future__ import annotations


class CheckpointError(ValueError):
    """Weights that cannot be loaded (a Hugging Face directory, a hub id, --init_from). The message names the
    file and the fix."""
