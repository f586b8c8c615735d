"""artrt.sampling.arrnn.ARRNNCache: teacher forcing equals the forward pass (images and
sequences, one or two LSTM layers, with and without the positional encoding,
class-conditional), cached sampling equals the plain loop (one full pass per position)
exactly, one LSTM step per generation step with the state carried, bad input."""

from __future__ import annotations

import pytest
import torch

from artrt.models.arrnn import ARRNN, ARRNNConfig
from artrt.sampling.arrnn import ARRNNCache
from tests.models.common import (
    assert_cache_bad_inputs,
    assert_cache_matches_forward,
    assert_cached_sampling_exact,
    cache_batch,
    labels,
)

CONFIGS = [((1, 3, 4), 2, 0, 1, True), ((3, 2, 2), 5, 3, 2, True), ((2, 5), 17, 0, 2, False)]


def small(shape, levels, num_classes, layers, positional) -> ARRNN:
    torch.manual_seed(0)
    return ARRNN(ARRNNConfig(shape, levels, num_classes, hidden=12, layers=layers,
                             positional=positional))


@pytest.mark.parametrize("shape,levels,num_classes,layers,positional", CONFIGS)
def test_cache_matches_forward(shape, levels, num_classes, layers, positional):
    model = small(shape, levels, num_classes, layers, positional)
    assert_cache_matches_forward(model, *cache_batch(model, 3), cache_type=ARRNNCache)


@pytest.mark.parametrize("shape,levels,num_classes,layers,positional", CONFIGS)
def test_cached_sampling_exact(shape, levels, num_classes, layers, positional):
    model = small(shape, levels, num_classes, layers, positional)
    assert_cached_sampling_exact(model, 4, labels(model, 4))


def test_one_lstm_step_per_generation_step():
    """Every LSTM call takes one time step; a whole teacher-forced pass makes D of them (one
    at reset, one per push but the last), and the carried state has the LSTM's shape."""
    model = small((3, 2, 2), 4, 0, 2, True).eval()
    x, _ = cache_batch(model, 2)
    lengths = []
    hook = model.lstm.register_forward_pre_hook(lambda m, args: lengths.append(args[0].shape[1]))
    with torch.no_grad():
        cache = model.new_cache(2)
        assert lengths == [1]
        xf = x.reshape(2, -1)
        while not cache.done:
            cache.logits()
            cache.logits()  # no recomputation
            cache.push(xf[:, cache.positions()])
            h, c = cache.state
            assert h.shape == c.shape == (2, 2, 12)
    hook.remove()
    assert lengths == [1] * 12


def test_plain_loop_is_full_passes():
    """``sample(cache=False)`` runs the whole network once per position."""
    model = small((1, 2, 3), 3, 0, 1, True)
    calls = []
    hook = model.register_forward_pre_hook(lambda m, args: calls.append(1))
    model.sample(2, cache=False)
    hook.remove()
    assert len(calls) == 6


@pytest.mark.parametrize("num_classes", [0, 4])
def test_cache_bad_inputs(num_classes):
    model = small((1, 3, 3), 4, num_classes, 1, True)
    x, cond = cache_batch(model, 2)
    assert_cache_bad_inputs(model, x, cond)
