"""Incremental state for sampling: caches that the decode-step ops read and write."""

from artrt.sampling.kv_cache import KVCache

__all__ = ["KVCache"]
