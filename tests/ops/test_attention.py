"""artrt.ops.causal_attention against its reference: raster and arbitrary orders, strict and
not, GQA, any T, every head dim; the block-skip tables; opcheck, compile, bad input."""

from __future__ import annotations

import math
import sys

import pytest
import torch
import torch.nn.functional as F
from artrt.kernels import attention as kattn

from artrt import backends
from artrt.ops.attention import (
    HEAD_DIMS,
    causal_attention,
    causal_attention_backward_ref,
    causal_attention_op,
    causal_attention_ref,
    random_order,
    raster_order,
    subscale_order,
    zigzag_order,
)
from artrt.ops.attention_decode import attention_decode
from tests.helpers import DEVICE, assert_close_lowp, kernel_backends, with_layout
from tests.ops.common import assert_backward_uses_forward_backend, no_launch

attention_module = sys.modules["artrt.ops.attention"]  # (artrt.ops.attention is the function)
KERNELS = kernel_backends()
CPU = ["cpu"] if DEVICE == "cpu" else []  # the cpu backend, on the tensors these tests make
FAST = [*CPU, *KERNELS]  # every backend but the reference


def make_qkv(b, h, hk, t, d, dtype=torch.float32, device=DEVICE, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v, g = (torch.randn(shape, generator=gen) for shape in
                  ((b, h, t, d), (b, hk, t, d), (b, hk, t, d), (b, h, t, d)))
    return tuple(x.to(device=device, dtype=dtype) for x in (q, k, v, g))


def make_order(kind, b, t, device=DEVICE, seed=0):
    """Ranks of ``kind``: None (raster), raster, zigzag, subscale, random, random-batch."""
    gen = torch.Generator().manual_seed(seed)
    if kind is None:
        return None
    if kind == "raster":
        return raster_order(t, device)
    if kind == "zigzag":  # rows of width w; a last partial row keeps raster ranks
        w = 16
        full = (t // w) * w
        rank = torch.arange(t)
        if full:
            rank[:full] = zigzag_order(t // w, w)
        return rank.to(device)
    if kind == "subscale":
        side = math.isqrt(t)
        assert side * side == t and side % 2 == 0
        return subscale_order(side, side, 2, device)
    if kind == "random":
        return random_order(t, gen, device)
    if kind == "random-batch":
        return torch.stack([random_order(t, gen) for _ in range(b)]).to(device)
    raise ValueError(kind)


def run(fn, q, k, v, g, **kwargs):
    """Output and (dq, dk, dv) for one upstream gradient."""
    q, k, v = (x.detach().requires_grad_() for x in (q, k, v))
    out = fn(q, k, v, **kwargs)
    return (out.detach(), *torch.autograd.grad(out, (q, k, v), g))


def assert_all_close(got, want, atol=2e-5, rtol=1e-4):
    for a, b, what in zip(got, want, ("out", "dq", "dk", "dv"), strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype, what
        torch.testing.assert_close(a, b, atol=atol, rtol=rtol, msg=what)


# --------------------------------------------------------------------------- reference


def test_reference_matches_sdpa_causal():
    q, k, v, _ = make_qkv(2, 4, 4, 19, 8, torch.float64, "cpu")
    want = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(causal_attention_ref(q, k, v), want)


@pytest.mark.parametrize("strict", [False, True])
def test_reference_matches_dense_mask(strict):
    """The ranks rule written out entry by entry, and GQA as repeated kv heads."""
    t = 11
    q, k, v, _ = make_qkv(1, 4, 2, t, 8, torch.float64, "cpu")
    order = make_order("random", 1, t, "cpu")
    mask = torch.tensor([[order[j] < order[i] if strict else order[j] <= order[i]
                          for j in range(t)] for i in range(t)])
    kk, vv = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    s = (q @ kk.transpose(-1, -2) / math.sqrt(8)).masked_fill(~mask, float("-inf"))
    want = torch.nan_to_num(torch.softmax(s, -1)) @ vv  # rows with no key: 0
    torch.testing.assert_close(causal_attention_ref(q, k, v, order=order, strict=strict), want)


@pytest.mark.parametrize("order_kind,strict", [(None, False), (None, True),
                                               ("random-batch", False), ("random", True)])
def test_gradcheck_reference(order_kind, strict):
    q, k, v, _ = make_qkv(2, 2, 1, 6, 3, torch.float64, "cpu")
    order = make_order(order_kind, 2, 6, "cpu")
    inputs = tuple(x.requires_grad_() for x in (q, k, v))
    assert torch.autograd.gradcheck(
        lambda q, k, v: causal_attention(q, k, v, 0.7, order, strict=strict,
                                         backend="reference"), inputs)


@pytest.mark.parametrize("order_kind,strict", [(None, False), ("random-batch", True)])
def test_backward_ref_matches_autograd(order_kind, strict):
    q, k, v, g = make_qkv(2, 4, 2, 7, 5, torch.float64, "cpu")
    order = make_order(order_kind, 2, 7, "cpu")
    want = run(causal_attention_ref, q, k, v, g, order=order, strict=strict, scale=0.4)[1:]
    got = causal_attention_backward_ref(g, q, k, v, 0.4, order, strict)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)


def test_order_helpers():
    assert zigzag_order(3, 4).view(3, 4).tolist() == [[0, 1, 2, 3], [7, 6, 5, 4],
                                                     [8, 9, 10, 11]]
    assert subscale_order(4, 4, 2).view(4, 4).tolist() == [[0, 4, 1, 5], [8, 12, 9, 13],
                                                           [2, 6, 3, 7], [10, 14, 11, 15]]
    assert raster_order(5).tolist() == [0, 1, 2, 3, 4]
    r = random_order(50, torch.Generator().manual_seed(1))
    assert sorted(r.tolist()) == list(range(50))
    with pytest.raises(ValueError, match="multiples of stride"):
        subscale_order(5, 4, 2)


def test_raster_order_equals_none():
    q, k, v, g = make_qkv(1, 2, 2, 9, 4, device="cpu")
    assert_all_close(run(causal_attention, q, k, v, g, order=raster_order(9)),
                     run(causal_attention, q, k, v, g))


# --------------------------------------------------------------------------- kernels


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("d", HEAD_DIMS)
def test_kernel_head_dims(backend, d):
    q, k, v, g = make_qkv(1, 2, 1, 129, d)
    assert_all_close(run(causal_attention, q, k, v, g, backend=backend),
                     run(causal_attention_ref, q, k, v, g))


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("t", [1, 17, 128, 129, 1000])
@pytest.mark.parametrize("order_kind,strict", [(None, False), (None, True), ("random", False),
                                               ("zigzag", True)])
def test_kernel_lengths_and_orders(backend, t, order_kind, strict):
    q, k, v, g = make_qkv(1, 1, 1, t, 16, seed=t)
    order = make_order(order_kind, 1, t)
    kwargs = dict(order=order, strict=strict)
    assert_all_close(run(causal_attention, q, k, v, g, backend=backend, **kwargs),
                     run(causal_attention_ref, q, k, v, g, **kwargs))


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("hk", [1, 2, 4])
@pytest.mark.parametrize("order_kind,strict", [(None, False), ("random-batch", True),
                                               ("subscale", False)])
def test_kernel_gqa_and_batched_orders(backend, hk, order_kind, strict):
    q, k, v, g = make_qkv(2, 4, hk, 100 if order_kind != "subscale" else 144, 32)
    order = make_order(order_kind, 2, q.shape[2])
    kwargs = dict(order=order, strict=strict, scale=0.3)
    assert_all_close(run(causal_attention, q, k, v, g, backend=backend, **kwargs),
                     run(causal_attention_ref, q, k, v, g, **kwargs))


@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("blocks", [(16, 64, 32, 16), (64, 16, 16, 64)])
@pytest.mark.parametrize("order_kind,strict", [(None, False), (None, True), ("random", True)])
def test_kernel_other_block_sizes(backend, blocks, order_kind, strict, monkeypatch):
    """Query and key blocks of different sizes, both ways round, in both passes: the diagonal
    skip bounds and the block lists hold for any sizes."""
    for name, size in zip(("fwd_m", "fwd_n", "bwd_m", "bwd_n"), blocks, strict=True):
        monkeypatch.setitem(kattn.CONFIG_FP32, name, size)
    q, k, v, g = make_qkv(1, 2, 1, 100, 16)
    order = make_order(order_kind, 1, 100)
    kwargs = dict(order=order, strict=strict)
    assert_all_close(run(causal_attention, q, k, v, g, backend=backend, **kwargs),
                     run(causal_attention_ref, q, k, v, g, **kwargs))


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("layout", ["strided", "permuted"])
def test_kernel_non_contiguous(backend, layout):
    q, k, v, g = make_qkv(2, 2, 1, 70, 16)
    nc = [with_layout(x, layout) for x in (q, k, v, g)]
    assert not any(x.is_contiguous() for x in nc)
    order = make_order("random", 2, 70)
    got = run(causal_attention, *nc, backend=backend, order=order)
    assert got[0].is_contiguous()
    assert_all_close(got, run(causal_attention_ref, q, k, v, g, order=order))


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("order_kind,strict", [(None, False), ("random", False),
                                               ("zigzag", True)])
def test_kernel_16bit(backend, dtype, order_kind, strict):
    """fp16 and bf16 under the tolerance rule, forward and backward. bf16 also under the
    Triton 3.9 interpreter, whose own bf16 tl.dot is wrong (~1e9): the kernels take bf16
    operands through fp32 there."""
    q, k, v, g = make_qkv(1, 2, 1, 70, 32, dtype)
    order = make_order(order_kind, 1, 70)
    kwargs = dict(order=order, strict=strict)
    fp32 = run(causal_attention_ref, q.float(), k.float(), v.float(), g.float(), **kwargs)
    lowp = run(causal_attention_ref, q, k, v, g, **kwargs)
    got = run(causal_attention, q, k, v, g, backend=backend, **kwargs)
    for a, lp, f, what in zip(got, lowp, fp32, ("out", "dq", "dk", "dv"), strict=True):
        assert a.dtype == dtype
        assert_close_lowp(a, lp, f, f"{dtype} {order_kind} {what}")


@pytest.mark.parametrize("backend", ["reference", *FAST])
def test_rows_without_keys_are_zero(backend):
    """Strict: the first position (raster) or the rank-0 position sees nothing -> zeros, no
    gradient, no nan anywhere."""
    q, k, v, g = make_qkv(1, 2, 2, 20, 16)
    order = make_order("random", 1, 20)
    for kw, first in ((dict(), 0), (dict(order=order), int(order.argmin()))):
        out, dq, dk, dv = run(causal_attention, q, k, v, g, strict=True, backend=backend, **kw)
        assert all(torch.isfinite(x).all() for x in (out, dq, dk, dv))
        assert (out[:, :, first] == 0).all() and (dq[:, :, first] == 0).all()
    out = causal_attention(q[:, :, :1], k[:, :, :1], v[:, :, :1], strict=True, backend=backend)
    assert (out == 0).all()


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("strict", [False, True])
def test_autoregressive_property(backend, strict):
    """Output i depends on k_j, v_j, q_j exactly where the order allows (checked through the
    Jacobian): no leak, no blind spot. A row that sees one key has a softmax of 1 whatever
    its score, so its dq and dk are 0: exactly on the Triton kernels, up to rounding (the
    backward's rowsum(dO * O) against dO . v) in aten's CPU flash kernel."""
    t = 9
    q, k, v, _ = make_qkv(1, 1, 1, t, 16)
    order = make_order("random", 1, t, seed=3)
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    out = causal_attention(q, k, v, order=order, strict=strict, backend=backend)
    # |dO . v - rowsum(dO * O)| ~ D eps |v|, times |q| scale, summed over D = 16: ~ 1e-5
    noise = 1e-5 if backend == "cpu" else 0.0
    for i in range(t):
        dq, dk, dv = torch.autograd.grad(out[0, 0, i].sum(), (q, k, v), retain_graph=True)
        seen = [bool(order[j] < order[i]) if strict else bool(order[j] <= order[i])
                for j in range(t)]
        one_key = sum(seen) == 1
        assert [bool(x.abs().sum() > 0) for x in dv[0, 0]] == seen
        assert [bool(x.abs().sum() > (noise if one_key else 0)) for x in dk[0, 0]] == (
            seen if sum(seen) > 1 else [False] * t)
        assert [bool(x.abs().sum() > 0) for x in dk[0, 0]] <= seen  # unseen keys: exactly 0
        assert [bool(x.abs().sum() > (noise if one_key else 0)) for x in dq[0, 0]] == [
            j == i and sum(seen) > 1 for j in range(t)]
        assert not dq[0, 0, [j for j in range(t) if j != i]].any()


# --------------------------------------------------------------------------- cpu backend


def spy(monkeypatch, module, *names: str) -> list[str]:
    """Record, in order, every call of ``module.<name>`` for each name (still called)."""
    calls = []
    for name in names:
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _name=name, _real=real, **kw:
                            calls.append(_name) or _real(*a, **kw))
    return calls


def via_op(q, k, v, scale=None, order=None, strict=False):
    """causal_attention through the torch.library op with the cpu backend (what torch.compile
    and opcheck run), not the direct call the public function makes in eager mode."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    return causal_attention_op(q, k, v, order, scale, strict, "cpu")[0]


PATHS = {"direct": lambda q, k, v, **kw: causal_attention(q, k, v, backend="cpu", **kw),
         "op": via_op}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("order_kind", [None, "raster", "zigzag", "random", "random-batch"])
@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("b,h,hk,t,d", [(2, 4, 2, 37, 8), (1, 2, 1, 1, 59), (3, 4, 1, 97, 16),
                                        (2, 2, 2, 2, 3)])
def test_cpu_matches_reference_fp64(path, order_kind, strict, b, h, hk, t, d):
    """Forward and backward in float64 (the kernel's own precision: the saved fp32 lse is
    recomputed), odd T and D, GQA, every order, strict; contiguous results on both paths."""
    q, k, v, g = make_qkv(b, h, hk, t, d, torch.float64, "cpu", seed=t)
    kwargs = dict(order=make_order(order_kind, b, t, "cpu"), strict=strict, scale=0.3)
    got = run(PATHS[path], q, k, v, g, **kwargs)
    want = run(causal_attention_ref, q, k, v, g, **kwargs)
    for a, w, what in zip(got, want, ("out", "dq", "dk", "dv"), strict=True):
        assert a.is_contiguous() or path == "direct" and what != "out", what
        torch.testing.assert_close(a, w, msg=what)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("order_kind,strict", [(None, False), (None, True),
                                               ("random-batch", False), ("random", True)])
def test_cpu_gradcheck(path, order_kind, strict):
    q, k, v, _ = make_qkv(2, 2, 1, 6, 3, torch.float64, "cpu")
    order = make_order(order_kind, 2, 6, "cpu")
    inputs = tuple(x.requires_grad_() for x in (q, k, v))
    assert torch.autograd.gradcheck(
        lambda q, k, v: PATHS[path](q, k, v, scale=0.7, order=order, strict=strict), inputs)


@pytest.mark.parametrize("layout", ["strided", "permuted"])
@pytest.mark.parametrize("order_kind,strict", [(None, False), (None, True), ("random", True)])
def test_cpu_non_contiguous(layout, order_kind, strict):
    q, k, v, g = make_qkv(2, 4, 2, 70, 16, device="cpu")
    nc = [with_layout(x, layout) for x in (q, k, v, g)]
    order = make_order(order_kind, 2, 70, "cpu")
    for path in PATHS.values():
        got = run(path, *nc, order=order, strict=strict)
        assert got[0].is_contiguous()
        assert_all_close(got, run(causal_attention_ref, q, k, v, g, order=order, strict=strict))


@pytest.mark.parametrize("order_kind,strict", [(None, False), (None, True),
                                               ("random-batch", True)])
def test_cpu_fallbacks(monkeypatch, order_kind, strict):
    """Where torch's flash kernels take no GQA (heads repeated, gradients summed per group)
    or do not exist (the reference runs), the cpu backend gives the same results."""
    q, k, v, g = make_qkv(2, 4, 2, 33, 8, torch.float64, "cpu")
    kwargs = dict(order=make_order(order_kind, 2, 33, "cpu"), strict=strict)
    want = run(causal_attention_ref, q, k, v, g, **kwargs)
    monkeypatch.setattr(attention_module, "_flash_takes_gqa", lambda: False)
    calls = spy(monkeypatch, torch.Tensor, "repeat_interleave")
    for path in PATHS.values():
        for a, w in zip(run(path, q, k, v, g, **kwargs), want, strict=True):
            torch.testing.assert_close(a, w)
    assert calls  # the fallback ran
    monkeypatch.setattr(attention_module, "_FLASH", None)
    monkeypatch.setattr(attention_module, "_FLASH_BWD", None)
    for path in PATHS.values():
        for a, w in zip(run(path, q, k, v, g, **kwargs), want, strict=True):
            torch.testing.assert_close(a, w)


def test_cpu_flash_takes_gqa_here():
    """torch 2.13's CPU flash kernels take fewer kv heads (the fast path is the one used)."""
    assert attention_module._flash_takes_gqa()


# --------------------------------------------------------------------------- block skipping


def test_block_table_raster_is_lower_triangle():
    t = 300
    vis = kattn.visible_blocks(raster_order(t)[None], 64, 64, strict=False)[0]
    n = vis.shape[0]
    assert torch.equal(vis, torch.ones(n, n, dtype=torch.bool).tril())
    vis = kattn.visible_blocks(raster_order(t)[None], 64, 32, strict=True)[0]
    want = torch.tensor([[kb * 32 < min(qb * 64 + 63, t - 1) for kb in range(vis.shape[1])]
                         for qb in range(vis.shape[0])])
    assert torch.equal(vis, want)


def test_block_table_zigzag_costs_what_raster_costs():
    """A zig-zag scan of 64-wide rows visits exactly raster's blocks; a subscale order of a
    64 x 64 image (stride 4) visits 2560 block pairs, 23% more than raster's 2080 and well
    under the 4096 of a dense mask; only a random order needs them all."""
    raster = kattn.visible_blocks(raster_order(64 * 64)[None], 64, 64, strict=False)
    zigzag = kattn.visible_blocks(zigzag_order(64, 64)[None], 64, 64, strict=False)
    assert torch.equal(raster, zigzag)
    sub = kattn.visible_blocks(subscale_order(64, 64, 4)[None], 64, 64, strict=False)
    assert raster.sum() == 64 * 65 // 2 and sub.sum() == 2560
    rand = kattn.visible_blocks(random_order(64 * 64)[None], 64, 64, strict=False)
    assert rand.all()


def test_block_lists():
    vis = torch.tensor([[[True, False, True, False], [False, False, False, False]]])
    lists, counts = kattn._block_lists(vis)
    assert counts.tolist() == [[2, 0]]
    assert lists[0, 0, :2].tolist() == [0, 2]


def test_block_table_matches_dense_mask():
    """A block pair is listed iff the dense mask has a True in it."""
    t, bq, bk = 150, 64, 32
    order = make_order("random", 1, t, "cpu", seed=5)
    for strict in (False, True):
        vis = kattn.visible_blocks(order[None], bq, bk, strict)[0]
        dense = order[None, :] < order[:, None] if strict else order[None, :] <= order[:, None]
        for qb in range(vis.shape[0]):
            for kb in range(vis.shape[1]):
                block = dense[qb * bq:(qb + 1) * bq, kb * bk:(kb + 1) * bk]
                assert bool(vis[qb, kb]) == bool(block.any())


# --------------------------------------------------------------------------- dispatch


@pytest.mark.parametrize("grad", [False, True])
def test_default_backend_on_cpu_is_cpu(monkeypatch, grad):
    """No backend forced, CPU tensors: the cpu backend runs, called directly (its backward
    is autograd's, through the flash kernel's own backward node), not the op or the Triton
    launchers."""
    q, k, v, g = make_qkv(1, 2, 2, 5, 4, device="cpu")
    calls = spy(monkeypatch, attention_module, "_cpu_forward", "_cpu_backward",
                "causal_attention_op")
    with no_launch(monkeypatch, kattn, "causal_attention_fwd", "causal_attention_bwd"):
        if grad:
            got, want = run(causal_attention, q, k, v, g), run(causal_attention_ref, q, k, v, g)
            assert_all_close(got, want)
            assert "ScaledDotProductFlashAttentionForCpuBackward" in type(
                causal_attention(*(x.requires_grad_() for x in (q, k, v))).grad_fn).__name__
        else:
            torch.testing.assert_close(causal_attention(q, k, v), causal_attention_ref(q, k, v))
    assert calls == ["_cpu_forward"] * (2 if grad else 1)


def test_backward_uses_forward_backend(monkeypatch):
    q, k, v, _ = make_qkv(1, 2, 2, 5, 16)
    q.requires_grad_()
    assert_backward_uses_forward_backend(monkeypatch, kattn, "causal_attention_bwd",
                                         lambda: causal_attention(q, k, v))


def test_forced_backend_cannot_run():
    q, k, v, _ = make_qkv(1, 1, 1, 4, 4, torch.float64, DEVICE)
    with pytest.raises(backends.BackendUnavailableError, match="float64"):
        causal_attention(q, k, v, backend="triton")
    with pytest.raises(backends.BackendUnavailableError, match="no implementation"):
        causal_attention(q, k, v, backend="cuda")


# --------------------------------------------------------------------------- bad input


def test_bad_input():
    q, k, v, _ = make_qkv(2, 4, 2, 6, 8, device="cpu")
    with pytest.raises(ValueError, match=r"q must have shape \(B, H, T, D\)"):
        causal_attention(q[0], k, v)
    with pytest.raises(ValueError, match="k and v must have the same shape"):
        causal_attention(q, k, v[:, :1])
    with pytest.raises(ValueError, match=r"k must have shape \(B, Hk, T, D\)"):
        causal_attention(q, k[:, :, :5], v[:, :, :5])
    with pytest.raises(ValueError, match="multiple of k's and v's 3"):
        causal_attention(q, *make_qkv(2, 3, 3, 6, 8, device="cpu")[1:3])
    with pytest.raises(TypeError, match="k must have q's dtype"):
        causal_attention(q, k.double(), v)
    with pytest.raises(TypeError, match="floating-point"):
        causal_attention(q.long(), k.long(), v.long())
    with pytest.raises(ValueError, match="k must be on q's device"):
        causal_attention(q, k.to("meta"), v)
    with pytest.raises(ValueError, match=r"head dim D must be in \[1, 128\].*got 129"):
        causal_attention(*make_qkv(1, 1, 1, 3, 129, device="cpu")[:3])
    with pytest.raises(TypeError, match="q must be a torch.Tensor"):
        causal_attention(q.tolist(), k, v)
    with pytest.raises(TypeError, match="strict must be a bool"):
        causal_attention(q, k, v, strict=1)
    with pytest.raises(TypeError, match="scale must be a float"):
        causal_attention(q, k, v, scale="0.1")
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="scale must be finite"):
            causal_attention(q, k, v, scale=bad)
    with pytest.raises(TypeError, match="order must be an int32 or int64"):
        causal_attention(q, k, v, order=torch.arange(6.0))
    with pytest.raises(ValueError, match=r"order must have shape \(T,\) = \(6,\)"):
        causal_attention(q, k, v, order=torch.arange(5))


@pytest.mark.parametrize("backend", ["reference", *FAST])
def test_order_not_a_permutation(backend):
    q, k, v, _ = make_qkv(2, 2, 2, 6, 16)
    for bad in (torch.tensor([0, 1, 1, 2, 3, 4]), torch.tensor([1, 2, 3, 4, 5, 6]),
                torch.stack([torch.arange(6), torch.tensor([0, 0, 0, 0, 0, 0])])):
        with pytest.raises(ValueError, match="permutation of the ranks 0..5"):
            causal_attention(q, k, v, order=bad.to(q.device), backend=backend)


def test_bad_grad_out():
    q, k, v, g = make_qkv(1, 2, 2, 5, 4, device="cpu")
    out, lse = causal_attention_op(q, k, v, None, 0.5, False, "auto")
    with pytest.raises(ValueError, match="grad_out must be"):
        torch.ops.artrt.causal_attention_backward(g[:, :1], q, k, v, out, lse, None, 0.5,
                                                  False, "auto")
    with pytest.raises(ValueError, match="lse must be float32"):
        torch.ops.artrt.causal_attention_backward(g, q, k, v, out, lse.double(), None, 0.5,
                                                  False, "auto")


# --------------------------------------------------------------------------- torch.library


@pytest.mark.parametrize("backend", ["reference", *FAST])
@pytest.mark.parametrize("order_kind,strict", [(None, False), ("random-batch", True)])
def test_opcheck(backend, order_kind, strict):
    q, k, v, g = make_qkv(2, 2, 1, 20, 16)
    order = make_order(order_kind, 2, 20)
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    torch.library.opcheck(torch.ops.artrt.causal_attention.default,
                          (q, k, v, order, 0.25, strict, backend))
    out, lse = causal_attention_op(q.detach(), k.detach(), v.detach(), order, 0.25, strict,
                                   backend)
    torch.library.opcheck(torch.ops.artrt.causal_attention_backward.default,
                          (g, q.detach(), k.detach(), v.detach(), out, lse, order, 0.25,
                           strict, backend))


@pytest.mark.parametrize("backend", [None, *FAST])
def test_torch_compile_fullgraph(backend):
    torch._dynamo.reset()
    q, k, v, g = make_qkv(1, 2, 1, 24, 16)
    order = make_order("random", 1, 24)

    def block(q, k, v):
        a = causal_attention(q * 2.0, k, v, order=order, backend=backend)
        return causal_attention(a, k, v, strict=True, backend=backend) + 1.0

    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    assert_all_close(run(lambda *x: compiled(*x), q, k, v, g), run(block, q, k, v, g))


# --------------------------------------------------------------------------- GPU, real shapes


GPU_ORDERS = [(None, False), ("random", False), ("zigzag", True)]
# Each case compiles three kernels (forward, dK/dV, dQ): bf16 at every head dim with the
# orders in turn and every order at D = 128 (the tiles that spill); fp16 and fp32 (IEEE
# products, halved tiles) with each order once, at three head dims.
GPU_CASES = [
    *[(torch.bfloat16, d, *GPU_ORDERS[i % 3]) for i, d in enumerate(HEAD_DIMS)],
    (torch.bfloat16, 128, "random", False), (torch.bfloat16, 128, "zigzag", True),
    (torch.float16, 64, None, False), (torch.float16, 128, "random", False),
    (torch.float16, 48, "zigzag", True),
    (torch.float32, 32, None, False), (torch.float32, 80, "random", False),
    (torch.float32, 128, "zigzag", True),
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,d,order_kind,strict", GPU_CASES)
def test_gpu_real_shapes(dtype, d, order_kind, strict):
    b, h, hk, t = 2, 8, 2, 1000
    q, k, v, g = make_qkv(b, h, hk, t, d, dtype, "cuda")
    order = make_order(order_kind, b, t, "cuda")
    kwargs = dict(order=order, strict=strict)
    got = run(causal_attention, q, k, v, g, backend="triton", **kwargs)
    fp32 = run(causal_attention_ref, *(x.float() for x in (q, k, v, g)), **kwargs)
    if dtype == torch.float32:
        assert_all_close(got, fp32, atol=1e-4, rtol=1e-4)
        return
    lowp = run(causal_attention_ref, q, k, v, g, **kwargs)
    for a, lp, f, what in zip(got, lowp, fp32, ("out", "dq", "dk", "dv"), strict=True):
        assert_close_lowp(a, lp, f, f"{dtype} D={d} {order_kind} {what}")


@pytest.mark.gpu
@pytest.mark.parametrize("t", [4096, 4097])
def test_gpu_long_sequence_bf16(t):
    q, k, v, g = make_qkv(1, 4, 1, t, 128, torch.bfloat16, "cuda")
    got = run(causal_attention, q, k, v, g, backend="triton")
    fp32 = run(causal_attention_ref, *(x.float() for x in (q, k, v, g)))
    lowp = run(causal_attention_ref, q, k, v, g)
    for a, lp, f, what in zip(got, lowp, fp32, ("out", "dq", "dk", "dv"), strict=True):
        assert_close_lowp(a, lp, f, f"T={t} {what}")


@pytest.mark.parametrize("backend", ["reference", *FAST])
@pytest.mark.parametrize("shape", [(0, 2, 5, 16), (1, 2, 0, 16), (3, 2, 0, 16)])
@pytest.mark.parametrize("order_kind", [None, "shared", "batched"])
@pytest.mark.parametrize("strict", [False, True])
def test_empty(backend, shape, order_kind, strict):
    """No batch or no position (T = 0), in raster order and with a (T,) or (B, T) order:
    empty output and empty gradients of the right shapes."""
    b, h, t, d = shape
    q = torch.randn(shape, device=DEVICE, requires_grad=True)
    kv = torch.randn(b, 1, t, d, device=DEVICE, requires_grad=True)  # GQA: Hk = 1
    order = {None: None, "shared": raster_order(t, DEVICE),
             "batched": raster_order(t, DEVICE).repeat(b, 1)}[order_kind]
    out = causal_attention(q, kv, kv, order=order, strict=strict, backend=backend)
    out.sum().backward()
    assert out.shape == shape and q.grad.shape == shape and kv.grad.shape == kv.shape


@pytest.mark.parametrize("backend", KERNELS)
def test_too_many_heads_for_the_grid(backend):
    q = torch.randn(65536, 1, 1, 16, device=DEVICE)
    with pytest.raises(ValueError, match="at most 65535"):
        causal_attention(q, q, q, backend=backend)
    cache = torch.zeros(65536, 1, 4, 16, device=DEVICE)
    with pytest.raises(ValueError, match="at most 65535"):
        attention_decode(q, cache, cache.clone(), torch.zeros(65536, dtype=torch.int32,
                                                               device=DEVICE), backend=backend)
