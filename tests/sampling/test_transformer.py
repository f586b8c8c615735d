"""artrt.sampling.transformer.ARTransformerCache: teacher forcing equals the forward pass in
every ordering (raster, zig-zag, random; pixels and sub-pixels; class-conditional), cached
sampling equals the plain loop exactly, the decode calls attention_decode once per layer per
step (never the full causal attention) and fills the KV cache one token at a time, bad
input."""

from __future__ import annotations

import pytest
import torch

import artrt.nn.attention as attention_module
from artrt.models.transformer import ARTransformer, ARTransformerConfig
from artrt.sampling.transformer import ARTransformerCache
from tests.models.common import (
    assert_cache_bad_inputs,
    assert_cache_matches_forward,
    assert_cached_sampling_exact,
    cache_batch,
    labels,
)

ORDERINGS = ["raster", "zigzag", "random"]
CONFIGS = [((1, 3, 4), 5, 0), ((3, 2, 3), 4, 3)]
SMALL = {"dim": 16, "heads": 2, "layers": 2, "mlp_ratio": 2}


def small(shape, levels, num_classes, ordering, **kw) -> ARTransformer:
    torch.manual_seed(0)
    return ARTransformer(ARTransformerConfig(shape, levels, num_classes, ordering=ordering,
                                             order_seed=3, **{**SMALL, **kw}))


@pytest.mark.parametrize("ordering", ORDERINGS)
@pytest.mark.parametrize("shape,levels,num_classes", CONFIGS)
def test_cache_matches_forward(shape, levels, num_classes, ordering):
    model = small(shape, levels, num_classes, ordering)
    assert_cache_matches_forward(model, *cache_batch(model, 3), cache_type=ARTransformerCache)


@pytest.mark.parametrize("ordering", ORDERINGS)
@pytest.mark.parametrize("shape,levels,num_classes", CONFIGS)
def test_cached_sampling_exact(shape, levels, num_classes, ordering):
    model = small(shape, levels, num_classes, ordering)
    assert_cached_sampling_exact(model, 4, labels(model, 4))


@pytest.mark.parametrize("ordering", ["zigzag", "random"])
def test_decode_is_one_token_per_step(monkeypatch, ordering):
    """Each step calls attention_decode once per layer with one query, each layer writes to
    its own slice of the KV cache, the cached lengths grow by one per step, and the full
    causal attention is never called; the steps follow the generation order."""
    model = small((2, 2, 3), 4, 0, ordering, layers=3).eval()
    assert [b.attn.layer_idx for b in model.blocks] == [0, 1, 2]
    x, _ = cache_batch(model, 2)
    queries = []
    decode = attention_module.attention_decode

    def counting_decode(q, *args, **kw):
        queries.append(q.shape[2])
        return decode(q, *args, **kw)

    def no_full_attention(*args, **kw):
        raise AssertionError("the decode must not run the full causal attention")

    monkeypatch.setattr(attention_module, "attention_decode", counting_decode)
    monkeypatch.setattr(attention_module, "causal_attention", no_full_attention)
    steps = model.generation_steps().reshape(-1)
    with torch.no_grad():
        cache = model.new_cache(2)
        assert queries == [1] * 3 and cache.kv.seqlens.tolist() == [[1, 1]] * 3
        xf = x.reshape(2, -1)
        for s in range(cache.num_steps):
            pos = cache.positions()
            assert steps[pos].tolist() == [s]
            cache.logits()
            cache.push(xf[:, pos])
            done = min(s + 2, cache.num_steps)
            assert len(queries) == 3 * done
            assert cache.kv.seqlens.tolist() == [[done, done]] * 3
    assert queries == [1] * 3 * cache.num_steps
    cache.reset()
    assert cache.kv.seqlens.tolist() == [[1, 1]] * 3


@pytest.mark.parametrize("num_classes", [0, 4])
def test_cache_bad_inputs(num_classes):
    model = small((1, 3, 3), 4, num_classes, "zigzag")
    x, cond = cache_batch(model, 2)
    assert_cache_bad_inputs(model, x, cond)
