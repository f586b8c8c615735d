"""artrt.nn.CausalConv1d / WaveNetBlock: against nn.Conv1d and the unfused reference block."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from artrt import backends
from artrt.nn.wavenet import CausalConv1d, WaveNetBlock
from artrt.ops.causal_conv1d import wavenet_block_ref
from tests.helpers import DEVICE, assert_close_lowp, kernel_backends, with_layout
from tests.ops.test_causal_conv1d import allowed_sources

TOL = {"atol": 2e-5, "rtol": 1e-5}


def test_causal_conv1d_loads_conv1d_weights():
    torch.manual_seed(0)
    conv = nn.Conv1d(5, 7, 3, dilation=4)
    causal = CausalConv1d(5, 7, 3, dilation=4)
    causal.load_state_dict(conv.state_dict())
    assert causal.weight.shape == (7, 5, 3) and causal.bias.shape == (7,)
    x = torch.randn(2, 5, 33)
    torch.testing.assert_close(causal(x), conv(F.pad(x, (8, 0))))
    assert "dilation=4" in repr(causal) and "causal" in repr(causal)
    assert CausalConv1d(3, 4, 2, bias=False).bias is None


@pytest.mark.parametrize("backend", kernel_backends())
def test_causal_conv1d_module_kernel(backend):
    torch.manual_seed(0)
    layer = CausalConv1d(3, 129, 2, dilation=16).to(DEVICE)
    x = torch.randn(2, 3, 33, device=DEVICE)
    want = layer(x)
    with backends.use_backend(backend):
        got = layer(x)
    torch.testing.assert_close(got, want, **TOL)


def test_bad_layer_args():
    with pytest.raises(ValueError, match=r"kernel_size must be an int in 1..8, got 9"):
        CausalConv1d(3, 4, 9)
    with pytest.raises(ValueError, match="dilation must be an int >= 1, got 0"):
        CausalConv1d(3, 4, 2, dilation=0)
    with pytest.raises(ValueError, match="kernel_size must be an int in 1..8, got 0"):
        WaveNetBlock(4, 4, 4, kernel_size=0)
    block = WaveNetBlock(4, 3, 5, cond_channels=2)
    with pytest.raises(ValueError, match="forward needs cond"):
        block(torch.randn(1, 4, 7))
    with pytest.raises(ValueError, match=r"cond must have shape \(B, Cc\) or \(B, Cc, T\)"):
        block(torch.randn(1, 4, 7), torch.randn(1, 3, 7))
    with pytest.raises(ValueError, match="cond_channels=0"):
        WaveNetBlock(4, 3, 5)(torch.randn(1, 4, 7), torch.randn(1, 2, 7))


def make_block(cond_kind, bias=True, k=2, d=4, r=5, g=3, s=7, cc=3, device=DEVICE):
    torch.manual_seed(0)
    block = WaveNetBlock(r, g, s, kernel_size=k, dilation=d,
                         cond_channels=cc if cond_kind else 0, bias=bias).to(device)
    x = torch.randn(2, r, 33, device=device)
    cond = {None: None, "local": torch.randn(2, cc, 33), "global": torch.randn(2, cc)}[cond_kind]
    return block, x, None if cond is None else cond.to(device)


def block_ref(block, x, cond):
    return wavenet_block_ref(
        x, block.conv.weight, block.conv.bias, block.res.weight, block.res.bias,
        block.skip.weight, block.skip.bias, block.conv.dilation[0], cond,
        None if block.cond is None else block.cond.weight)


def outputs_and_grads(fn, block, x, cond, grads):
    """(out, skip) and the gradients of x, cond and every parameter, for fixed upstream grads."""
    block.zero_grad()
    x = x.detach().requires_grad_()
    cond = cond.detach().requires_grad_() if cond is not None else None
    out, skip = fn(x, cond)
    torch.autograd.backward((out, skip), grads)
    res = [out.detach(), skip.detach(), x.grad] + ([cond.grad] if cond is not None else [])
    return res + [p.grad.clone() for p in block.parameters()]


@pytest.mark.parametrize("backend", ["reference", *kernel_backends()])
@pytest.mark.parametrize("cond_kind,bias", [(None, True), ("local", True), ("global", False),
                                            ("global", True)])
def test_block_matches_reference(backend, cond_kind, bias):
    block, x, cond = make_block(cond_kind, bias)
    gen = torch.Generator().manual_seed(1)
    grads = (torch.randn(2, 5, 33, generator=gen).to(DEVICE),
             torch.randn(2, 7, 33, generator=gen).to(DEVICE))
    want = outputs_and_grads(lambda x, c: block_ref(block, x, c), block, x, cond, grads)
    with backends.use_backend(backend):
        got = outputs_and_grads(block, block, x, cond, grads)
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        torch.testing.assert_close(g, w, **TOL, msg=lambda m, i=i: f"output/grad {i}: {m}")


@pytest.mark.parametrize("backend", kernel_backends())
def test_block_non_contiguous_and_chained(backend):
    """A strided input, and the output of one block (a strided view) fed to the next."""
    block, x, cond = make_block("local", k=3, d=2)
    block2 = WaveNetBlock(5, 3, 7, kernel_size=2, dilation=8, cond_channels=3).to(DEVICE)
    x_nc, cond_nc = with_layout(x, "strided"), with_layout(cond, "permuted")

    def two(x, c):
        out, skip = block(x, c)
        assert not out.is_contiguous()
        out2, skip2 = block2(out, c)
        return out2, skip + skip2

    with backends.use_backend(backend):
        got = two(x_nc, cond_nc)
    with backends.use_backend("reference"):
        want = two(x, cond)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, **TOL)


@pytest.mark.parametrize("backend", ["reference", *kernel_backends()])
@pytest.mark.parametrize("k,d", [(2, 4), (3, 1)])
def test_block_causality(backend, k, d):
    """out and skip at t depend on x exactly at t - i d (i < K); on local cond only at t."""
    block, x, cond = make_block("local", k=k, d=d)
    x, cond = x[:1, :, :19].contiguous(), cond[:1, :, :19].contiguous()
    t_len = 19
    want_x = allowed_sources(t_len, k, d)
    want_c = torch.eye(t_len, dtype=torch.bool)
    with backends.use_backend(backend):
        for which, want in (("x", want_x), ("cond", want_c)):
            xs = (x if which == "x" else cond).detach().requires_grad_()
            out, skip = block(xs, cond) if which == "x" else block(x, xs)
            for y in (out, skip):
                support = torch.zeros(t_len, t_len, dtype=torch.bool)
                for t in range(t_len):
                    g = torch.zeros_like(y)
                    g[:, :, t] = 1.0
                    (dx,) = torch.autograd.grad(y, xs, g, retain_graph=True)
                    support[t] = dx.abs().sum((0, 1)).cpu() > 0
                assert torch.equal(support, want), which


@pytest.mark.parametrize("backend", kernel_backends())
def test_block_torch_compile(backend):
    torch._dynamo.reset()
    block, x, cond = make_block("global")
    with backends.use_backend(backend):
        compiled = torch.compile(lambda x, c: block(x * 2.0, c), fullgraph=True,
                                 backend="aot_eager")
        got = compiled(x, cond)
    want = block_ref(block, x * 2.0, cond)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, **TOL)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,cond_kind", [  # each dtype; each conditioning in bf16
    (torch.float32, "local"), (torch.float16, "global"), (torch.bfloat16, "local"),
    (torch.bfloat16, "global")])
def test_gpu_block_real_shape(dtype, cond_kind, monkeypatch):
    """WaveNet 16 x (64 -> 128 gate) x 16000, dilation 512, against the unfused block."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    block, _, _ = make_block(cond_kind, k=2, d=512, r=64, g=128, s=128, cc=80, device="cuda")
    x = torch.randn(16, 64, 16000, device="cuda")
    cond = torch.randn((16, 80, 16000) if cond_kind == "local" else (16, 80), device="cuda")
    grads = (torch.randn(16, 64, 16000, device="cuda"), torch.randn(16, 128, 16000, device="cuda"))
    ref64 = outputs_and_grads(lambda x, c: block_ref(block, x, c), block.double(), x.double(),
                              cond.double(), tuple(g.double() for g in grads))
    block.to(dtype)
    x, cond, grads = x.to(dtype), cond.to(dtype), tuple(g.to(dtype) for g in grads)
    lowp = outputs_and_grads(lambda x, c: block_ref(block, x, c), block, x, cond, grads)
    with backends.use_backend("triton"):
        got = outputs_and_grads(block, block, x, cond, grads)
    for i, (g, lp, f) in enumerate(zip(got, lowp, ref64, strict=True)):
        assert_close_lowp(g, lp, f, f"block {dtype} {cond_kind} output/grad {i}")
