"""Incremental state for sampling: the cache protocol every model shares
(:class:`ARCache`) and the caches that the decode-step ops read and write."""

from artrt.sampling.cache import ARCache
from artrt.sampling.kv_cache import KVCache

__all__ = ["ARCache", "KVCache"]
