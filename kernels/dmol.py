"""Discretized mixture of logistics (PixelCNN++): fused NLL forward, backward and sampling.

Layout of ``params`` (B, P, H, W), P = (2C + 1) K + 3K [C = 3] or (2C + 1) K [C = 1]; channel
of a quantity for component k and image channel c (see ``artrt.ops.dmol`` for the table):

    logit k        : k
    mean c, k      : K + c K + k
    log-scale c, k : K + C K + c K + k
    coeff j, k     : K + 2 C K + j K + k     (C = 3 only, j = 0, 1, 2; tanh'd here)

Every program owns one image ``b`` and ``BLOCK_P`` pixels of it (flattened over H, W and read
through the strides, so W is the fastest axis of a tile: coalesced when stride_w = 1), and
holds all K components of those pixels at once as (BLOCK_K, BLOCK_P) register tiles. The
forward writes one partial sum per program (summed on the host: deterministic, no atomics);
the backward recomputes everything from params and x and writes the gradient of params. No
per-component intermediate ever goes to memory. Math is in fp32 whatever the storage dtype.

The number of levels L of x is a runtime argument (fp32 scalars derived from it: half a bin
1 / (L - 1) and log((L - 1) / 2) for the NLL, (L - 1) / 2 and L - 1 for the sampler), so one
compiled kernel serves every L.
"""

import math

import torch
import triton
import triton.language as tl
from artrt.kernels.gated import _sigmoid, _tanh

# Elements of a (BLOCK_K, BLOCK_P) tile: 512 at 4 warps is 4 fp32 per thread and tile. The
# backward keeps some 40 tiles live: compiled for sm_90 (ptxas -v, K = 10 RGB fp32) it takes
# 184 registers and the forward 69, no spills, where a 1024 tile spills ~1 KB per thread.
# K = 10 pads to BLOCK_K = 16, BLOCK_P = 32: 128 contiguous bytes along W per component row.
# Speed not yet tuned on a GPU.
_TILE = 512
_NUM_WARPS = 4


@triton.jit
def _log(z):
    # ln z = log2(z) ln 2,  ln 2 = 0.6931471805599453
    return tl.log2(z) * 0.6931471805599453


@triton.jit
def _softplus(z):
    # softplus(z) = max(z, 0) + log1p(e),  e = exp(-|z|) in (0, 1]: never overflows.
    # log1p(e) = ln(u) e / (u - 1) with u = 1 + e rounded (exact for tiny e; Goldberg).
    e = tl.exp2(tl.abs(z) * -1.4426950408889634)  # -log2(e)
    u = 1.0 + e
    d = u - 1.0
    log1p = tl.where(d == 0.0, e, _log(u) * (e / tl.where(d == 0.0, 1.0, d)))
    return tl.maximum(z, 0.0) + log1p


@triton.jit
def _one_minus_exp(d):
    """(1 - exp(-d), exp(-d)) for d >= 0, the first with full relative accuracy: near
    u = exp(-d) = 1 by Kahan's expm1 trick (1 - u) d / (-ln u) (exact when u rounds to 1),
    elsewhere 1 - u has no cancellation."""
    u = tl.exp2(d * -1.4426950408889634)  # exp(-d)
    near_one = u > 0.5
    # max(u, 0.5) = u where lnu is used; elsewhere it keeps log2 away from u = 0
    lnu = tl.where(near_one & (u < 1.0), _log(tl.maximum(u, 0.5)), -1.0)
    kahan = tl.where(u == 1.0, d, (1.0 - u) * (d / -lnu))
    return tl.where(near_one, kahan, 1.0 - u), u


