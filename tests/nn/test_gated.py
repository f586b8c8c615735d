"""artrt.nn.GatedTanh / GatedSigmoid: the modules call the ops."""

import torch

import artrt
from artrt.ops.gated import gated_sigmoid_ref, gated_tanh_ref


def test_modules_match_functional():
    x = torch.randn(3, 5, 8)
    cond = torch.randn(3, 1, 8)
    torch.testing.assert_close(artrt.nn.GatedTanh(dim=-1)(x, cond), gated_tanh_ref(x, cond, -1))
    torch.testing.assert_close(artrt.nn.GatedSigmoid(dim=2)(x), gated_sigmoid_ref(x, None, 2))
    assert "dim=-1" in repr(artrt.nn.GatedTanh(dim=-1))
    assert list(artrt.nn.GatedTanh().parameters()) == []
