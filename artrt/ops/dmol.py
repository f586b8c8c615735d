"""Discretized mixture of logistics (DMoL): fused NLL and sampling of PixelCNN++ outputs.

Follows Salimans et al., "PixelCNN++" (ICLR 2017), section 2.1-2.2 and its reference code:
each sub-pixel value is one of L levels of [-1, 1] (the paper's L = 256 is the default;
level i is (2i - (L - 1)) / (L - 1)), its probability is the mass of a logistic distribution
over the level's bin [x - 1/(L - 1), x + 1/(L - 1)], the first and last bins take the whole
tails (edge bins), the log-scales are clamped below at -7, and a bin whose mass underflows
(< 1e-5) falls back to the density at its center times the bin width 2 / (L - 1). The L
masses sum to 1 for every L >= 2; at L = 2 both levels are edge bins split at 0:
p(-1) = CDF(0), p(1) = 1 - CDF(0). For RGB the mean of G depends linearly on R and the mean of B
on R and G, through coefficients squashed by tanh. Grayscale (C = 1) is the same model without
the coefficients, served by the same kernels (a ``constexpr`` switch on C).

Layout of ``params`` (B, P, H, W) chosen here (grouped by quantity, component fastest):

    +-----------------+-----------------------+----------------------------------------+
    | channels        | quantity              | per pixel, component k, channel c      |
    +-----------------+-----------------------+----------------------------------------+
    | [0, K)          | mixture logits        | logit_k                 = p[k]          |
    | [K, K+CK)       | means                 | m_{c,k}                 = p[K + cK + k] |
    | [K+CK, K+2CK)   | log-scales (raw)      | s_{c,k}                 = p[K+CK+cK+k]  |
    | [7K, 10K)  C=3  | coefficients (raw)    | a_{j,k} = tanh(p[7K + jK + k]), j=0,1,2 |
    +-----------------+-----------------------+----------------------------------------+
    P = 10 K for RGB (C = 3), P = 3 K for grayscale (C = 1); c = 0, 1, 2 is R, G, B.

    mean_R = m_R,  mean_G = m_G + a_0 x_R,  mean_B = m_B + a_1 x_R + a_2 x_G

The reference code's layout (``layout="openai"``: the TF code of PixelCNN++ and its PyTorch
ports) groups by colour channel instead: K logits, then for each channel c its K means, its
K raw log-scales and K raw coefficients, where channel j's coefficient block holds a_j:

    [logits K | R: means K, log-scales K, coeffs(a_0) K | G: ... (a_1) | B: ... (a_2)]

The two layouts differ by swapping the quantity and channel axes of the 3 x 3 blocks after
the logits (an involution: the same permutation converts both ways). Grayscale (P = 3 K:
logits, means, log-scales) is the same in both. ``dmol_nll`` and ``dmol_sample`` take
``layout="openai"``; :func:`dmol_layout_index` gives the permutation and
:func:`dmol_convert_layer` permutes the output channels of a network's final layer, so a
trained model emits artrt's layout at no cost per call.

Departures from the paper's code, all on purpose:
- the layout above by default (the TF code interleaves means, log-scales and coefficients
  per channel in NHWC, ``layout="openai"``);
- ``log(cdf_plus - cdf_min)`` of a middle bin is computed without cancellation as
  ``log sigmoid(plus) + log sigmoid(-min) + log(1 - exp(-(plus - min)))`` (the same value;
  the paper's difference of two sigmoids loses all digits in fp32 for wide components), so
  the 1e-5 switch to the density is decided on an accurate number;
- any number of levels L >= 2 (the paper fixes 256), a runtime argument of the kernels;
- the sampler quantises each channel to the L levels before the next channel uses it (the
  model's likelihood conditions G and B on the data's levels, so samples follow the same
  distribution the NLL scores) and picks the component by inverse CDF with one uniform per
  pixel instead of Gumbel-max with K.

The fused path (Triton) computes the NLL in one kernel and its gradient in another that
recomputes every per-component quantity in registers; autograd saves only params and x.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from artrt import backends
from artrt.ops._checks import capturing, check_finite, check_range

# Backends of these ops on CUDA tensors, fastest first (provisional until measured on a GPU).
PREFERENCE = ("triton", "reference")
LAYOUTS = ("artrt", "openai")

_MIN_LOG_SCALE = -7.0
_LOG2E = 1.4426950408889634
_LN2 = 0.6931471805599453


def _channels(params: torch.Tensor, num_mix: int) -> int:
    """C (3 or 1) from params' channel count P = 10 K or 3 K; 0 when it is neither."""
    p = params.shape[1]
    return 3 if p == 10 * num_mix else 1 if p == 3 * num_mix else 0