@triton.jit
def _bin_logprob(x, mean, log_scale_raw, low, high, half_bin, log_half_levels):
    """log P(bin of x) under a logistic(mean, exp(max(log_scale_raw, -7))) and its derivatives
    with respect to mean and log_scale_raw. x, low, high: (1, BLOCK_P); the others and the
    results: (BLOCK_K, BLOCK_P). low / high: x is the first / last of the L levels.
    half_bin = 1 / (L - 1), log_half_levels = log((L - 1) / 2): fp32 scalars."""
    s = tl.maximum(log_scale_raw, -7.0)
    inv = tl.exp2(s * -1.4426950408889634)  # exp(-s)
    centered = x - mean
    plus = inv * (centered + half_bin)
    minus = inv * (centered - half_bin)
    mid = inv * centered
    d = inv * (2.0 * half_bin)  # plus - minus = 2 / (L - 1) exp(-s)
    sig_nplus = _sigmoid(-plus)
    sig_minus = _sigmoid(minus)
    # delta = sigmoid(plus) - sigmoid(minus) = sigmoid(plus) sigmoid(-minus) (1 - exp(-d)):
    # no cancellation, so log delta = -softplus(-plus) - softplus(minus) + log(1 - exp(-d))
    one_m_e, e_d = _one_minus_exp(d)
    sp_nplus = _softplus(-plus)
    sp_minus = _softplus(minus)
    lp_delta = -sp_nplus - sp_minus + _log(one_m_e)
    # delta > 1e-5 decided on log delta (full relative accuracy in both tails), never on
    # 1 - sigmoid(-plus) or 1 - sigmoid(minus): those cancel to a relative error of
    # ~eps / delta (0.3 % at delta = 1e-5), which took the wrong branch for ~2 % of the
    # sub-pixels near the switch.  ln(1e-5) = -11.512925464970229
    use_delta = lp_delta > -11.512925464970229
    # Four cases (d plus / d mean = -inv, d plus / d s = -plus; the same for minus, mid):
    #   x = -1:         lp = log sigmoid(plus)       = -softplus(-plus)
    #   x = 1:          lp = log(1 - sigmoid(minus)) = -softplus(minus)
    #   delta > 1e-5:   lp = log delta
    #   else:           lp = mid - s - 2 softplus(mid) - log((L - 1) / 2)
    #                   (density at the center times the bin width 2 / (L - 1))
    lp_pdf = mid - s - 2.0 * _softplus(mid) - log_half_levels
    lp = tl.where(low, -sp_nplus, tl.where(high, -sp_minus, tl.where(use_delta, lp_delta, lp_pdf)))

    one_m2s = 1.0 - 2.0 * _sigmoid(mid)  # d/dmid of mid - 2 softplus(mid)
    # d log(1 - exp(-d)) / d d = exp(-d) / (1 - exp(-d)); d d / d s = -d
    d_term = d * e_d / tl.where(one_m_e > 0.0, one_m_e, 1.0)
    dmean = tl.where(low, -inv * sig_nplus,
                     tl.where(high, inv * sig_minus,
                              tl.where(use_delta, -inv * (sig_nplus - sig_minus),
                                       -inv * one_m2s)))
    ds = tl.where(low, -plus * sig_nplus,
                  tl.where(high, minus * sig_minus,
                           tl.where(use_delta, minus * sig_minus - plus * sig_nplus - d_term,
                                    -mid * one_m2s - 1.0)))
    ds = tl.where(log_scale_raw >= -7.0, ds, 0.0)  # clamp: gradient where not clamped
    return lp, dmean, ds


@triton.jit
def _tile(hw, BLOCK_P: tl.constexpr):
    """Image b and flat pixel indices (BLOCK_P,) of this program; grid (B * cdiv(HW, BLOCK_P),)."""
    n_p = tl.cdiv(hw, BLOCK_P)
    pid = tl.program_id(0).to(tl.int64)
    b = pid // n_p
    pid_p = pid - b * n_p
    return b, pid_p, pid_p * BLOCK_P + tl.arange(0, BLOCK_P)


@triton.jit
def _pixel_offset(b, p, w_size, stride_b, stride_h, stride_w):
    """Offset of pixel p (flattened over H, W) of image b in a (B, ., H, W) tensor."""
    h = p // w_size
    w = p - h * w_size
    return b * stride_b + h * stride_h + w * stride_w


