"""artrt.ops.dmol: the discretized mixture of logistics NLL (forward, gradient) and sampler
against their references, every backend, for L = 256 levels and others (binary L = 2, 17);
the NLL as a distribution over the L levels; the sampler against the model's own
probabilities."""

from __future__ import annotations

import math

import artrt.kernels.dmol as kdmol
import pytest
import torch

from artrt import backends
from artrt.ops.dmol import (
    dmol_convert_layer,
    dmol_layout_index,
    dmol_nll,
    dmol_nll_backward_ref,
    dmol_nll_ref,
    dmol_sample,
    dmol_sample_ref,
)
from tests.helpers import DEVICE, assert_close_lowp, kernel_backends, with_layout
from tests.ops.common import assert_backward_uses_forward_backend, no_launch

KERNELS = kernel_backends()

# Under the interpreter (numpy) the kernels' sigmoid of a very negative argument overflows
# exp2 to inf on purpose (1 / (1 + inf) = 0); numpy says so each time.
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in exp2:RuntimeWarning")


def n_params(channels: int, k: int) -> int:
    return (10 if channels == 3 else 3) * k


def on_grid(index, levels: int):
    """Level indices i (a tensor) -> values (2i - (L - 1)) / (L - 1) of the L-level grid."""
    return (2.0 * index - (levels - 1)) / (levels - 1)


def make(b, channels, k, h, w, dtype=torch.float32, device=DEVICE, seed=0, extreme=False,
         levels=256):
    """params (B, P, H, W), x on the L-level grid with both edge levels present, and an
    upstream gradient (B,). ``extreme``: log-scales far below the clamp and far above 0,
    means far outside [-1, 1]."""
    gen = torch.Generator().manual_seed(seed)
    params = torch.randn(b, n_params(channels, k), h, w, generator=gen, dtype=torch.float64)
    ls = slice(k + channels * k, k + 2 * channels * k)
    params[:, ls] = params[:, ls] * 1.5 - 2.5  # mostly narrow components, some clamped
    if extreme:  # a third of the log-scales clamped (-30), a third wide (12); means x40
        which = torch.randint(0, 3, params[:, ls].shape, generator=gen)
        params[:, ls] = torch.where(which == 0, -30.0, torch.where(which == 1, 12.0,
                                                                   params[:, ls]))
        params[:, k:k + channels * k] *= 40.0
    index = torch.randint(0, levels, (b, channels, h, w), generator=gen)
    index.view(b, -1)[:, 0] = 0
    index.view(b, -1)[:, -1] = levels - 1
    if h * w > 2:
        index.view(b, -1)[:, 1] = levels - 1
    x = on_grid(index, levels)
    grad = torch.randn(b, generator=gen, dtype=torch.float64)
    out_dtype = torch.promote_types(dtype, torch.float32)
    return (params.to(device=device, dtype=dtype), x.to(device=device, dtype=torch.float32),
            grad.to(device=device, dtype=out_dtype))


def run(fn, params, x, k, grad, **kw):
    """NLL and its gradient with respect to params for one upstream gradient."""
    p = params.detach().requires_grad_()
    out = fn(p, x, k, **kw)
    (g,) = torch.autograd.grad(out, p, grad)
    return out.detach(), g


def assert_matches(got, want, what=""):
    """Forward to 1e-5 relative; gradient to 1e-5 of its largest entry (an element-wise
    relative bound means nothing for entries that are ~0)."""
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=0.0, msg=f"nll {what}")
    scale = want[1].abs().max().item()
    torch.testing.assert_close(got[1].to(want[1].dtype), want[1], rtol=1e-5, atol=1e-5 * scale,
                               msg=f"grad {what}")


# --------------------------------------------------------------------------- reference


def test_reference_values():
    """One pixel, one logistic(0, 1), by hand: a middle bin, both edge bins, grayscale."""
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    params = torch.tensor([0.3, 0.0, 0.0], dtype=torch.float64).view(1, 3, 1, 1)
    for level, p in ((128, sig(1 / 255 + 1 / 255) - sig(1 / 255 - 1 / 255)),
                     (0, sig(-1 + 1 / 255)), (255, 1 - sig(1 - 1 / 255))):
        x = torch.full((1, 1, 1, 1), (2 * level - 255) / 255, dtype=torch.float64)
        torch.testing.assert_close(dmol_nll_ref(params, x, 1),
                                   torch.tensor([-math.log(p)], dtype=torch.float64))
    # RGB, two components: -log sum_k pi_k prod_c P_ck, the G / B means shifted by R and G.
    params = torch.zeros(1, 20, 1, 1, dtype=torch.float64)
    params[0, :2, 0, 0] = torch.tensor([0.0, math.log(3.0)])  # pi = 1/4, 3/4
    params[0, 3, 0, 0] = 0.2  # mean of R, component 1
    params[0, 14:20, 0, 0] = math.atanh(0.5)  # every coefficient 0.5
    xr, xg, xb = 1 / 255, 3 / 255, -5 / 255
    x = torch.tensor([xr, xg, xb], dtype=torch.float64).view(1, 3, 1, 1)

    def bin_mass(v, m):
        return sig(v - m + 1 / 255) - sig(v - m - 1 / 255)

    gb = bin_mass(xg, 0.5 * xr) * bin_mass(xb, 0.5 * xr + 0.5 * xg)
    p = 0.25 * bin_mass(xr, 0.0) * gb + 0.75 * bin_mass(xr, 0.2) * gb
    torch.testing.assert_close(dmol_nll_ref(params, x, 2),
                               torch.tensor([-math.log(p)], dtype=torch.float64))


