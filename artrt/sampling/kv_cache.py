"""A key/value cache for autoregressive decoding with :func:`artrt.ops.attention_decode`.

One preallocated buffer per layer, ``(B, Hk, Tmax, D)`` for keys and one for values, and a
per-layer count of valid positions per sequence. Each layer advances its own count after it
appends (``CausalSelfAttention.step`` does this), so the layers of a model stay consistent
without a separate "advance" call.
"""

from __future__ import annotations

import torch


class KVCache:
    """Keys and values of every attention layer of a model, for ``batch_size`` sequences.

    Args:
        num_layers: attention layers sharing the cache (layer indices 0..num_layers-1).
        batch_size: B, sequences decoded together.
        kv_heads: Hk, key/value heads per layer.
        max_len: Tmax, positions per sequence.
        head_dim: D.
        dtype, device: of the buffers (the attention inputs must match).

    Attributes:
        k, v: (num_layers, B, Hk, Tmax, D) buffers.
        seqlens: (num_layers, B) int32, valid positions per layer and sequence.
    """

    def __init__(self, num_layers: int, batch_size: int, kv_heads: int, max_len: int,
                 head_dim: int, *, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu"):
        for name, value in (("num_layers", num_layers), ("batch_size", batch_size),
                            ("kv_heads", kv_heads), ("max_len", max_len),
                            ("head_dim", head_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"KVCache: {name} must be a positive int, got {value!r}")
        shape = (num_layers, batch_size, kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.seqlens = torch.zeros((num_layers, batch_size), dtype=torch.int32, device=device)

    @property
    def num_layers(self) -> int:
        return self.k.shape[0]

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    @property
    def kv_heads(self) -> int:
        return self.k.shape[2]

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    @property
    def head_dim(self) -> int:
        return self.k.shape[4]

    @property
    def dtype(self) -> torch.dtype:
        return self.k.dtype

    @property
    def device(self) -> torch.device:
        return self.k.device

    def reset(self) -> None:
        """Forget every cached position (the buffers are reused, not cleared)."""
        self.seqlens.zero_()

    def check(self, layer: int, batch_size: int, kv_heads: int, head_dim: int,
              dtype: torch.dtype, device: torch.device) -> None:
        """Raise a ValueError naming the mismatch if inputs of this description cannot use
        layer ``layer`` of the cache."""
        if isinstance(layer, bool) or not isinstance(layer, int) or not (
                0 <= layer < self.num_layers):
            raise ValueError(f"KVCache: layer must be an int in [0, {self.num_layers}), "
                             f"got {layer!r}")
        got = (batch_size, kv_heads, head_dim)
        want = (self.batch_size, self.kv_heads, self.head_dim)
        if got != want:
            raise ValueError(f"KVCache: inputs have (batch, kv heads, head dim) = {got}, the "
                             f"cache was built for {want}")
        if dtype != self.dtype or torch.device(device) != self.device:
            raise ValueError(f"KVCache: inputs are {dtype} on {device}, the cache holds "
                             f"{self.dtype} on {self.device}")

    def layer(self, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(k_cache, v_cache, seqlens) of one layer: views (B, Hk, Tmax, D) and (B,)."""
        return self.k[layer], self.v[layer], self.seqlens[layer]

    def advance(self, layer: int, n: int) -> None:
        """Count ``n`` more valid positions in every sequence of layer ``layer``."""
        self.seqlens[layer] += n

    def __repr__(self) -> str:
        return (f"KVCache(num_layers={self.num_layers}, batch_size={self.batch_size}, "
                f"kv_heads={self.kv_heads}, max_len={self.max_len}, "
                f"head_dim={self.head_dim}, dtype={self.dtype}, device={self.device})")