@triton.jit
def _component_params(p_ptr, base, ck, mask, CH: tl.constexpr):
    """fp32 parameters of the components at offsets ``base`` of params (any shape), ck the
    offset of one block of K channels: m0, s0 (channel 0's mean and raw log-scale) and, for
    C = 3, m1, m2, s1, s2 and the tanh'd coefficients c0, c1, c2; for C = 1 those six are m0
    and s0 again, placeholders so that both constexpr branches bind the same names."""
    m0 = tl.load(p_ptr + base + ck, mask=mask, other=0.0).to(tl.float32)
    s0 = tl.load(p_ptr + base + (1 + CH) * ck, mask=mask, other=0.0).to(tl.float32)
    if CH == 3:
        m1 = tl.load(p_ptr + base + 2 * ck, mask=mask, other=0.0).to(tl.float32)
        m2 = tl.load(p_ptr + base + 3 * ck, mask=mask, other=0.0).to(tl.float32)
        s1 = tl.load(p_ptr + base + 5 * ck, mask=mask, other=0.0).to(tl.float32)
        s2 = tl.load(p_ptr + base + 6 * ck, mask=mask, other=0.0).to(tl.float32)
        c0 = _tanh(tl.load(p_ptr + base + 7 * ck, mask=mask, other=0.0).to(tl.float32))
        c1 = _tanh(tl.load(p_ptr + base + 8 * ck, mask=mask, other=0.0).to(tl.float32))
        c2 = _tanh(tl.load(p_ptr + base + 9 * ck, mask=mask, other=0.0).to(tl.float32))
    else:
        m1 = m0
        m2 = m0
        s1 = s0
        s2 = s0
        c0 = m0
        c1 = m0
        c2 = m0
    return m0, s0, m1, m2, s1, s2, c0, c1, c2


@triton.jit
def _mixture(
    p_ptr, x_ptr,
    stride_p_b, stride_p_c, stride_p_h, stride_p_w,
    stride_x_b, stride_x_c, stride_x_h, stride_x_w,
    b, p, k, w_size, hw, num_mix, half_bin, log_half_levels,
    CH: tl.constexpr,
):
    """Everything the forward and backward share, for pixels p (BLOCK_P,) and components
    k (BLOCK_K,) of image b. Returns the (BLOCK_K, BLOCK_P) tiles: logits (-inf where
    k >= K), z = logit + sum_c lp_c (-inf where k >= K), and per channel the derivatives
    of lp_c, plus x, the tanh'd coefficients and the load offsets. x is an edge level when
    within half a bin of -1 or 1."""
    p_mask = p < hw
    k_mask = k < num_mix
    mask = k_mask[:, None] & p_mask[None, :]
    pix = _pixel_offset(b, p, w_size, stride_p_b, stride_p_h, stride_p_w)[None, :]  # (1, BLOCK_P)
    xpix = _pixel_offset(b, p, w_size, stride_x_b, stride_x_h, stride_x_w)  # (BLOCK_P,)
    kc = k[:, None] * stride_p_c  # (BLOCK_K, 1)
    ck = num_mix * stride_p_c  # one block of K channels

    logit = tl.load(p_ptr + pix + kc, mask=mask, other=0.0).to(tl.float32)
    logit = tl.where(k_mask[:, None], logit, float("-inf"))
    edge = 1.0 - half_bin

    x0 = tl.load(x_ptr + xpix, mask=p_mask, other=0.0).to(tl.float32)[None, :]
    m0, s0, m1, m2, s1, s2, c0, c1, c2 = _component_params(p_ptr, pix + kc, ck, mask, CH)
    lp0, dm0, ds0 = _bin_logprob(x0, m0, s0, x0 < -edge, x0 > edge, half_bin, log_half_levels)
    if CH == 3:
        x1 = tl.load(x_ptr + xpix + stride_x_c, mask=p_mask, other=0.0).to(tl.float32)[None, :]
        x2 = tl.load(x_ptr + xpix + 2 * stride_x_c, mask=p_mask,
                     other=0.0).to(tl.float32)[None, :]
        # mean_G = m_G + c0 x_R,  mean_B = m_B + c1 x_R + c2 x_G
        lp1, dm1, ds1 = _bin_logprob(x1, m1 + c0 * x0, s1, x1 < -edge, x1 > edge,
                                     half_bin, log_half_levels)
        lp2, dm2, ds2 = _bin_logprob(x2, m2 + c1 * x0 + c2 * x1, s2, x2 < -edge, x2 > edge,
                                     half_bin, log_half_levels)
        lp = lp0 + lp1 + lp2
    else:  # grayscale: placeholders, so that both constexpr branches bind the same names
        x1 = x0
        x2 = x0
        dm1 = dm0
        dm2 = dm0
        ds1 = ds0
        ds2 = ds0
        lp = lp0
    z = tl.where(k_mask[:, None], logit + lp, float("-inf"))
    return (logit, z, mask, pix, kc, ck, x0, x1, x2, c0, c1, c2,
            dm0, ds0, dm1, ds1, dm2, ds2)


