"""Compile buckets: lengths rounded up to a few static shapes, so varying inputs reuse compiled programs.

Used by generation (prompt and cache lengths) and by the evaluation scorer (batch widths).
"""
from __future__ import annotations


def bucket_length(n: int, max_len: int | None = None, minimum: int = 16) -> int:
    """Round a length up to a compile bucket: powers of two up to 256, then multiples of 256; at most max_len.

    Powers of two keep the number of compiled programs small for short inputs; above 256 a power of two would
    waste up to half of the shape, so the step becomes 256 (at most 4 buckets per 1024 positions).
    """
    n = max(int(n), minimum)
    size = 1 << (n - 1).bit_length() if n <= 256 else -(-n // 256) * 256
    return size if max_len is None else min(size, max_len)