def test_reference_values_few_levels():
    """One logistic(m, 1) by hand. L = 2: both levels are edge bins split at 0,
    p(-1) = sigmoid(-m), p(1) = 1 - sigmoid(-m). L = 3: bins split at -1/2 and 1/2."""
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    m = 0.3
    params = torch.tensor([0.0, m, 0.0], dtype=torch.float64).view(1, 3, 1, 1)
    cases = {2: {-1.0: sig(-m), 1.0: 1 - sig(-m)},
             3: {-1.0: sig(-0.5 - m), 0.0: sig(0.5 - m) - sig(-0.5 - m), 1.0: 1 - sig(0.5 - m)}}
    for levels, probs in cases.items():
        for value, p in probs.items():
            x = torch.full((1, 1, 1, 1), value, dtype=torch.float64)
            torch.testing.assert_close(dmol_nll_ref(params, x, 1, levels),
                                       torch.tensor([-math.log(p)], dtype=torch.float64))


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("extreme", [False, True])
@pytest.mark.parametrize("levels", [2, 17, 256])
def test_backward_ref_matches_autograd(channels, extreme, levels):
    params, x, grad = make(2, channels, 3, 4, 5, dtype=torch.float64, extreme=extreme,
                           levels=levels)
    x = x.double()
    _, want = run(dmol_nll_ref, params, x, 3, grad, levels=levels)
    got = dmol_nll_backward_ref(grad, params, x, 3, levels)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("levels", [2, 17, 256])
def test_gradcheck_reference(channels, levels):
    params, x, _ = make(2, channels, 2, 2, 3, dtype=torch.float64, device="cpu", levels=levels)
    assert torch.autograd.gradcheck(
        lambda p: dmol_nll(p, x.double(), 2, levels=levels, backend="reference"),
        (params.requires_grad_(),))


def _all_cells(params, channels: int, levels: int):
    """Every value (L ** C of them) of one pixel: x (N, C, 1, 1) and params (1, P, 1, 1)
    repeated N times as a stride-0 batch."""
    index = torch.cartesian_prod(*[torch.arange(levels)] * channels).view(-1, channels)
    x = on_grid(index, levels).float().view(-1, channels, 1, 1).to(params.device)
    return params.expand(len(x), -1, -1, -1), x


@pytest.mark.parametrize("backend", ["reference", *KERNELS])
@pytest.mark.parametrize(("channels", "levels"), [(1, 2), (1, 3), (1, 17), (3, 2), (3, 3)])
@pytest.mark.parametrize("wide", [True, False])
def test_probabilities_sum_to_one(backend, channels, levels, wide):
    """exp(-nll) over all L ** C values of a single pixel sums to 1 (three random models,
    K = 3). ``wide``: log-scales in [-1, 0.5] and means in [-1, 1], so that no bin's mass
    falls below 1e-5: exactly 1. Else narrow components, where the density fallback of the
    inner bins with a mass below 1e-5 (the paper's) moves the sum by less than 1e-5 per level.
    """
    k = 3
    for seed in range(3):
        params, _, _ = make(1, channels, k, 1, 1, dtype=torch.float64, seed=seed)
        if wide:
            gen = torch.Generator().manual_seed(seed)
            params[:, k:k + channels * k] = torch.rand(1, channels * k, 1, 1, generator=gen,
                                                       dtype=torch.float64) * 2 - 1
            params[:, k + channels * k:k + 2 * channels * k] = torch.rand(
                1, channels * k, 1, 1, generator=gen, dtype=torch.float64) * 1.5 - 1
        if backend != "reference":
            params = params.float()
        p, x = _all_cells(params, channels, levels)
        total = torch.exp(-dmol_nll(p, x, k, levels=levels, backend=backend)).sum().item()
        if not wide and levels > 2:
            tol = 1e-5 * (levels - 2) ** channels
        else:
            tol = 1e-12 if params.dtype == torch.float64 else 2e-6
        assert abs(total - 1.0) < tol, f"seed {seed}: sum of probabilities {total!r}"


def test_clamped_log_scale_has_no_gradient():
    params, x, grad = make(1, 3, 2, 3, 3, dtype=torch.float64)
    params[:, 8:14] = -9.0  # every log-scale below the clamp at -7
    _, g = run(dmol_nll_ref, params, x.double(), 2, grad)
    assert (g[:, 8:14] == 0).all() and (g[:, 2:8] != 0).any()
    torch.testing.assert_close(dmol_nll_ref(params, x.double(), 2),
                               dmol_nll_ref(params.clamp(min=-7.0), x.double(), 2))


# --------------------------------------------------------------------------- kernels


@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("k", [1, 5, 10])
@pytest.mark.parametrize("hw", [(1, 1), (7, 33), (33, 7)])
def test_kernel_matches_reference(backend, channels, k, hw):
    params, x, grad = make(2, channels, k, *hw, seed=k)
    want = run(dmol_nll_ref, params, x, k, grad)
    got = run(dmol_nll, params, x, k, grad, backend=backend)
    assert got[0].dtype == torch.float32 and got[1].is_contiguous()
    assert_matches(got, want, f"C={channels} K={k} {hw}")


@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("channels", [3, 1])
def test_kernel_extreme_params(backend, channels):
    """Log-scales of -30 (clamped) and 12, means of +-100: every case of the bin mass."""
    params, x, grad = make(3, channels, 5, 6, 7, extreme=True)
    want = run(dmol_nll_ref, params, x, 5, grad)
    got = run(dmol_nll, params, x, 5, grad, backend=backend)
    assert torch.isfinite(got[0]).all() and torch.isfinite(got[1]).all()
    assert_matches(got, want)


def _bin_mass64(x, mean, log_scale_raw, half_bin):
    """The mass sigmoid(plus) - sigmoid(minus) of x's middle bin, in float64, in the
    reference's cancellation-free form."""
    inv = torch.exp(-torch.clamp(log_scale_raw.double(), min=-7.0))
    centered = x.double() - mean.double()
    plus, minus = inv * (centered + half_bin), inv * (centered - half_bin)
    return torch.sigmoid(plus) * torch.sigmoid(-minus) * -torch.expm1(-(plus - minus))