def _out_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _grid(levels: int) -> tuple[float, float]:
    """(half_bin, log_half_levels) of the L-level grid: half a bin 1 / (L - 1), and the log of
    1 / bin width, log((L - 1) / 2). Python floats, so L = 256 gives exactly 1/255, log 127.5."""
    return 1.0 / (levels - 1), math.log((levels - 1) / 2)


def _split(params: torch.Tensor, num_mix: int, channels: int):
    """logits (B, K, H, W), means and raw log-scales (B, C, K, H, W), tanh'd coefficients
    (B, 3, K, H, W) or None."""
    k, c = num_mix, channels
    logits = params[:, :k]
    means = params[:, k:k + c * k].unflatten(1, (c, k))
    log_scales = params[:, k + c * k:k + 2 * c * k].unflatten(1, (c, k))
    coeffs = torch.tanh(params[:, 7 * k:10 * k].unflatten(1, (3, k))) if c == 3 else None
    return logits, means, log_scales, coeffs


def _edges(x: torch.Tensor, half_bin: float):
    """(low, high) masks (B, C, 1, H, W): x is the first / last level, i.e. within half a bin
    of -1 / 1 (decided in >= fp32)."""
    xh = x.to(_out_dtype(x.dtype)).unsqueeze(2)
    return xh < half_bin - 1.0, xh > 1.0 - half_bin


def _softplus(z):
    """log(1 + exp(z)), exact gradient sigmoid(z) everywhere (no threshold)."""
    return torch.logaddexp(z, torch.zeros_like(z))


def _bin_logprob(x, mean, log_scale_raw, low, high, half_bin: float, log_half_levels: float,
                 with_grad: bool):
    """log P(bin of x) of a logistic(mean, exp(max(log_scale_raw, -7))), the bin being
    [x - half_bin, x + half_bin] (edge bins: the tails); with_grad also gives d lp / d mean
    and d lp / d log_scale_raw. Broadcasting tensors of one dtype.

    The mass of a middle bin, sigmoid(plus) - sigmoid(minus), is written without
    cancellation as sigmoid(plus) sigmoid(-minus) (1 - exp(-(plus - minus))).
    """
    s = torch.clamp(log_scale_raw, min=_MIN_LOG_SCALE)
    inv = torch.exp(-s)
    centered = x - mean
    plus = inv * (centered + half_bin)
    minus = inv * (centered - half_bin)
    mid = inv * centered
    d = inv * (2 * half_bin)  # plus - minus
    one_m_e = torch.clamp(-torch.expm1(-d), min=1e-30)
    sp_nplus, sp_minus = _softplus(-plus), _softplus(minus)
    delta = torch.sigmoid(plus) * torch.sigmoid(-minus) * one_m_e
    use_delta = delta > 1e-5
    lp_low = -sp_nplus                          # log sigmoid(plus): [-inf, -1 + half_bin]
    lp_high = -sp_minus                         # log(1 - sigmoid(minus)): [1 - half_bin, inf]
    lp_delta = -sp_nplus - sp_minus + torch.log(one_m_e)  # log delta
    lp_pdf = mid - s - 2 * _softplus(mid) - log_half_levels  # density x bin width
    lp = torch.where(low, lp_low, torch.where(high, lp_high,
                                              torch.where(use_delta, lp_delta, lp_pdf)))
    if not with_grad:
        return lp
    sig_nplus, sig_minus = torch.sigmoid(-plus), torch.sigmoid(minus)
    one_m2s = 1 - 2 * torch.sigmoid(mid)
    d_term = d / torch.expm1(d)  # -d * d log(1 - exp(-d)) / d d
    dmean = torch.where(low, -inv * sig_nplus, torch.where(
        high, inv * sig_minus, torch.where(use_delta, -inv * (sig_nplus - sig_minus),
                                           -inv * one_m2s)))
    ds = torch.where(low, -plus * sig_nplus, torch.where(
        high, minus * sig_minus, torch.where(use_delta, minus * sig_minus - plus * sig_nplus
                                             - d_term, -mid * one_m2s - 1)))
    ds = torch.where(log_scale_raw >= _MIN_LOG_SCALE, ds, torch.zeros_like(ds))
    return lp, dmean, ds