@triton.jit
def _logsumexp(z):
    """log sum_k exp(z) over axis 0 of (BLOCK_K, BLOCK_P); at least one z finite per column."""
    m = tl.max(z, axis=0)
    return m + _log(tl.sum(tl.exp2((z - m[None, :]) * 1.4426950408889634), axis=0))


@triton.jit
def _dmol_nll_fwd_kernel(
    p_ptr, x_ptr, out_ptr,
    stride_p_b, stride_p_c, stride_p_h, stride_p_w,
    stride_x_b, stride_x_c, stride_x_h, stride_x_w,
    w_size, hw, num_mix, half_bin, log_half_levels,
    CH: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr,
):
    # half_bin = 1 / (L - 1), log_half_levels = log((L - 1) / 2): fp32
    # out: contiguous (B, cdiv(HW, BLOCK_P)) partial sums of the per-pixel NLL
    b, pid_p, p = _tile(hw, BLOCK_P)
    k = tl.arange(0, BLOCK_K)
    (logit, z, mask, pix, kc, ck, x0, x1, x2, c0, c1, c2,
     dm0, ds0, dm1, ds1, dm2, ds2) = _mixture(
        p_ptr, x_ptr,
        stride_p_b, stride_p_c, stride_p_h, stride_p_w,
        stride_x_b, stride_x_c, stride_x_h, stride_x_w,
        b, p, k, w_size, hw, num_mix, half_bin, log_half_levels, CH)
    # -log p(x) = logsumexp_k(logit_k) - logsumexp_k(logit_k + sum_c lp_ck)
    nll = _logsumexp(logit) - _logsumexp(z)  # (BLOCK_P,)
    nll = tl.where(p < hw, nll, 0.0)
    tl.store(out_ptr + b * tl.cdiv(hw, BLOCK_P) + pid_p, tl.sum(nll, axis=0))


