"""artrt.nn.MaskedConv2d / DownShiftedConv2d / DownRightShiftedConv2d: nn.Conv2d layout, the
masked / shifted convolution, and the colour ordering through the Jacobian."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import artrt
from artrt.nn.masked_conv import DownRightShiftedConv2d, DownShiftedConv2d, MaskedConv2d
from tests.helpers import DEVICE, kernel_backends
from tests.ops.test_masked_conv2d import hand_mask

BACKENDS = ["reference", *kernel_backends()]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mask_type,groups", [("A", 3), ("B", 1)])
def test_masked_conv2d_loads_conv2d_weights(backend, mask_type, groups):
    torch.manual_seed(0)
    dense = nn.Conv2d(6, 9, 5, padding=2).to(DEVICE)
    layer = MaskedConv2d(6, 9, 5, mask_type, groups).to(DEVICE)
    layer.load_state_dict(dense.state_dict())
    x = torch.randn(2, 6, 7, 5, device=DEVICE, requires_grad=True)
    cond = torch.randn(2, 9, device=DEVICE)
    mask = hand_mask(9, 6, 5, mask_type, groups).to(DEVICE)
    with artrt.use_backend(backend):
        out = layer(x, cond)
    want = F.conv2d(x, dense.weight * mask, dense.bias, padding=2) + cond[:, :, None, None]
    torch.testing.assert_close(out, want, atol=2e-5, rtol=1e-4)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (x, layer.weight, layer.bias), grad)
    ref = torch.autograd.grad(want, (x, dense.weight, dense.bias), grad)
    for g, r in zip(got, ref, strict=True):
        torch.testing.assert_close(g, r, atol=2e-5, rtol=1e-4)
    assert torch.all(got[1][mask == 0] == 0)
    torch.testing.assert_close(layer.mask(), mask)


@pytest.mark.parametrize("backend", BACKENDS)
def test_shifted_layers_are_explicit_shifts(backend):
    torch.manual_seed(0)
    x = torch.randn(2, 4, 5, 7, device=DEVICE)
    down = DownShiftedConv2d(4, 6).to(DEVICE)
    down_right = DownRightShiftedConv2d(4, 6).to(DEVICE)
    assert down.weight.shape == (6, 4, 2, 3) and down_right.weight.shape == (6, 4, 2, 2)
    with artrt.use_backend(backend):
        got_d, got_dr = down(x), down_right(x)
    torch.testing.assert_close(got_d, F.conv2d(F.pad(x, (1, 1, 1, 0)), down.weight, down.bias),
                               atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(got_dr, F.conv2d(F.pad(x, (1, 0, 1, 0)), down_right.weight,
                                                down_right.bias), atol=2e-5, rtol=1e-4)
    wide = DownShiftedConv2d(4, 6, (3, 5), bias=False).to(DEVICE)
    assert wide.bias is None
    with artrt.use_backend(backend):
        got = wide(x)
    torch.testing.assert_close(got, F.conv2d(F.pad(x, (2, 2, 2, 0)), wide.weight),
                               atol=2e-5, rtol=1e-4)


def test_bad_arguments():
    with pytest.raises(ValueError, match="odd and square"):
        MaskedConv2d(3, 6, 4)
    with pytest.raises(ValueError, match="odd and square"):
        MaskedConv2d(3, 6, (3, 5))
    with pytest.raises(ValueError, match="mask_type must be 'A' or 'B'"):
        MaskedConv2d(3, 6, 3, "C")
    with pytest.raises(ValueError, match="color_groups=3 must be a positive int dividing"):
        MaskedConv2d(4, 6, 3, "A", 3)
    layer = MaskedConv2d(3, 6, 3, "A", 3)
    assert "mask_type='A', color_groups=3" in repr(layer)
    with pytest.raises(ValueError, match="expects 3 input channels"):
        layer(torch.randn(1, 4, 5, 5))


def test_colour_ordering_through_the_jacobian():
    """A mask-A then mask-B 3x3 stack with colour groups: output channel group g at pixel
    (i, j) depends on input group g' at (i, j) exactly when g' < g, never on later pixels,
    and on every channel of the earlier pixels that two 3x3 masked layers reach: rows i-2
    and i-1 at columns j-2..j+2 except (i-1, j+2) (the blind spot of masked stacks), row i
    at columns j-2..j-1."""
    torch.manual_seed(0)
    stack = nn.Sequential(MaskedConv2d(3, 6, 3, "A", 3), nn.Tanh(),
                          MaskedConv2d(6, 3, 3, "B", 3)).double()
    x = torch.randn(1, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    out = stack(x)
    i, j = 2, 2
    for g in range(3):
        (dx,) = torch.autograd.grad(out[0, g, i, j], x, retain_graph=True)
        dep = dx[0].abs() > 0  # (3, 5, 5)
        assert dep[:, i, j].tolist() == [c < g for c in range(3)], f"group {g} at the centre"
        want = torch.zeros(5, 5, dtype=torch.bool)
        want[i - 2, :] = want[i - 1, :] = want[i, :j] = True
        want[i - 1, j + 2] = False  # the blind spot
        want[i, j] = g > 0
        assert torch.equal(dep.any(0), want), f"group {g}"
        past = want.clone()
        past[i, j] = False
        assert dep[:, past].all(), "every channel of an earlier pixel"


@pytest.mark.parametrize("size", [1, 2, 5])
def test_cpu_module_sees_weight_written_in_place_and_keeps_nan_semantics(size):
    """The module's cpu path (no dispatcher, only x checked per call) follows every write to
    its weight, including one through ``weight.data`` (which bumps no version counter), and a
    NaN weight entry counts as in the reference: ignored at a masked position, NaN at a live
    one even when its tap reads only the zero padding (an image smaller than the kernel)."""
    from artrt.ops.masked_conv2d import masked_conv2d_ref

    torch.manual_seed(0)
    layer = MaskedConv2d(4, 4, 3, "B")
    x = torch.randn(1, 4, size, size)

    def check():
        with torch.no_grad():
            out = layer(x)
        ref = masked_conv2d_ref(x, layer.weight.detach(), layer.bias.detach(), "B")
        torch.testing.assert_close(out, ref, equal_nan=True)
        return out

    check()
    layer.weight.data.mul_(2)
    check()
    with torch.no_grad():
        layer.weight[0, 0, 2, 2] = float("nan")  # masked: ignored
    assert check().isfinite().all()
    layer.weight.data[1, 2, 0, 0] = float("inf")  # live, reads padding at the image's edge
    assert not check()[:, 1].isfinite().all()
    layer.weight.data[1, 2, 0, 0] = 1.0
    x[0, 3, 0, 0] = float("nan")
    check()
    with pytest.raises(ValueError, match="MaskedConv2d: weight of shape"):
        layer(torch.randn(1, 3, size, size))