def _component_means(means, coeffs, xc):
    """Means (B, C, K, H, W) after the RGB dependence on the data xc (B, C, 1, H, W)."""
    if coeffs is None:
        return means
    mean_g = means[:, 1] + coeffs[:, 0] * xc[:, 0]
    mean_b = means[:, 2] + coeffs[:, 1] * xc[:, 0] + coeffs[:, 2] * xc[:, 1]
    return torch.stack([means[:, 0], mean_g, mean_b], 1)


# --------------------------------------------------------------------------- reference

def dmol_nll_ref(params: torch.Tensor, x: torch.Tensor, num_mix: int,
                 levels: int = 256) -> torch.Tensor:
    """Pure PyTorch per-image NLL in nats of x on the ``levels``-level grid; see
    :func:`dmol_nll` for shapes. Math in params' dtype, the sum over pixels in at least
    float32."""
    channels = _channels(params, num_mix)
    half_bin, log_half_levels = _grid(levels)
    logits, means, log_scales, coeffs = _split(params, num_mix, channels)
    xc = x.to(params.dtype).unsqueeze(2)  # (B, C, 1, H, W)
    low, high = _edges(x, half_bin)
    lp = _bin_logprob(xc, _component_means(means, coeffs, xc), log_scales, low, high,
                      half_bin, log_half_levels, False)
    z = F.log_softmax(logits, dim=1) + lp.sum(1)  # (B, K, H, W)
    return -torch.logsumexp(z, dim=1).to(_out_dtype(params.dtype)).sum(dim=(1, 2))


def dmol_nll_backward_ref(grad_out: torch.Tensor, params: torch.Tensor, x: torch.Tensor,
                          num_mix: int, levels: int = 256) -> torch.Tensor:
    """Pure PyTorch gradient of :func:`dmol_nll_ref` with respect to params (closed form).

    With r_k = softmax_k(logit_k + sum_c lp_ck) and pi_k = softmax_k(logit_k):
    d nll / d logit_k = pi_k - r_k;  d nll / d lp_ck = -r_k, then through the means (and the
    RGB coefficients: d mean_G / d a_0 = x_R, ...) and the clamped log-scales.
    grad_out: (B,); x on the ``levels``-level grid. Returns (B, P, H, W) of params' dtype.
    """
    channels = _channels(params, num_mix)
    half_bin, log_half_levels = _grid(levels)
    logits, means, log_scales, coeffs = _split(params, num_mix, channels)
    xc = x.to(params.dtype).unsqueeze(2)
    low, high = _edges(x, half_bin)
    lp, dmean, ds = _bin_logprob(xc, _component_means(means, coeffs, xc), log_scales,
                                 low, high, half_bin, log_half_levels, True)
    z = logits + lp.sum(1)
    r = torch.softmax(z, dim=1)
    g = grad_out.to(params.dtype)[:, None, None, None]
    wgt = (-g * r).unsqueeze(1)  # (B, 1, K, H, W)
    parts = [g * (torch.softmax(logits, dim=1) - r), (wgt * dmean).flatten(1, 2),
             (wgt * ds).flatten(1, 2)]
    if coeffs is not None:
        dm = wgt * dmean
        parts.append(torch.stack([dm[:, 1] * xc[:, 0] * (1 - coeffs[:, 0] ** 2),
                                  dm[:, 2] * xc[:, 0] * (1 - coeffs[:, 1] ** 2),
                                  dm[:, 2] * xc[:, 1] * (1 - coeffs[:, 2] ** 2)], 1).flatten(1, 2))
    return torch.cat(parts, 1)