@triton.jit
def _dmol_nll_bwd_kernel(
    p_ptr, x_ptr, grad_out_ptr, grad_p_ptr,
    stride_p_b, stride_p_c, stride_p_h, stride_p_w,
    stride_x_b, stride_x_c, stride_x_h, stride_x_w,
    w_size, hw, num_mix, half_bin, log_half_levels,
    CH: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr,
):
    # half_bin, log_half_levels as in the forward; grad_out: (B,) fp32;
    # grad_p: contiguous (B, P, H, W)
    b, pid_p, p = _tile(hw, BLOCK_P)
    k = tl.arange(0, BLOCK_K)
    (logit, z, mask, pix, kc, ck, x0, x1, x2, c0, c1, c2,
     dm0, ds0, dm1, ds1, dm2, ds2) = _mixture(
        p_ptr, x_ptr,
        stride_p_b, stride_p_c, stride_p_h, stride_p_w,
        stride_x_b, stride_x_c, stride_x_h, stride_x_w,
        b, p, k, w_size, hw, num_mix, half_bin, log_half_levels, CH)
    g = tl.load(grad_out_ptr + b).to(tl.float32)
    # r_k = softmax_k(z) (responsibilities), pi_k = softmax_k(logit):
    # d nll / d logit_k = pi_k - r_k,  d nll / d lp_ck = -r_k
    r = tl.exp2((z - _logsumexp(z)[None, :]) * 1.4426950408889634)
    pi = tl.exp2((logit - _logsumexp(logit)[None, :]) * 1.4426950408889634)
    wgt = -g * r
    n_ch = (2 * CH + 1 + 3 * (CH // 3)) * num_mix
    out = grad_p_ptr + b * n_ch * hw + k[:, None] * hw + p[None, :]
    dtype = grad_p_ptr.dtype.element_ty
    tl.store(out, (g * (pi - r)).to(dtype), mask=mask)
    tl.store(out + num_mix * hw, (wgt * dm0).to(dtype), mask=mask)
    tl.store(out + (1 + CH) * num_mix * hw, (wgt * ds0).to(dtype), mask=mask)
    if CH == 3:
        tl.store(out + 2 * num_mix * hw, (wgt * dm1).to(dtype), mask=mask)
        tl.store(out + 3 * num_mix * hw, (wgt * dm2).to(dtype), mask=mask)
        tl.store(out + 5 * num_mix * hw, (wgt * ds1).to(dtype), mask=mask)
        tl.store(out + 6 * num_mix * hw, (wgt * ds2).to(dtype), mask=mask)
        # d mean_G / d raw0 = x_R (1 - c0^2);  d mean_B / d raw1 = x_R (1 - c1^2),
        # d mean_B / d raw2 = x_G (1 - c2^2)
        tl.store(out + 7 * num_mix * hw, (wgt * dm1 * x0 * (1.0 - c0 * c0)).to(dtype), mask=mask)
        tl.store(out + 8 * num_mix * hw, (wgt * dm2 * x0 * (1.0 - c1 * c1)).to(dtype), mask=mask)
        tl.store(out + 9 * num_mix * hw, (wgt * dm2 * x1 * (1.0 - c2 * c2)).to(dtype), mask=mask)


@triton.jit
def _logistic_level(mean, log_scale_raw, u, half_levels, last):
    """One channel's sample: mean + exp(max(s, -7)) logit(u), clamped to [-1, 1] and
    rounded to the nearest of the L levels (2i - (L - 1)) / (L - 1). mean, log_scale_raw, u:
    (BLOCK_P,); half_levels = (L - 1) / 2 and last = L - 1: fp32 scalars."""
    scale = tl.exp2(tl.maximum(log_scale_raw, -7.0) * 1.4426950408889634)
    # logit(u) = ln u - ln(1 - u)
    v = mean + scale * (_log(u) - _log(1.0 - u))
    v = tl.minimum(tl.maximum(v, -1.0), 1.0)
    level = tl.minimum(tl.floor((v + 1.0) * half_levels + 0.5), last)
    return (2.0 * level - last) / last


@triton.jit
def _dmol_sample_kernel(
    p_ptr, u_ptr, out_ptr,
    stride_p_b, stride_p_c, stride_p_h, stride_p_w,
    stride_u_b, stride_u_c, stride_u_h, stride_u_w,
    w_size, hw, num_mix, half_levels, last,
    CH: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr,
):
    # half_levels = (L - 1) / 2, last = L - 1: fp32.
    # u: (B, 1 + C, H, W) uniforms in [0, 1): u[:, 0] picks the component, u[:, 1 + c] draws
    # channel c. out: contiguous (B, C, H, W) fp32.
    b, pid_p, p = _tile(hw, BLOCK_P)
    k = tl.arange(0, BLOCK_K)
    p_mask = p < hw
    mask = (k < num_mix)[:, None] & p_mask[None, :]
    pix = _pixel_offset(b, p, w_size, stride_p_b, stride_p_h, stride_p_w)  # (BLOCK_P,)
    upix = _pixel_offset(b, p, w_size, stride_u_b, stride_u_h, stride_u_w)
    logit = tl.load(p_ptr + pix[None, :] + k[:, None] * stride_p_c, mask=mask,
                    other=0.0).to(tl.float32)
    # inverse CDF: k* = #{k : cumsum_k(e) <= u0 * total}, e_k = exp(logit_k - max), clamped
    # to K - 1 (the total is the last cumulative sum, as in the reference)
    m = tl.max(tl.where(mask, logit, float("-inf")), axis=0)
    e = tl.where(mask, tl.exp2((logit - m[None, :]) * 1.4426950408889634), 0.0)
    cum = tl.cumsum(e, axis=0)
    total = tl.max(cum, axis=0)
    u0 = tl.load(u_ptr + upix, mask=p_mask, other=0.0).to(tl.float32)
    hit = (cum <= (u0 * total)[None, :]) & mask
    ksel = tl.minimum(tl.sum(hit.to(tl.int32), axis=0), num_mix - 1)  # (BLOCK_P,)
    sel = pix + ksel * stride_p_c  # offset of component k*'s logit
    ck = num_mix * stride_p_c
    out = out_ptr + b * CH * hw + p
    mean0, ls0, mean1, mean2, ls1, ls2, c0, c1, c2 = _component_params(p_ptr, sel, ck, p_mask,
                                                                          CH)
    u1 = tl.load(u_ptr + upix + stride_u_c, mask=p_mask, other=0.5).to(tl.float32)
    x0 = _logistic_level(mean0, ls0, u1, half_levels, last)
    tl.store(out, x0, mask=p_mask)
    if CH == 3:
        u2 = tl.load(u_ptr + upix + 2 * stride_u_c, mask=p_mask, other=0.5).to(tl.float32)
        u3 = tl.load(u_ptr + upix + 3 * stride_u_c, mask=p_mask, other=0.5).to(tl.float32)
        # G depends on the sampled (quantised) R, B on the sampled R and G
        x1 = _logistic_level(mean1 + c0 * x0, ls1, u2, half_levels, last)
        x2 = _logistic_level(mean2 + c1 * x0 + c2 * x1, ls2, u3, half_levels, last)
        tl.store(out + hw, x1, mask=p_mask)
        tl.store(out + 2 * hw, x2, mask=p_mask)


# --------------------------------------------------------------------------- launchers

def _blocks(num_mix: int, hw: int) -> tuple[int, int]:
    """(BLOCK_K, BLOCK_P): all K components, and as many pixels as fill a _TILE tile."""
    block_k = triton.next_power_of_2(num_mix)
    block_p = max(16, min(_TILE // block_k, triton.next_power_of_2(hw)))
    return block_k, block_p


def _nll_grid(levels: int) -> tuple[float, float]:
    """(half_bin, log_half_levels) = (1 / (L - 1), log((L - 1) / 2)), the NLL kernels' floats."""
    return 1.0 / (levels - 1), math.log((levels - 1) / 2)


def _launch(kernel, params, other, tensors, num_mix: int, channels: int, floats: tuple):
    """One program per (image, BLOCK_P pixels); ``floats`` are the kernel's fp32 scalars after
    num_mix (runtime values: no recompilation per number of levels)."""
    bsz, _, h, w = params.shape
    block_k, block_p = _blocks(num_mix, h * w)
    grid = (bsz * triton.cdiv(h * w, block_p),)
    kernel[grid](params, other, *tensors, *params.stride(), *other.stride(), w, h * w, num_mix,
                 *floats, CH=channels, BLOCK_K=block_k, BLOCK_P=block_p, num_warps=_NUM_WARPS)


def dmol_nll_fwd(params: torch.Tensor, x: torch.Tensor, num_mix: int, channels: int,
                 levels: int = 256) -> torch.Tensor:
    """Forward launcher. params: (B, P, H, W) fp32/fp16/bf16, any strides; x: (B, C, H, W)
    fp32 on the ``levels``-level grid (L >= 2, checked by the caller), any strides. Returns
    the per-image NLL (B,) in fp32."""
    bsz, _, h, w = params.shape
    _, block_p = _blocks(num_mix, h * w)
    partial = torch.empty((bsz, triton.cdiv(h * w, block_p)), device=params.device,
                          dtype=torch.float32)
    if partial.numel() == 0:
        return partial.new_zeros((bsz,))
    _launch(_dmol_nll_fwd_kernel, params, x, (partial,), num_mix, channels, _nll_grid(levels))
    return partial.sum(dim=1)


def dmol_nll_bwd(grad_out: torch.Tensor, params: torch.Tensor, x: torch.Tensor, num_mix: int,
                 channels: int, levels: int = 256) -> torch.Tensor:
    """Backward launcher. grad_out: (B,) fp32 contiguous; params, x as in ``dmol_nll_fwd``.
    Returns the gradient of params, contiguous (B, P, H, W) of params' dtype."""
    grad = torch.empty(params.shape, device=params.device, dtype=params.dtype)
    if grad.numel():
        _launch(_dmol_nll_bwd_kernel, params, x, (grad_out, grad), num_mix, channels,
                _nll_grid(levels))
    return grad


def dmol_sample_fwd(params: torch.Tensor, uniforms: torch.Tensor, num_mix: int,
                    channels: int, levels: int = 256) -> torch.Tensor:
    """Sampling launcher. params as in ``dmol_nll_fwd``; uniforms: (B, 1 + C, H, W) fp32 in
    [0, 1), any strides. Returns x, contiguous (B, C, H, W) fp32 on the ``levels``-level
    grid."""
    bsz, _, h, w = params.shape
    out = torch.empty((bsz, channels, h, w), device=params.device, dtype=torch.float32)
    if out.numel():
        _launch(_dmol_sample_kernel, params, uniforms, (out,), num_mix, channels,
                ((levels - 1) / 2, float(levels - 1)))
    return out