def _near_the_switch(n: int, seed: int = 0):
    """n grayscale sub-pixels (one per image, K = 1, L = 256) whose middle bin holds a mass of
    1e-5 (1 + r), |r| in [1e-3, 2e-2] of either sign: x 10 to 12 scales below (even index)
    or above (odd index) the mean, bins 0.3 to 4 scales wide. params (n, 3, 1, 1) and x (n, 1, 1, 1)
    float32, and r of those float32 values (computed in float64)."""
    gen = torch.Generator().manual_seed(seed)
    half_bin = 1 / 255
    width = torch.tensor([0.3, 1.0, 2.0, 4.0], dtype=torch.float64)  # bin width in scales
    log_scale = torch.log(2 * half_bin / width)[torch.randint(0, 4, (n,), generator=gen)]
    side = (torch.arange(n) % 2 * 2 - 1).double()  # x - mean < 0: left tail, > 0: right tail
    r = torch.empty(n, dtype=torch.float64).uniform_(math.log(1e-3), math.log(2e-2),
                                                     generator=gen).exp()
    r = torch.where(torch.rand(n, generator=gen) < 0.5, -r, r)
    x = on_grid(torch.randint(20, 236, (n,), generator=gen).double(), 256)
    scale = log_scale.exp()
    lo, hi = torch.zeros(n, dtype=torch.float64), torch.full((n,), 40.0, dtype=torch.float64)
    for _ in range(100):  # bisection on t = |x - mean| / scale: the mass falls as t grows
        t = (lo + hi) / 2
        heavy = _bin_mass64(x, x - side * t * scale, log_scale, half_bin) > 1e-5 * (1 + r)
        lo, hi = torch.where(heavy, t, lo), torch.where(heavy, hi, t)
    mean = (x - side * (lo + hi) / 2 * scale).float()
    params = torch.stack([torch.zeros(n), mean, log_scale.float()], 1).view(n, 3, 1, 1)
    x = x.float().view(n, 1, 1, 1)
    r32 = _bin_mass64(x.view(n), mean, log_scale.float(), half_bin) / 1e-5 - 1
    return params, x, r32


@pytest.mark.parametrize("backend", KERNELS)
def test_kernel_bin_mass_switch_in_the_tails(backend):
    """Sub-pixels whose bin mass is within 0.1 % to 2 % of the 1e-5 switch between the mass
    and the density, in both tails of narrow and wide components: the fp32 kernel takes the
    float64 reference's branch for every one (a wrong branch costs 0.004 to 0.7 nats and a
    jump in the gradient). Per sub-pixel NLL and gradient against float64."""
    n = 128
    params, x, r = _near_the_switch(n)
    assert (r.abs() > 5e-4).all() and (r > 0).any() and (r < 0).any()  # both branches
    grad = torch.ones(n, dtype=torch.float64)
    want = run(dmol_nll_ref, params.double(), x.double(), 1, grad)
    got = run(dmol_nll, params.to(DEVICE), x.to(DEVICE), 1, grad.float().to(DEVICE),
              backend=backend)
    torch.testing.assert_close(got[0].cpu().double(), want[0], rtol=1e-5, atol=0.0)
    torch.testing.assert_close(got[1].cpu().double(), want[1], rtol=1e-5, atol=0.0)


@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("levels", [2, 17, 256])
@pytest.mark.parametrize("extreme", [False, True])
def test_kernel_levels_match_reference(backend, channels, levels, extreme):
    """Forward and gradient for L = 2 (edge bins only), 17 and 256, on an odd shape."""
    params, x, grad = make(2, channels, 3, 5, 3, seed=levels, extreme=extreme, levels=levels)
    want = run(dmol_nll_ref, params, x, 3, grad, levels=levels)
    got = run(dmol_nll, params, x, 3, grad, levels=levels, backend=backend)
    assert torch.isfinite(got[0]).all() and torch.isfinite(got[1]).all()
    assert_matches(got, want, f"L={levels} C={channels}")


@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("layout", ["strided", "permuted", "channels_last"])
def test_kernel_non_contiguous(backend, layout):
    params, x, grad = make(2, 3, 4, 5, 9)
    if layout == "channels_last":
        p_nc = params.contiguous(memory_format=torch.channels_last)
        x_nc = x.contiguous(memory_format=torch.channels_last)
    else:
        p_nc, x_nc = with_layout(params, layout), with_layout(x, layout)
    assert not p_nc.is_contiguous() and not x_nc.is_contiguous()
    want = run(dmol_nll_ref, params, x, 4, grad)
    got = run(dmol_nll, p_nc, x_nc, 4, grad, backend=backend)
    assert_matches(got, want, layout)


@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_kernel_low_precision(backend, dtype):
    params, x, grad = make(2, 3, 5, 6, 11, dtype=dtype)
    fp32 = run(dmol_nll_ref, params.float(), x, 5, grad)
    lowp = run(dmol_nll_ref, params, x, 5, grad)
    got = run(dmol_nll, params, x, 5, grad, backend=backend)
    assert got[0].dtype == torch.float32 and got[1].dtype == dtype
    for g, lp, f, what in zip(got, lowp, fp32, ("nll", "grad"), strict=True):
        assert_close_lowp(g, lp, f, f"dmol {dtype} {what}")


@pytest.mark.parametrize("backend", KERNELS)
def test_kernel_empty(backend):
    params = torch.zeros(2, 30, 0, 4, device=DEVICE)
    x = torch.zeros(2, 3, 0, 4, device=DEVICE)
    torch.testing.assert_close(dmol_nll(params, x, 3, backend=backend), torch.zeros(2))
    assert dmol_sample(params, 3, backend=backend).shape == (2, 3, 0, 4)


# --------------------------------------------------------------------------- sampling


def uniforms_for(params, channels, seed):
    gen = torch.Generator().manual_seed(seed)
    b, _, h, w = params.shape
    return torch.rand(b, 1 + channels, h, w, generator=gen).to(params.device)