def dmol_sample_ref(params: torch.Tensor, uniforms: torch.Tensor, num_mix: int,
                    levels: int = 256) -> torch.Tensor:
    """Pure PyTorch sampler from given uniforms onto the ``levels``-level grid; see
    :func:`dmol_sample` for shapes.

    Written with exp2/log2 and the same operation order as the kernel so that both map the
    same uniforms to the same levels (barring a last-ulp difference at a level boundary).
    """
    channels = _channels(params, num_mix)
    half_levels, last = (levels - 1) / 2, float(levels - 1)
    p = params.float()
    u = uniforms.float()
    logits, means, log_scales, coeffs = _split(p, num_mix, channels)
    # inverse CDF over the components: k* = #{k : cumsum_k(e) <= u0 * total}, e = exp(l - max)
    e = torch.exp2((logits - logits.amax(1, keepdim=True)) * _LOG2E)
    cum = e.cumsum(1)
    hit = cum <= u[:, :1] * cum[:, -1:]
    ksel = hit.sum(1, keepdim=True).clamp(max=num_mix - 1)  # (B, 1, H, W)

    def pick(t):  # (B, K, H, W) -> (B, H, W), component k*
        return t.gather(1, ksel).squeeze(1)

    def level(mean, log_scale, uc):
        scale = torch.exp2(torch.clamp(log_scale, min=_MIN_LOG_SCALE) * _LOG2E)
        v = mean + scale * (torch.log2(uc) * _LN2 - torch.log2(1.0 - uc) * _LN2)
        v = torch.clamp(v, -1.0, 1.0)
        lev = torch.clamp(torch.floor((v + 1.0) * half_levels + 0.5), max=last)
        return (2.0 * lev - last) / last

    x0 = level(pick(means[:, 0]), pick(log_scales[:, 0]), u[:, 1])
    if channels == 1:
        return x0.unsqueeze(1)
    a0, a1, a2 = (pick(coeffs[:, j]) for j in range(3))
    x1 = level(pick(means[:, 1]) + a0 * x0, pick(log_scales[:, 1]), u[:, 2])
    x2 = level(pick(means[:, 2]) + a1 * x0 + a2 * x1, pick(log_scales[:, 2]), u[:, 3])
    return torch.stack([x0, x1, x2], 1)


# --------------------------------------------------------------------------- checks

def _check_params(params, num_mix, what: str) -> int:
    """Shape / dtype checks of params and num_mix; returns C."""
    if not isinstance(params, torch.Tensor):
        raise TypeError(f"{what}: params must be a torch.Tensor, got {type(params).__name__}")
    if not params.is_floating_point():
        raise TypeError(f"{what}: params must be a floating-point tensor, got dtype "
                        f"{params.dtype}")
    if isinstance(num_mix, bool) or not isinstance(num_mix, int):
        raise TypeError(f"{what}: num_mix must be an int, got {type(num_mix).__name__}")
    if num_mix < 1:
        raise ValueError(f"{what}: num_mix must be >= 1, got {num_mix}")
    if params.dim() != 4:
        raise ValueError(f"{what}: params must be 4-d (B, P, H, W), got shape "
                         f"{tuple(params.shape)}")
    channels = _channels(params, num_mix)
    if channels == 0:
        raise ValueError(f"{what}: params must have 10 * num_mix = {10 * num_mix} channels "
                         f"(RGB) or 3 * num_mix = {3 * num_mix} (grayscale) on dim 1, got "
                         f"{params.shape[1]} for params of shape {tuple(params.shape)}")
    return channels


def _check_levels(levels, what: str) -> None:
    """levels is L, the number of levels of the grid of [-1, 1]: an int >= 2."""
    if isinstance(levels, bool) or not isinstance(levels, int):
        raise TypeError(f"{what}: levels must be an int >= 2 (the number of levels of x), "
                        f"got {type(levels).__name__} {levels!r}")
    if levels < 2:
        raise ValueError(f"{what}: levels must be >= 2 (the number of levels of x), "
                         f"got {levels}")


