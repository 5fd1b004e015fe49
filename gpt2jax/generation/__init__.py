"""Decoding: the KV-cache generation loop over the one model, and compile buckets for varying lengths."""