@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("k", [1, 5, 10])
def test_sample_kernel_equals_reference(backend, channels, k):
    params, _, _ = make(3, channels, k, 7, 33, seed=k)
    u = uniforms_for(params, channels, k)
    want = dmol_sample_ref(params, u, k)
    got = dmol_sample(params, k, uniforms=u, backend=backend)
    assert got.dtype == torch.float32 and got.shape == (3, channels, 7, 33)
    assert torch.equal(got, want)


@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("levels", [2, 17])
def test_sample_kernel_equals_reference_levels(backend, channels, levels):
    params, _, _ = make(2, channels, 4, 5, 9, seed=levels)
    u = uniforms_for(params, channels, levels)
    want = dmol_sample_ref(params, u, 4, levels)
    got = dmol_sample(params, 4, uniforms=u, levels=levels, backend=backend)
    assert got.shape == (2, channels, 5, 9)
    assert torch.equal(got, want)


@pytest.mark.parametrize("backend", ["reference", *KERNELS])
@pytest.mark.parametrize("levels", [2, 17, 256])
def test_sample_generator_and_grid(backend, levels):
    params, _, _ = make(2, 3, 4, 5, 6)
    a = dmol_sample(params, 4, torch.Generator(DEVICE).manual_seed(7), levels=levels,
                    backend=backend)
    b = dmol_sample(params, 4, torch.Generator(DEVICE).manual_seed(7), levels=levels,
                    backend=backend)
    u = torch.rand(2, 4, 5, 6, generator=torch.Generator(DEVICE).manual_seed(7), device=DEVICE)
    assert torch.equal(a, b) and torch.equal(a, dmol_sample(params, 4, uniforms=u,
                                                            levels=levels, backend=backend))
    assert a.abs().max() <= 1.0
    index = ((a + 1) * (levels - 1) / 2).round()
    assert torch.equal(a, on_grid(index, levels))  # exactly the fp32 values of the levels
    assert index.min() == 0 and index.max() == levels - 1  # both edge levels are drawn
    # the samples are data the NLL accepts
    assert torch.isfinite(dmol_nll(params, a, 4, levels=levels, backend=backend)).all()


def _simple_model(levels: int = 256):
    """One pixel of a 2-component RGB model whose mass sits on a few dozen (r, g, b) cells:
    narrow components (a few bins wide at any L) centred near bin edges, strong R -> G and
    R, G -> B dependence."""
    k = 2
    p = torch.zeros(1, 10 * k, 1, 1, dtype=torch.float64)
    p[0, 0:2, 0, 0] = torch.tensor([0.4, -0.4])  # logits
    p[0, 2:8, 0, 0] = torch.tensor([0.301, -0.5, 0.102, 0.6, 0.21, -0.3])  # means (c, k)
    p[0, 8:14, 0, 0] = torch.tensor([-5.2, -5.6, -5.0, -5.4, -4.9, -5.3])  # log-scales
    p[0, 8:14, 0, 0] += math.log(255 / (levels - 1))  # the same widths in bins
    p[0, 14:20, 0, 0] = torch.tensor([0.9, -0.7, 0.8, 0.6, -1.1, 0.5])  # raw coefficients
    return p, k


def _chi2_against_model(samples, params, k, levels=256):
    """Pearson chi-square of the (r, g, b) counts of ``samples`` (N, 3) against the model's
    probabilities (cells with expected count < 5 pooled), and its degrees of freedom."""
    keys, counts = torch.unique(samples, dim=0, return_counts=True)
    half = (levels - 1) / 2
    lo = ((samples.amin(0) + 1) * half).round().long() - 3  # level indices, 3 levels margin
    hi = ((samples.amax(0) + 1) * half).round().long() + 3
    axes = [torch.arange(max(lo[c].item(), 0), min(hi[c].item(), levels - 1) + 1)
            for c in range(3)]
    grid = on_grid(torch.cartesian_prod(*axes).double(), levels)  # (M, 3) candidate cells
    probs = torch.exp(-dmol_nll_ref(params.expand(len(grid), -1, -1, -1),
                                    grid.view(-1, 3, 1, 1), k, levels))
    assert probs.sum() > 0.999, "the candidate cells must hold the model's mass"
    n = samples.shape[0]
    idx = torch.searchsorted(_cell_keys(grid, levels), _cell_keys(keys.double(), levels))
    observed = torch.zeros(len(grid), dtype=torch.float64)
    observed[idx] = counts.double()
    expected = probs * n
    big = expected >= 5
    obs = torch.cat([observed[big], observed[~big].sum().view(1)])
    exp = torch.cat([expected[big], (n - expected[big].sum()).view(1)])
    return ((obs - exp) ** 2 / exp).sum().item(), int(big.sum())


def _cell_keys(cells, levels):
    index = torch.round((cells + 1) * (levels - 1) / 2).long()
    return (index[:, 0] * levels + index[:, 1]) * levels + index[:, 2]


@pytest.mark.parametrize("backend", ["reference", *KERNELS])
@pytest.mark.parametrize("levels", [256, 17])
def test_sample_distribution_matches_model(backend, levels):
    params, k = _simple_model(levels)
    h, w = 100, 200  # 20000 draws of the same pixel, params broadcast (stride 0)
    big = params.float().to(DEVICE).expand(1, -1, h, w)
    x = dmol_sample(big, k, torch.Generator(DEVICE).manual_seed(0), levels=levels,
                    backend=backend)
    samples = x.view(3, -1).t().double().cpu()
    chi2, df = _chi2_against_model(samples, params, k, levels)
    bound = df + 6 * math.sqrt(2 * df)  # ~6 sigma: deterministic, far below a wrong sampler
    assert chi2 < bound, f"chi-square {chi2:.1f} with {df} dof >= {bound:.1f}"
    # The same statistic catches a sampler that ignores the R -> G dependence.
    wrong = params.clone()
    wrong[0, 14] = 0.0
    x_wrong = dmol_sample_ref(wrong.float().expand(1, -1, h, w),
                              torch.rand(1, 4, h, w, generator=torch.Generator().manual_seed(0)),
                              k, levels)
    chi2_wrong, df_wrong = _chi2_against_model(x_wrong.view(3, -1).t().double(), params, k,
                                               levels)
    assert chi2_wrong > 10 * (df_wrong + 6 * math.sqrt(2 * df_wrong))