def _check_data(params, t, name: str, channels: int, what: str) -> None:
    """Shape / dtype / device checks of x (channels = C) or uniforms (channels = 1 + C)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{what}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{what}: {name} must be a floating-point tensor, got dtype {t.dtype}")
    if t.device != params.device:
        raise ValueError(f"{what}: {name} must be on params' device {params.device}, "
                         f"got {t.device}")
    b, _, h, w = params.shape
    if tuple(t.shape) != (b, channels, h, w):
        raise ValueError(f"{what}: {name} must have shape {(b, channels, h, w)} for params of "
                         f"shape {tuple(params.shape)}, got {tuple(t.shape)}")


def _check(params, x, num_mix, levels, what: str = "dmol_nll") -> int:
    channels = _check_params(params, num_mix, what)
    _check_levels(levels, what)
    _check_data(params, x, "x", channels, what)
    return channels


def _check_x_values(x: torch.Tensor, levels: int) -> None:
    """x in [-1, 1] (a NaN is not) and on the L-level grid (to 0.05 of a level: fp16 x passes
    at L = 256). Data-dependent, so it runs inside the op, never in a traced graph; two host
    reads (the range, then the grid), skipped while a CUDA graph is captured."""
    check_range("dmol_nll", "x", x, -1.0, 1.0, hi_open=False)
    if x.numel() == 0 or capturing():
        return
    v = (x.float() + 1.0) * ((levels - 1) / 2)  # the level index i of x = (2i - (L - 1)) / (L - 1)
    off = (v - v.round()).abs().max().item()
    if off > 0.05:
        raise ValueError(f"dmol_nll: x must be quantised to the {levels} levels "
                         f"(2i - {levels - 1}) / {levels - 1} of [-1, 1] given by levels = L = "
                         f"{levels} (a float32 tensor; bf16 cannot hold them), got a value "
                         f"{off:.3f} of a level away from the grid")


def _check_sample_values(params: torch.Tensor, u: torch.Tensor) -> None:
    """uniforms in [0, 1) and params finite (a NaN is neither): the sampler's clamp to [-1, 1]
    would turn a NaN into a valid-looking level. One host read each, inside the op, skipped
    while a CUDA graph is captured."""
    check_range("dmol_sample", "uniforms", u, 0.0, 1.0)
    check_finite("dmol_sample", "params (logits, means, log-scales, coefficients)", params)


# --------------------------------------------------------------------------- torch.library ops

def _kernel_inputs(params: torch.Tensor, t: torch.Tensor):
    """params as is (the kernels read any strides); x / uniforms as float32."""
    return params, t.to(torch.float32)


@torch.library.custom_op("artrt::dmol_nll", mutates_args=())
def _dmol_nll_op(params: torch.Tensor, x: torch.Tensor, num_mix: int, levels: int,
                 backend: str) -> torch.Tensor:
    """The op behind :func:`dmol_nll`."""
    channels = _check(params, x, num_mix, levels)
    _check_x_values(x, levels)
    name = backends.select("dmol_nll", params.device, params.dtype, backend, PREFERENCE)
    if name == "reference":
        return dmol_nll_ref(params, x, num_mix, levels)
    from artrt.kernels.dmol import dmol_nll_fwd

    return dmol_nll_fwd(*_kernel_inputs(params, x), num_mix, channels, levels)


@_dmol_nll_op.register_fake
def _(params, x, num_mix, levels, backend):
    _check(params, x, num_mix, levels)
    return params.new_empty((params.shape[0],), dtype=_out_dtype(params.dtype))


@torch.library.custom_op("artrt::dmol_nll_backward", mutates_args=())
def dmol_nll_backward(grad_out: torch.Tensor, params: torch.Tensor, x: torch.Tensor,
                      num_mix: int, levels: int, backend: str) -> torch.Tensor:
    """Gradient of artrt::dmol_nll with respect to params: (B, P, H, W), contiguous."""
    channels = _check(params, x, num_mix, levels, "dmol_nll backward")
    _check_grad(grad_out, params)
    name = backends.select("dmol_nll backward", params.device, params.dtype, backend, PREFERENCE)
    if name == "reference":
        return dmol_nll_backward_ref(grad_out, params, x, num_mix, levels).contiguous()
    from artrt.kernels.dmol import dmol_nll_bwd

    return dmol_nll_bwd(grad_out.to(torch.float32).contiguous(),
                        *_kernel_inputs(params, x), num_mix, channels, levels)


@dmol_nll_backward.register_fake
def _(grad_out, params, x, num_mix, levels, backend):
    _check(params, x, num_mix, levels, "dmol_nll backward")
    _check_grad(grad_out, params)
    return torch.empty_like(params, memory_format=torch.contiguous_format)


def _check_grad(grad_out: torch.Tensor, params: torch.Tensor) -> None:
    if tuple(grad_out.shape) != (params.shape[0],) or grad_out.device != params.device:
        raise ValueError(f"dmol_nll backward: grad_out must have shape ({params.shape[0]},) "
                         f"on {params.device}, got {tuple(grad_out.shape)} on {grad_out.device}")


def _setup_context(ctx, inputs, output):
    params, x, num_mix, levels, backend = inputs
    ctx.save_for_backward(params, x)
    ctx.num_mix, ctx.levels, ctx.backend = num_mix, levels, backend


def _dmol_nll_autograd(ctx, grad_out):
    params, x = ctx.saved_tensors
    if not ctx.needs_input_grad[0]:
        return None, None, None, None, None
    grad = dmol_nll_backward(grad_out, params, x, ctx.num_mix, ctx.levels, ctx.backend)
    return grad, None, None, None, None


_dmol_nll_op.register_autograd(_dmol_nll_autograd, setup_context=_setup_context)


@torch.library.custom_op("artrt::dmol_sample", mutates_args=())
def _dmol_sample_op(params: torch.Tensor, uniforms: torch.Tensor, num_mix: int, levels: int,
                    backend: str) -> torch.Tensor:
    """The op behind :func:`dmol_sample` (uniforms given)."""
    channels = _check_params(params, num_mix, "dmol_sample")
    _check_levels(levels, "dmol_sample")
    _check_data(params, uniforms, "uniforms", 1 + channels, "dmol_sample")
    _check_sample_values(params, uniforms)
    name = backends.select("dmol_sample", params.device, params.dtype, backend, PREFERENCE)
    return _sample_backend(name, params, uniforms, num_mix, channels, levels)


def _sample_backend(name: str, params: torch.Tensor, uniforms: torch.Tensor, num_mix: int,
                    channels: int, levels: int) -> torch.Tensor:
    """Backend ``name`` (selected) of dmol_sample on checked arguments."""
    if name == "reference":
        return dmol_sample_ref(params, uniforms, num_mix, levels)
    from artrt.kernels.dmol import dmol_sample_fwd

    return dmol_sample_fwd(*_kernel_inputs(params, uniforms), num_mix, channels, levels)


@_dmol_sample_op.register_fake
def _(params, uniforms, num_mix, levels, backend):
    channels = _check_params(params, num_mix, "dmol_sample")
    _check_levels(levels, "dmol_sample")
    b, _, h, w = params.shape
    return params.new_empty((b, channels, h, w), dtype=torch.float32)


# --------------------------------------------------------------------------- layouts

def _check_layout(layout, what: str, arg: str = "layout") -> None:
    if not isinstance(layout, str) or layout not in LAYOUTS:
        raise ValueError(f"{what}: {arg} must be one of {LAYOUTS}, got {layout!r}")


def _to_artrt_layout(params: torch.Tensor, num_mix: int, channels: int,
                     layout: str) -> torch.Tensor:
    """params (B, P, H, W) in ``layout`` -> the same values in artrt's layout (a copy for
    RGB in the reference layout; params itself otherwise). Differentiable."""
    if layout == "artrt" or channels == 1:
        return params
    k = num_mix
    rest = params[:, k:].unflatten(1, (3, 3, k)).transpose(1, 2).flatten(1, 3)  # (B, 9K, H, W)
    return torch.cat([params[:, :k], rest], 1)


def dmol_layout_index(num_mix: int, channels: int = 3, *, src: str = "openai",
                      dst: str = "artrt", device: torch.device | str | None = None
                      ) -> torch.Tensor:
    """The channel permutation between the DMoL params layouts (see the module docstring).

    Returns ``index`` (P,) int64 with ``params_dst = params_src[:, index]`` for params of
    shape (B, P, H, W), P = 10 K (``channels=3``) or 3 K (``channels=1``: the identity).
    openai -> artrt and artrt -> openai are the same permutation.
    """
    what = "dmol_layout_index"
    if isinstance(num_mix, bool) or not isinstance(num_mix, int) or num_mix < 1:
        raise ValueError(f"{what}: num_mix must be an int >= 1, got {num_mix!r}")
    if channels not in (1, 3) or isinstance(channels, bool):
        raise ValueError(f"{what}: channels must be 3 (RGB) or 1 (grayscale), got {channels!r}")
    _check_layout(src, what, "src")
    _check_layout(dst, what, "dst")
    k = num_mix
    index = torch.arange((10 if channels == 3 else 3) * k, device=device)
    if src == dst or channels == 1:
        return index
    rest = index[k:].view(3, 3, k).transpose(0, 1).flatten()
    return torch.cat([index[:k], rest])


@torch.no_grad()
def dmol_convert_layer(layer: torch.nn.Module, num_mix: int, channels: int = 3, *,
                       src: str = "openai", dst: str = "artrt") -> torch.nn.Module:
    """Permute, in place, the output channels of the layer that produces DMoL params, so that
    it emits layout ``dst`` where it emitted ``src``.

    ``layer``: the network's final layer (one layer, not a block), e.g. an
    ``nn.Conv2d(Cin, P, 1)`` (the 1x1 output layer of PixelCNN++) or an ``nn.Linear(Cin, P)``
    applied per pixel. Every parameter of it whose first dimension is P = 10 K (3 K) is
    permuted along that dimension: ``weight`` (P, ...), ``bias`` (P,), weight norm's
    ``weight_g`` / ``weight_v`` or a parametrization's ``original`` tensors. The parameter
    objects are kept (an optimizer holding them stays valid; its state is not permuted).
    Returns ``layer``.
    """
    what = "dmol_convert_layer"
    if not isinstance(layer, torch.nn.Module):
        raise TypeError(f"{what}: layer must be a torch.nn.Module, got {type(layer).__name__}")
    index = dmol_layout_index(num_mix, channels, src=src, dst=dst)
    p = index.numel()
    owned = [t for t in layer.parameters() if t.dim() >= 1 and t.shape[0] == p]
    if not owned:
        shapes = {n: tuple(t.shape) for n, t in layer.named_parameters()}
        raise ValueError(f"{what}: layer has no parameter with first dimension P = {p} "
                         f"({'10' if channels == 3 else '3'} * num_mix = {num_mix}); its "
                         f"parameters: {shapes}")
    for t in owned:
        t.copy_(t[index.to(t.device)])
    return layer


# --------------------------------------------------------------------------- public functions

def dmol_nll(params: torch.Tensor, x: torch.Tensor, num_mix: int, *, levels: int = 256,
             layout: str = "artrt", backend: str | None = None) -> torch.Tensor:
    """Per-image negative log-likelihood of x under a discretized mixture of logistics.

    Args:
        params: (B, 10 K, H, W) for RGB or (B, 3 K, H, W) for grayscale, the network's
            output in the layout of the module docstring; float32, float16 or bfloat16 for
            the kernels (math in float32), any float dtype for the reference; any strides.
        x: (B, C, H, W) data in [-1, 1] on the L levels (2i - (L - 1)) / (L - 1),
            i = 0 .. L - 1, C = 3 or 1; any float dtype (float32 recommended: bf16 cannot
            represent the levels), not differentiated. A value off the grid, outside
            [-1, 1] or NaN raises ValueError (checked on the host inside the op).
        num_mix: K, the number of mixture components.
        levels: L >= 2, the number of levels of x (256 for 8-bit images, 2 for binary).
        layout: ``"artrt"`` (the module docstring's table) or ``"openai"`` (the PixelCNN++
            reference code's: K logits, then per colour channel its K means, K log-scales
            and K coefficients); ``"openai"`` permutes params once (a copy) before the op.
        backend: force ``"reference"`` or ``"triton"``; ``None`` follows
            ``artrt.use_backend`` / ``ARTRT_BACKEND``, else triton on CUDA, reference on CPU.

    Returns:
        (B,) NLL in nats, summed over pixels and channels; float32 (float64 for float64
        params). Divide by ``C * H * W * ln 2`` for bits per dimension. Differentiable in
        params. Grayscale is served by the same kernels through a constexpr switch.

    params are not checked for NaN or inf (a host read per training step): an image whose
    params hold one gets a non-finite NLL (NaN or inf: the backends may differ in which);
    the other images are unaffected.
    """
    _check_layout(layout, "dmol_nll")
    channels = _check(params, x, num_mix, levels)
    params = _to_artrt_layout(params, num_mix, channels, layout)
    return _dmol_nll_op(params, x, num_mix, levels, backends.requested(backend))


def dmol_sample(params: torch.Tensor, num_mix: int, generator: torch.Generator | None = None,
                *, uniforms: torch.Tensor | None = None, levels: int = 256,
                layout: str = "artrt", backend: str | None = None) -> torch.Tensor:
    """Draw x from the discretized mixture of logistics given by params (no gradient).

    Per pixel: a component by inverse CDF of softmax(logits) with ``uniforms[:, 0]``, then
    channel c = mean + exp(max(s, -7)) logit(u) with ``u = uniforms[:, 1 + c]`` (G and B
    using the already sampled, quantised R and G), clamped to [-1, 1] and rounded to the
    nearest of the L levels.

    Args:
        params: (B, 10 K, H, W) or (B, 3 K, H, W), as in :func:`dmol_nll`; finite (a NaN or
            an infinity raises ValueError rather than being clamped into a level).
        num_mix: K.
        generator: the torch.Generator for the uniforms when ``uniforms`` is None.
        uniforms: optional pre-drawn (B, 1 + C, H, W) floats in [0, 1) (float32 for exact
            reproduction), so that another sampler (e.g. a cached, pixel-by-pixel one) can
            reproduce the draw exactly; a value outside [0, 1) or NaN raises ValueError.
        levels: L >= 2, as in :func:`dmol_nll`.
        layout: ``"artrt"`` or ``"openai"``, as in :func:`dmol_nll`.
        backend: as in :func:`dmol_nll`.

    Returns:
        (B, C, H, W) float32 on the L-level grid (2i - (L - 1)) / (L - 1) of [-1, 1].
    """
    _check_layout(layout, "dmol_sample")
    channels = _check_params(params, num_mix, "dmol_sample")
    _check_levels(levels, "dmol_sample")
    b, _, h, w = params.shape
    if uniforms is None:
        uniforms = torch.rand((b, 1 + channels, h, w), generator=generator,
                              device=params.device, dtype=torch.float32)
    _check_data(params, uniforms, "uniforms", 1 + channels, "dmol_sample")
    with torch.no_grad():
        params = _to_artrt_layout(params.detach(), num_mix, channels, layout)
        return _dmol_sample_op(params, uniforms, num_mix, levels, backends.requested(backend))


def _dmol_sample_unchecked(params: torch.Tensor, uniforms: torch.Tensor, num_mix: int,
                           levels: int, backend: str | None = None) -> torch.Tensor:
    """:func:`dmol_sample` in artrt's layout without any check, straight to the backend (no
    host read): for a sampler that checked what it passes once (the model's PixelCNN++
    sampler: the uniforms once per sample, the params the network gave once after its
    steps). params (B, P, H, W), uniforms (B, 1 + C, H, W) float32 in [0, 1), levels >= 2 as
    :func:`dmol_sample` takes them; bad values give wrong levels, not errors. Eager only."""
    name = backends.select("dmol_sample", params.device, params.dtype,
                           backends.requested(backend), PREFERENCE)
    with torch.no_grad():
        return _sample_backend(name, params.detach(), uniforms, num_mix,
                               _channels(params, num_mix), levels)
