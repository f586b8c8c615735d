"""artrt.nn.CausalSelfAttention and artrt.sampling.KVCache: forward against a plain PyTorch
composition, cached decode steps equal the full forward (raster, GQA, strict, any order)."""

from __future__ import annotations

import pytest
import torch

from artrt.nn.attention import CausalSelfAttention
from artrt.ops.attention import causal_attention_ref, random_order, zigzag_order
from artrt.sampling import KVCache
from tests.helpers import DEVICE, kernel_backends

BACKENDS = ["reference", *kernel_backends()]


def manual_forward(layer, x, order=None):
    b, t, c = x.shape
    d = layer.head_dim
    q, k, v = layer.qkv(x).split([layer.heads * d, layer.kv_heads * d, layer.kv_heads * d], -1)
    q = q.view(b, t, -1, d).transpose(1, 2)
    k = k.view(b, t, -1, d).transpose(1, 2)
    v = v.view(b, t, -1, d).transpose(1, 2)
    y = causal_attention_ref(q, k, v, order=order, strict=layer.strict)
    return layer.proj(y.transpose(1, 2).reshape(b, t, c))


@pytest.mark.parametrize("kv_heads,strict", [(None, False), (1, True)])
def test_forward_matches_manual(kv_heads, strict):
    torch.manual_seed(0)
    layer = CausalSelfAttention(32, 4, kv_heads, strict=strict)
    x = torch.randn(2, 13, 32)
    order = random_order(13)
    torch.testing.assert_close(layer(x), manual_forward(layer, x))
    torch.testing.assert_close(layer(x, order), manual_forward(layer, x, order))
    layer(x, order).sum().backward()
    assert all(p.grad is not None for p in layer.parameters())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kv_heads,strict", [(4, False), (2, False), (1, True)])
def test_steps_equal_forward(backend, kv_heads, strict):
    """A prompt of 6 positions, then one position at a time, then 3 at once, through a cache
    shared by two layers: equal to the full forward of each layer."""
    import artrt

    torch.manual_seed(0)
    layers = [CausalSelfAttention(64, 4, kv_heads, strict=strict, layer_idx=i).to(DEVICE)
              for i in range(2)]
    x = torch.randn(2, 14, 64, device=DEVICE)
    with artrt.use_backend(backend), torch.no_grad():
        want = layers[1](layers[0](x))
        cache = KVCache(2, 2, kv_heads, 16, 16, device=DEVICE)
        got = []
        for a, b in [(0, 6), *((i, i + 1) for i in range(6, 11)), (11, 14)]:
            got.append(layers[1].step(layers[0].step(x[:, a:b], cache), cache))
    torch.testing.assert_close(torch.cat(got, 1), want, atol=2e-6, rtol=1e-5)
    assert cache.seqlens.tolist() == [[14, 14], [14, 14]]


def test_steps_in_generation_order():
    """For an ordered model, feeding tokens in generation order through step() gives the
    forward pass with ``order`` at the matching positions."""
    torch.manual_seed(0)
    layer = CausalSelfAttention(32, 2)
    order = zigzag_order(3, 4)  # ranks of a 3 x 4 image in raster layout
    x = torch.randn(1, 12, 32)
    with torch.no_grad():
        want = layer(x, order)  # raster layout
        perm = order.argsort()  # raster index of the t-th generated position
        cache = KVCache(1, 1, 2, 12, 16)
        got = torch.cat([layer.step(x[:, p:p + 1], cache) for p in perm.tolist()], 1)
    torch.testing.assert_close(got, want[:, perm], atol=2e-6, rtol=1e-5)


def test_kv_cache():
    cache = KVCache(3, 2, 4, 10, 8, dtype=torch.float64)
    assert (cache.num_layers, cache.batch_size, cache.kv_heads, cache.max_len,
            cache.head_dim) == (3, 2, 4, 10, 8)
    assert cache.dtype == torch.float64 and cache.device == torch.device("cpu")
    k, v, n = cache.layer(1)
    assert k.shape == (2, 4, 10, 8) and n.shape == (2,) and n.dtype == torch.int32
    cache.advance(1, 4)
    assert cache.seqlens.tolist() == [[0, 0], [4, 4], [0, 0]]
    cache.reset()
    assert (cache.seqlens == 0).all()
    assert "KVCache(num_layers=3" in repr(cache)
    with pytest.raises(ValueError, match="max_len must be a positive int, got 0"):
        KVCache(1, 1, 1, 0, 8)


def test_step_errors_leave_cache_unchanged():
    layer = CausalSelfAttention(32, 4, 2)
    x = torch.randn(2, 3, 32)
    with pytest.raises(ValueError, match=r"\(batch, kv heads, head dim\) = \(2, 2, 8\), the "
                                         r"cache was built for \(3, 2, 8\)"):
        layer.step(x, KVCache(1, 3, 2, 8, 8))
    with pytest.raises(ValueError, match="inputs are torch.float32 on cpu, the cache holds "
                                         "torch.float64"):
        layer.step(x, KVCache(1, 2, 2, 8, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"layer must be an int in \[0, 1\), got 1"):
        CausalSelfAttention(32, 4, 2, layer_idx=1).step(x, KVCache(1, 2, 2, 8, 8))
    cache = KVCache(1, 2, 2, 4, 8)
    layer.step(x, cache)
    k_before = cache.k.clone()
    with pytest.raises(ValueError, match="cache overflow"):
        layer.step(x[:, :2], cache)
    assert torch.equal(cache.k, k_before) and cache.seqlens.tolist() == [[3, 3]]


def test_module_errors_and_repr():
    with pytest.raises(ValueError, match="dim 30 must be a multiple of heads 4"):
        CausalSelfAttention(30, 4)
    with pytest.raises(ValueError, match="heads 4 must be a multiple of kv_heads 3"):
        CausalSelfAttention(32, 4, 3)
    assert "kv_heads=2" in repr(CausalSelfAttention(32, 4, 2))


def test_torch_compile_inductor():
    """The default (inductor) backend compiles a layer that uses the op, without breaks."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    layer = CausalSelfAttention(32, 4, 2)
    x = torch.randn(2, 9, 32)
    order = random_order(9)
    compiled = torch.compile(lambda x: layer(x + 1.0, order) * 2.0, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), layer(x + 1.0, order) * 2.0)