# --------------------------------------------------------------------------- memory


def _saved_bytes(fn, params, x, k):
    """Bytes of the tensors autograd saves for backward, beyond the inputs' own storage,
    plus the gradient: what forward + backward must hold at once besides the inputs."""
    inputs = {params.untyped_storage().data_ptr(), x.untyped_storage().data_ptr()}
    storages = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in inputs:
            storages[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(params, x, k)
    (g,) = torch.autograd.grad(out.sum(), params)
    return sum(storages.values()) + g.numel() * g.element_size()


def test_memory_saved_for_backward():
    """B=16, 32x32, K=10 RGB: the reference keeps per-component intermediates alive from the
    forward to the backward; the fused op keeps only its inputs (the kernel backend, where one
    runs, saves the same tensors: autograd around the op is backend-independent)."""
    params, x, _ = make(16, 3, 10, 32, 32, device="cpu")
    params.requires_grad_()
    ref = _saved_bytes(dmol_nll_ref, params, x, 10)
    fused = _saved_bytes(lambda p, x, k: dmol_nll(p, x, k, backend="reference"), params, x, 10)
    assert fused == params.numel() * 4  # the gradient, nothing else
    assert ref >= 5 * fused, f"reference {ref / 2**20:.1f} MiB vs fused {fused / 2**20:.1f} MiB"


# --------------------------------------------------------------------------- dispatch


def test_default_backend_on_cpu_is_reference(monkeypatch):
    params, x, _ = make(2, 3, 2, 3, 4, device="cpu")
    with no_launch(monkeypatch, kdmol, "dmol_nll_fwd", "dmol_sample_fwd"):
        torch.testing.assert_close(dmol_nll(params, x, 2), dmol_nll_ref(params, x, 2))
        dmol_sample(params, 2)


def test_backward_uses_forward_backend(monkeypatch):
    params, x, _ = make(1, 1, 2, 3, 4)
    params.requires_grad_()
    assert_backward_uses_forward_backend(monkeypatch, kdmol, "dmol_nll_bwd",
                                         lambda: dmol_nll(params, x, 2))


def test_forced_backend_cannot_run():
    params, x, _ = make(1, 1, 2, 3, 4, dtype=torch.float64)
    with pytest.raises(backends.BackendUnavailableError, match="float64"):
        dmol_nll(params, x, 2, backend="triton")
    with pytest.raises(backends.BackendUnavailableError, match="no implementation"):
        dmol_sample(params, 2, backend="cuda")


# --------------------------------------------------------------------------- bad input


def test_bad_input():
    params, x, _ = make(2, 3, 2, 3, 4, device="cpu")
    with pytest.raises(ValueError, match="10 \\* num_mix = 30 channels.*got 20"):
        dmol_nll(params, x, 3)
    with pytest.raises(ValueError, match=r"x must have shape \(2, 3, 3, 4\).*got \(2, 1, 3, 4\)"):
        dmol_nll(params, x[:, :1], 2)
    with pytest.raises(ValueError, match="x must have shape"):
        dmol_nll(params, x[:, :, :2], 2)
    with pytest.raises(ValueError, match=r"x must lie in \[-1.0, 1.0\], got values in \[-2, 2\]"):
        dmol_nll(params, x * 2.0, 2)
    with pytest.raises(ValueError, match="quantised to the 256 levels"):
        dmol_nll(params, (x + 1) / 2, 2)  # data in [0, 1] with the 2x - 1 forgotten
    with pytest.raises(TypeError, match="x must be a floating-point.*torch.uint8"):
        dmol_nll(params, torch.zeros(2, 3, 3, 4, dtype=torch.uint8), 2)
    with pytest.raises(TypeError, match="params must be a floating-point.*torch.int64"):
        dmol_nll(params.long(), x, 2)
    with pytest.raises(TypeError, match="num_mix must be an int"):
        dmol_nll(params, x, 2.0)
    with pytest.raises(ValueError, match="num_mix must be >= 1"):
        dmol_nll(params, x, 0)
    with pytest.raises(ValueError, match="4-d"):
        dmol_nll(params[0], x, 2)
    with pytest.raises(TypeError, match="params must be a torch.Tensor"):
        dmol_nll([1.0], x, 2)
    with pytest.raises(ValueError, match="x must be on params' device"):
        dmol_nll(params, x.to("meta"), 2)
    with pytest.raises(ValueError, match="uniforms must have shape \\(2, 4, 3, 4\\)"):
        dmol_sample(params, 2, uniforms=torch.rand(2, 3, 3, 4))
    with pytest.raises(ValueError, match=r"uniforms must lie in \[0.0, 1.0\), got values in"):
        dmol_sample(params, 2, uniforms=torch.rand(2, 4, 3, 4) + 1.0)


@pytest.mark.parametrize("backend", ["reference", *KERNELS])
@pytest.mark.parametrize("bad", ["NaN", "inf", "-inf", "above"])
@pytest.mark.parametrize("channel", [0, 2])
def test_bad_x_values(backend, bad, channel):
    """A NaN, infinite or out-of-range x (one sub-pixel) raises on every backend, through the
    public function and the op."""
    params, x, _ = make(2, 3, 2, 3, 4)
    value = {"NaN": math.nan, "inf": math.inf, "-inf": -math.inf, "above": 1.0 + 2 / 255}[bad]
    x[1, channel, 2, 3] = value
    held = "a NaN" if bad == "NaN" else "values in"
    msg = rf"dmol_nll: x must lie in \[-1.0, 1.0\], got {held}"
    with pytest.raises(ValueError, match=msg):
        dmol_nll(params, x, 2, backend=backend)
    with pytest.raises(ValueError, match=msg):
        torch.ops.artrt.dmol_nll(params, x, 2, 256, backend)


@pytest.mark.parametrize("backend", ["reference", *KERNELS])
@pytest.mark.parametrize("bad", ["NaN", "negative", "one"])
@pytest.mark.parametrize(("channels", "which"), [(3, 0), (3, 2), (1, 0), (1, 1)])
def test_bad_uniforms(backend, bad, channels, which):
    """A NaN or out-of-range uniform, the component's (which = 0) or a channel's, raises on
    every backend instead of becoming a level."""
    params, _, _ = make(2, channels, 3, 3, 4)
    u = uniforms_for(params, channels, 0)
    u[0, which, 1, 2] = {"NaN": math.nan, "negative": -1e-3, "one": 1.0}[bad]
    held = "a NaN" if bad == "NaN" else "values in"
    with pytest.raises(ValueError, match=rf"dmol_sample: uniforms must lie in \[0.0, 1.0\), "
                                         rf"got {held}"):
        dmol_sample(params, 3, uniforms=u, backend=backend)


def _quantity_channel(quantity: str, channels: int, k: int, j: int) -> int:
    """params' channel of entry j of the quantity (layout of artrt.ops.dmol)."""
    start = {"logit": 0, "mean": k, "log-scale": k + channels * k, "coeff": k + 2 * channels * k}
    return start[quantity] + j


@pytest.mark.parametrize("backend", ["reference", *KERNELS])
@pytest.mark.parametrize("bad", ["NaN", "inf"])
@pytest.mark.parametrize(("channels", "quantity", "j"),
                         [(3, "logit", 1), (3, "mean", 0), (3, "mean", 8), (3, "log-scale", 4),
                          (3, "coeff", 2), (1, "logit", 0), (1, "mean", 2), (1, "log-scale", 1)])
def test_sample_non_finite_params(backend, bad, channels, quantity, j):
    """A NaN or infinite logit, mean, log-scale or coefficient raises on every backend: the
    sampler's clamp to [-1, 1] would make a valid-looking level of it (one entry of one
    component at one pixel)."""
    k = 3
    params, _, _ = make(2, channels, k, 3, 4)
    value, held = {"NaN": (math.nan, "a NaN"), "inf": (math.inf, "an infinity")}[bad]
    channel = _quantity_channel(quantity, channels, k, j)
    params[1, channel, 2, 0] = value
    u = uniforms_for(params, channels, 0)
    msg = rf"dmol_sample: params \(logits, means, log-scales, coefficients\) must be finite, " \
          rf"got {held}"
    with pytest.raises(ValueError, match=msg):
        dmol_sample(params, k, uniforms=u, backend=backend)
    with pytest.raises(ValueError, match=msg):
        dmol_sample(params, k, torch.Generator(DEVICE).manual_seed(0), backend=backend)
    with pytest.raises(ValueError, match=msg):
        torch.ops.artrt.dmol_sample(params, u, k, 256, backend)


@pytest.mark.parametrize("fn", ["nll", "sample", "nll_op", "backward_op", "sample_op"])
def test_bad_levels(fn):
    params, x, grad = make(2, 1, 2, 3, 4, device="cpu", levels=2)
    u = uniforms_for(params, 1, 0)
    call = {
        "nll": lambda lv: dmol_nll(params, x, 2, levels=lv),
        "sample": lambda lv: dmol_sample(params, 2, levels=lv),
        "nll_op": lambda lv: torch.ops.artrt.dmol_nll(params, x, 2, lv, "reference"),
        "backward_op": lambda lv: torch.ops.artrt.dmol_nll_backward(grad, params, x, 2, lv,
                                                                    "reference"),
        "sample_op": lambda lv: torch.ops.artrt.dmol_sample(params, u, 2, lv, "reference"),
    }[fn]
    for bad in (1, 0, -256):
        with pytest.raises(ValueError, match=f"levels must be >= 2.*got {bad}"):
            call(bad)
    if fn.endswith("_op"):
        return  # the schema takes an int: the dispatcher refuses other types itself
    for bad, name in ((True, "bool"), (256.0, "float"), ("256", "str"), (None, "NoneType")):
        with pytest.raises(TypeError, match=f"levels must be an int >= 2.*got {name}"):
            call(bad)


def test_x_off_the_level_grid():
    """x must be on the grid of the L it is scored with, and only that one."""
    params, _, _ = make(2, 3, 2, 3, 4, device="cpu")
    x17 = make(2, 3, 2, 3, 4, device="cpu", levels=17)[1]
    x256 = make(2, 3, 2, 3, 4, device="cpu", seed=1)[1]
    assert torch.isfinite(dmol_nll(params, x17, 2, levels=17)).all()
    assert torch.isfinite(dmol_nll(params, x17, 2, levels=33)).all()  # 17 levels lie on 33's
    with pytest.raises(ValueError, match=r"quantised to the 17 levels \(2i - 16\) / 16 "
                                         r"of \[-1, 1\] given by levels = L = 17"):
        dmol_nll(params, x256, 2, levels=17)
    with pytest.raises(ValueError, match="quantised to the 256 levels"):
        dmol_nll(params, x17 * 0.5, 2)
    with pytest.raises(ValueError, match="quantised to the 2 levels"):
        dmol_nll(params, x17, 2, levels=2)  # 0 and the other inner levels are not levels of 2
    x2 = make(2, 3, 2, 3, 4, device="cpu", levels=2)[1]
    assert set(x2.unique().tolist()) == {-1.0, 1.0}
    assert torch.isfinite(dmol_nll(params, x2, 2, levels=2)).all()


# --------------------------------------------------------------------------- reference layout


def openai_layout_nll64(params, x, k):
    """The PixelCNN++ reference code's loss written out in float64, reading params in its
    layout: K logits, then per colour channel c a block of 3K channels (K means, K log-scales,
    K coefficients; channel j's coefficients are a_j). A middle bin's mass is the plain
    difference of two sigmoids (exact enough in float64), edge bins (at +-0.999) take log
    sigmoid in the stable form, the 1e-5 switch to the density. Returns (B,) nats."""
    p, x = params.double(), x.double()
    logits, blocks = p[:, :k], p[:, k:].unflatten(1, (3, 3 * k))  # (B, 3, 3K, H, W)
    means, log_scales = blocks[:, :, :k], blocks[:, :, k:2 * k].clamp(min=-7.0)
    a = torch.tanh(blocks[:, :, 2 * k:])  # a[:, j] = a_j
    xc = x[:, :, None]  # (B, 3, 1, H, W)
    mean = torch.stack([means[:, 0], means[:, 1] + a[:, 0] * xc[:, 0],
                        means[:, 2] + a[:, 1] * xc[:, 0] + a[:, 2] * xc[:, 1]], 1)
    softplus = torch.nn.functional.softplus
    centered, inv = xc - mean, torch.exp(-log_scales)
    plus, minus = inv * (centered + 1 / 255), inv * (centered - 1 / 255)
    mid = inv * centered
    log_pdf = mid - log_scales - 2 * softplus(mid) - math.log(127.5)
    mass = torch.sigmoid(plus) - torch.sigmoid(minus)
    lp = torch.where(xc < -0.999, plus - softplus(plus),  # log sigmoid(plus)
                     torch.where(xc > 0.999, -softplus(minus),  # log(1 - sigmoid(minus))
                                 torch.where(mass > 1e-5, torch.log(mass.clamp(min=1e-300)),
                                             log_pdf)))
    z = torch.log_softmax(logits, 1) + lp.sum(1)
    return -torch.logsumexp(z, 1).sum((1, 2))


def to_openai(params, k):
    return params[:, dmol_layout_index(k, 3, src="artrt", dst="openai")]


@pytest.mark.parametrize("k", [1, 3, 10])
@pytest.mark.parametrize("seed", [0, 1])
def test_openai_layout_matches_reference_code(k, seed):
    """dmol_nll(..., layout="openai") is the reference code's loss on params in its layout,
    value and gradient (float64)."""
    params, x, _ = make(2, 3, k, 5, 6, dtype=torch.float64, seed=seed)
    p_openai = to_openai(params, k).requires_grad_()
    got = dmol_nll(p_openai, x, k, layout="openai", backend="reference")
    (g_got,) = torch.autograd.grad(got.sum(), p_openai)
    p64 = p_openai.detach().requires_grad_()
    want = openai_layout_nll64(p64, x, k)
    (g_want,) = torch.autograd.grad(want.sum(), p64)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=0)
    torch.testing.assert_close(g_got, g_want, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("backend", ["reference", *KERNELS])
def test_openai_layout_is_a_permutation(backend):
    """Every backend: layout="openai" equals the artrt layout on permuted params, loss,
    gradient (permuted back) and samples; grayscale is the same in both layouts."""
    k = 4
    params, x, grad = make(2, 3, k, 3, 5)
    p_openai = to_openai(params, k)
    got = run(lambda p, x, k: dmol_nll(p, x, k, layout="openai", backend=backend),
              p_openai, x, k, grad)
    want = run(lambda p, x, k: dmol_nll(p, x, k, backend=backend), params, x, k, grad)
    assert torch.equal(got[0], want[0])
    assert torch.equal(got[1], to_openai(want[1], k))
    u = uniforms_for(params, 3, 0)
    assert torch.equal(dmol_sample(p_openai, k, uniforms=u, layout="openai", backend=backend),
                       dmol_sample(params, k, uniforms=u, backend=backend))
    grey, xg, _ = make(2, 1, k, 3, 5)
    assert torch.equal(dmol_layout_index(k, 1), torch.arange(3 * k))
    assert torch.equal(dmol_nll(grey, xg, k, layout="openai", backend=backend),
                       dmol_nll(grey, xg, k, backend=backend))


def test_layout_index():
    """The permutation, written out for K = 2; an involution; the identity for src == dst."""
    idx = dmol_layout_index(2, src="openai", dst="artrt")
    # artrt channel -> openai channel: logits 0 1 | means R G B | log-scales R G B | a_0 a_1 a_2
    assert idx.tolist() == [0, 1, 2, 3, 8, 9, 14, 15, 4, 5, 10, 11, 16, 17, 6, 7, 12, 13,
                            18, 19]
    assert torch.equal(idx, dmol_layout_index(2, src="artrt", dst="openai"))
    assert torch.equal(idx[idx], torch.arange(20))
    assert torch.equal(dmol_layout_index(3, src="openai", dst="openai"), torch.arange(30))


def test_convert_layer():
    """A final 1x1 conv (or a per-pixel Linear, or a weight-normed conv) trained for the
    reference layout emits artrt's layout after dmol_convert_layer, on the same parameter
    objects; converting back restores it exactly."""
    k = 3
    torch.manual_seed(0)
    h = torch.randn(2, 8, 4, 5)
    _, x, _ = make(2, 3, k, 4, 5)
    idx = dmol_layout_index(k)
    conv = torch.nn.Conv2d(8, 10 * k, 1)
    before = {n: t.detach().clone() for n, t in conv.named_parameters()}
    p_openai = conv(h).detach()
    weight = conv.weight
    assert dmol_convert_layer(conv, k) is conv and conv.weight is weight
    with torch.no_grad():
        torch.testing.assert_close(conv(h), p_openai[:, idx], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(dmol_nll(conv(h), x, k),
                                   dmol_nll(p_openai, x, k, layout="openai"))
    dmol_convert_layer(conv, k, src="artrt", dst="openai")
    assert all(torch.equal(t, before[n]) for n, t in conv.named_parameters())

    lin = torch.nn.Linear(8, 10 * k)
    hl = h.permute(0, 2, 3, 1)  # (B, H, W, Cin): a per-pixel Linear
    want = lin(hl).permute(0, 3, 1, 2).detach()[:, idx]
    dmol_convert_layer(lin, k)
    torch.testing.assert_close(lin(hl).permute(0, 3, 1, 2).detach(), want)

    wn = torch.nn.utils.parametrizations.weight_norm(torch.nn.Conv2d(8, 10 * k, 1))
    want = wn(h).detach()[:, idx]
    dmol_convert_layer(wn, k)
    torch.testing.assert_close(wn(h).detach(), want, rtol=1e-5, atol=1e-6)


def test_bad_layout():
    params, x, _ = make(2, 3, 2, 3, 4, device="cpu")
    with pytest.raises(ValueError, match=r"dmol_nll: layout must be one of \('artrt', "
                                         r"'openai'\), got 'tf'"):
        dmol_nll(params, x, 2, layout="tf")
    with pytest.raises(ValueError, match="dmol_sample: layout must be one of"):
        dmol_sample(params, 2, layout=None)
    with pytest.raises(ValueError, match="dmol_layout_index: src must be one of"):
        dmol_layout_index(2, src="nhwc")
    with pytest.raises(ValueError, match="channels must be 3 .* got 2"):
        dmol_layout_index(2, 2)
    with pytest.raises(ValueError, match="num_mix must be an int >= 1, got 0"):
        dmol_layout_index(0)
    with pytest.raises(ValueError, match="no parameter with first dimension P = 20"):
        dmol_convert_layer(torch.nn.Conv2d(8, 30, 1), 2)
    with pytest.raises(TypeError, match="layer must be a torch.nn.Module, got Tensor"):
        dmol_convert_layer(params, 2)


# --------------------------------------------------------------------------- torch.library


OPCHECK_BACKENDS = ["reference", *KERNELS]


@pytest.mark.parametrize("backend", OPCHECK_BACKENDS)
@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("levels", [256, 17])
def test_opcheck(backend, channels, levels):
    params, x, grad = make(2, channels, 3, 3, 5, levels=levels)
    torch.library.opcheck(torch.ops.artrt.dmol_nll.default,
                          (params.requires_grad_(), x, 3, levels, backend))
    torch.library.opcheck(torch.ops.artrt.dmol_nll_backward.default,
                          (grad, params.detach(), x, 3, levels, backend))
    u = uniforms_for(params, channels, 0)
    torch.library.opcheck(torch.ops.artrt.dmol_sample.default,
                          (params.detach(), u, 3, levels, backend))


@pytest.mark.parametrize("backend", [None, *KERNELS])
def test_torch_compile_fullgraph(backend):
    torch._dynamo.reset()
    params, x, grad = make(2, 3, 3, 4, 5)

    def loss(p, x):
        return dmol_nll(p * 1.5, x, 3, backend=backend) / 60.0

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    want = run(lambda p, x, k: loss(p, x), params, x, 3, grad)
    got = run(lambda p, x, k: compiled(p, x), params, x, 3, grad)
    assert_matches(got, want)
    u = uniforms_for(params, 3, 1)
    sample = torch.compile(lambda p, u: dmol_sample(p, 3, uniforms=u, backend=backend),
                           fullgraph=True, backend="aot_eager")
    assert torch.equal(sample(params, u), dmol_sample(params, 3, uniforms=u, backend=backend))


# --------------------------------------------------------------------------- GPU, real shapes


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,shape", [  # CIFAR in every dtype; grayscale; odd sizes, K = 30
    (torch.float32, (16, 3, 10, 32, 32)), (torch.float16, (16, 3, 10, 32, 32)),
    (torch.bfloat16, (16, 3, 10, 32, 32)), (torch.bfloat16, (8, 1, 5, 64, 64)),
    (torch.float32, (4, 3, 30, 31, 17)), (torch.bfloat16, (4, 3, 30, 31, 17))])
def test_gpu_real_shapes(dtype, shape):
    b, channels, k, h, w = shape
    params, x, grad = make(b, channels, k, h, w, dtype=dtype, device="cuda")
    got = run(dmol_nll, params, x, k, grad, backend="triton")
    fp32 = run(dmol_nll_ref, params.float(), x, k, grad.float())
    if dtype == torch.float32:
        assert_matches(got, fp32)
    else:
        lowp = run(dmol_nll_ref, params, x, k, grad)
        for g, lp, f, what in zip(got, lowp, fp32, ("nll", "grad"), strict=True):
            assert_close_lowp(g, lp, f, f"dmol {dtype} {shape} {what}")
    u = uniforms_for(params, channels, 0)
    s_kernel = dmol_sample(params, k, uniforms=u, backend="triton")
    s_ref = dmol_sample_ref(params, u, k)
    # GPU exp2 / log2 differ from torch's in the last ulp: a draw within an ulp of a level
    # boundary may land one level apart; nothing else may differ.
    diff = ((s_kernel - s_ref).abs() * 127.5).round()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-4


@pytest.mark.gpu
def test_gpu_peak_memory():
    """Peak memory of forward + backward beyond the inputs, B=16, 32x32, K=10: >= 5x lower."""
    params, x, _ = make(16, 3, 10, 32, 32, device="cuda")
    params.requires_grad_()

    def peak(fn):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = fn(params, x, 10)
        (g,) = torch.autograd.grad(out.sum(), params)
        torch.cuda.synchronize()
        del out, g
        return torch.cuda.max_memory_allocated() - base

    dmol_nll(params, x, 10, backend="triton")  # warm-up: compilation out of the number
    ref = peak(dmol_nll_ref)
    fused = peak(lambda p, x, k: dmol_nll(p, x, k, backend="triton"))
    assert ref >= 5 * fused, f"reference {ref / 2**20:.1f} MiB vs fused {fused / 2**20:.1f} MiB"
