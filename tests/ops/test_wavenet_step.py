"""artrt.ops.wavenet_step: the reference step against the full WaveNet forward (teacher
forcing, every position, with and without conditioning, K = 2 and 3), its inverse-CDF
sample, the step/offset position, packing, bad inputs, the op ``artrt::wavenet_step`` under
``torch.library.opcheck`` and ``torch.compile(fullgraph=True)``, the extension's binding and
its error path without a GPU, bad values (rejected before anything is written); the Triton
kernel against the reference under the interpreter; on a GPU the CUDA and Triton kernels
against the reference (R 32/64/128, S 128/256, 256 levels, fp32/fp16/bf16, every
conditioning layout)."""

from __future__ import annotations

import pytest
import torch

import artrt
from artrt import backends
from artrt.backends import BackendUnavailableError
from artrt.models._common import inverse_cdf
from artrt.models.wavenet import WaveNet, WaveNetConfig
from artrt.ops.wavenet_step import (
    WaveNetStepWeights,
    pack_wavenet_step_weights,
    wavenet_step,
    wavenet_step_ref,
)
from artrt.sampling.wavenet import WaveNetCache, pack_wavenet
from tests.helpers import kernel_backends
from tests.ops.common import no_launch

SMALL = {"res_channels": 8, "gate_channels": 6, "skip_channels": 10, "cond_channels": 4}


def _model(shape=(1, 24), levels=16, num_classes=0, kernel_size=2, layers=5, cycle=4,
           seed=0, **kw):
    torch.manual_seed(seed)
    cfg = {**SMALL, **kw}
    model = WaveNet(WaveNetConfig(shape, levels, num_classes, kernel_size=kernel_size,
                                  layers=layers, dilation_cycle=cycle, **cfg)).eval()
    with torch.no_grad():  # non-zero start value and biases, so every term is exercised
        model.start.fill_(0.3)
    return model


def _cond_table(model, labels, b):
    """What WaveNetCache feeds the op for B sequences: (B, Cc, T), (B, Cc, 1) or None."""
    return WaveNetCache(model, b, labels).cond_table


def _seq(model, x):
    """x (B, *shape) -> the generation-order sequence (B, T)."""
    steps = model.generation_steps().reshape(-1)
    return x.reshape(x.shape[0], -1)[:, steps.argsort()]


def _teacher_forced(weights, x_seq, cond, backend=None, tokens_seed=None):
    """Logits (B, levels, T) of every position with tokens[:, t-1] = x_seq[:, t-1]; the op
    samples into tokens[:, t], which the next step overwrites with x_seq[:, t]."""
    b, length = x_seq.shape
    state = weights.new_state(b)
    tokens = torch.zeros_like(x_seq)
    u = torch.rand((b, length), generator=torch.Generator().manual_seed(1)).to(x_seq.device)
    out = torch.empty((b, weights.levels, length), device=x_seq.device)
    logits = torch.empty((b, weights.levels), device=x_seq.device)
    samples = torch.empty_like(x_seq)
    for t in range(length):
        wavenet_step(weights, state, tokens, u, t, cond, logits=logits, backend=backend)
        out[:, :, t] = logits
        samples[:, t] = tokens[:, t]
        tokens[:, t] = x_seq[:, t]
    return out, samples, u, state


@pytest.mark.parametrize("shape,num_classes,kernel_size", [
    ((1, 24), 0, 2), ((1, 24), 0, 3), ((2, 9), 3, 2), ((1, 3, 5), 0, 2), ((2, 3, 3), 4, 3)])
def test_reference_matches_forward(shape, num_classes, kernel_size):
    model = _model(shape, num_classes=num_classes, kernel_size=kernel_size)
    x = torch.randint(0, 16, (3, *shape), generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([1, 0, 2]) % num_classes if num_classes else None
    with torch.no_grad():
        want = model(x, labels).reshape(3, 16, -1)[:, :, model.generation_steps().reshape(-1)
                                                    .argsort()]
        got, samples, u, _ = _teacher_forced(pack_wavenet(model), _seq(model, x),
                                             _cond_table(model, labels, 3))
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert torch.equal(samples, inverse_cdf(got.transpose(1, 2), u))


def test_ring_buffers_hold_only_dilated_past():
    """The state is (K-1)(1 + R sum d) floats per sequence, independent of the length."""
    short, long = _model((1, 20), kernel_size=3), _model((1, 400), kernel_size=3)
    w = pack_wavenet(short)
    assert w.dilations == (1, 2, 4, 8, 1)
    assert w.state_size == 2 * (1 + 8 * 16) == pack_wavenet(long).state_size
    assert [s for _, s in w.ring_slices()] == [2, 4, 8, 16, 2]


def test_position_from_step_tensor_and_offset_and_past_the_end():
    model = _model()
    w = pack_wavenet(model)
    x = torch.randint(0, 16, (2, 24), generator=torch.Generator().manual_seed(2))
    u = torch.rand(2, 24, generator=torch.Generator().manual_seed(3))
    runs = []
    for step, offset in [(5, 0), (torch.tensor([2]), 3), (0, 5)]:
        state = torch.randn(2, w.state_size, generator=torch.Generator().manual_seed(4))
        tokens, logits = x.clone(), torch.empty(2, 16)
        wavenet_step(w, state, tokens, u, step, offset=offset, logits=logits)
        runs.append((state, tokens, logits))
    for state, tokens, logits in runs[1:]:
        for a, b in zip(state, runs[0][0], strict=True):
            assert torch.equal(a, b)
        assert torch.equal(tokens, runs[0][1]) and torch.equal(logits, runs[0][2])
    assert not torch.equal(runs[0][1], x)  # the sample was written
    state = torch.randn(2, w.state_size)
    before, tokens = state.clone(), x.clone()
    wavenet_step(w, state, tokens, u, 20, offset=4)  # t = 24 = T: nothing
    assert torch.equal(state, before) and torch.equal(tokens, x)


def test_inverse_cdf_edges():
    """u = 0 draws the first level with probability > 0; u close to 1 the last (clamped)."""
    model = _model(levels=4)
    w = pack_wavenet(model)
    with torch.no_grad():
        w.head_w2.zero_()
        w.head_b2.copy_(torch.tensor([-1e4, 0.0, 0.0, 0.0]))
    tokens = torch.zeros(3, 24, dtype=torch.int64)
    u = torch.tensor([0.0, 0.5, 1 - 1e-7])[:, None].expand(3, 24).contiguous()
    wavenet_step(w, w.new_state(3), tokens, u, 0)
    assert tokens[:, 0].tolist() == [1, 2, 3]


def test_packing():
    model = _model(num_classes=3)
    w = pack_wavenet(model)
    assert (w.layers, w.kernel_size, w.res_channels, w.gate_channels, w.skip_channels,
            w.cond_channels, w.levels) == (5, 2, 8, 6, 10, 4, 16)
    assert w.meta.tolist() == [[d, o] for d, (o, _) in zip(w.dilations, w.ring_slices(),
                                                              strict=True)]
    half = w.to(torch.float64)
    assert half.dtype == torch.float64 and half.meta.dtype == torch.int32
    blk = model.blocks[2]
    torch.testing.assert_close(w.conv_w[2, 8:16, :], blk.conv.weight[:, :, 1].t().detach())
    torch.testing.assert_close(w.conv_w[2, 16:, :], blk.cond.weight[:, :, 0].t().detach())
    torch.testing.assert_close(w.out_w[2, :, 8:], blk.skip.weight[:, :, 0].t().detach())
    other = pack_wavenet(_model(num_classes=3, seed=1))
    w.copy_(other)
    assert torch.equal(w.conv_w, other.conv_w)
    with pytest.raises(ValueError, match="different sizes"):
        w.copy_(pack_wavenet(_model()))
    with pytest.raises(ValueError, match="meta must hold"):
        WaveNetStepWeights(**{**w.__dict__, "meta": w.meta + 1})
    with pytest.raises(TypeError, match="dtype"):
        WaveNetStepWeights(**{**w.__dict__, "in_b": w.in_b.double()})
    with pytest.raises(ValueError, match="out_w must have shape"):
        WaveNetStepWeights(**{**w.__dict__, "out_w": w.out_w[:, :, 1:].contiguous()})
    with pytest.raises(ValueError, match="contiguous"):
        WaveNetStepWeights(**{**w.__dict__, "head_w1": w.head_w1.t()})
    with pytest.raises(ValueError, match="dilations"):
        WaveNetStepWeights(**{**w.__dict__, "dilations": (1, 2)})


def test_pack_without_biases():
    """Missing biases are zeros."""
    r, g, s, k, levels = 4, 3, 5, 2, 6
    w = pack_wavenet_step_weights(
        start=torch.zeros(()), input_weight=torch.randn(r, 1, k), input_bias=None,
        conv_weights=[torch.randn(2 * g, r, k)], conv_biases=[None], cond_weights=None,
        res_weights=[torch.randn(r, g, 1)], res_biases=[None],
        skip_weights=[torch.randn(s, g, 1)], skip_biases=[None], dilations=[2],
        head=(torch.randn(s, s, 1), None, torch.randn(levels, s, 1), None))
    assert w.cond_channels == 0 and not w.conv_b.any() and not w.head_b2.any()
    tokens = torch.zeros(2, 5, dtype=torch.int64)
    wavenet_step(w, w.new_state(2), tokens, torch.rand(2, 5), 0)


def _args(model=None, b=2):
    model = model or _model(num_classes=3)
    w = pack_wavenet(model)
    return dict(weights=w, state=w.new_state(b), tokens=torch.zeros(b, 24, dtype=torch.int64),
                u=torch.rand(b, 24), step=0, cond=torch.zeros(b, 4, 1))


@pytest.mark.parametrize("bad,exc,match", [
    (dict(weights="w"), TypeError, "WaveNetStepWeights"),
    (dict(state=torch.zeros(2, 5)), ValueError, r"state must have shape \(B, state_size\)"),
    (dict(tokens=torch.zeros(2, 24)), TypeError, "tokens must be torch.int64"),
    (dict(tokens=torch.zeros(2, 48, dtype=torch.int64)[:, ::2]), ValueError, "contiguous"),
    (dict(tokens=torch.zeros(0, 24, dtype=torch.int64)), ValueError, "B, T >= 1"),
    (dict(u=torch.rand(2, 24).double()), TypeError, "u must be torch.float32"),
    (dict(u=torch.rand(2, 23)), ValueError, r"u must have shape \(B, T\)"),
    (dict(u=torch.rand(2, 24, device="meta")), ValueError, "weights' device"),
    (dict(step=-1), TypeError, "step must be"),
    (dict(step=torch.tensor([0], dtype=torch.int32)), TypeError, "step must be torch.int64"),
    (dict(offset=-2), TypeError, "offset must be"),
    (dict(cond=None), ValueError, "conditioning channels"),
    (dict(cond=torch.zeros(2, 4)), ValueError, r"\(B, Cc, T\)"),
    (dict(cond=torch.zeros(2, 5, 24)), ValueError, "cond must have shape"),
    (dict(cond=torch.zeros(2, 4, 7)), ValueError, "cond must have shape"),
    (dict(logits=torch.zeros(2, 15)), ValueError, "logits must have shape"),
])
def test_bad_inputs(bad, exc, match):
    args = {**_args(), **bad}
    before = args["state"].clone() if isinstance(args["state"], torch.Tensor) else None
    with pytest.raises(exc, match=match):
        wavenet_step(**args)
    if before is not None and before.shape == args["state"].shape:
        assert torch.equal(args["state"], before)


def test_cond_given_to_unconditioned_weights():
    args = {**_args(_model()), "cond": torch.zeros(2, 4, 1)}
    with pytest.raises(ValueError, match="no conditioning channels"):
        wavenet_step(**args)


def test_forced_backends():
    args = _args()
    with pytest.raises(BackendUnavailableError, match="cuda"):
        wavenet_step(**args, backend="cuda")
    if "triton" not in kernel_backends():
        with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET"):
            wavenet_step(**args, backend="triton")
    with artrt.use_backend("reference"):
        wavenet_step(**args)
    ref = _args()
    wavenet_step_ref(**ref)
    assert torch.equal(ref["tokens"], args["tokens"]) and torch.equal(ref["state"],
                                                                      args["state"])


def test_default_backend_on_cpu_is_the_reference(monkeypatch):
    """No backend forced: CPU tensors take the reference, even under the interpreter."""
    import artrt.kernels.wavenet_step as kernels

    with no_launch(monkeypatch, kernels, "wavenet_step_fwd"):
        wavenet_step(**_args())


# A value the step reads that is out of range: a clear ValueError, nothing written.
@pytest.mark.parametrize("bad,match", [
    (dict(step=torch.tensor([-1])), "step must hold a position >= 0"),
    (dict(step=torch.tensor([-3]), offset=1), "step must hold a position >= 0"),
    (dict(tokens=torch.full((2, 24), 16, dtype=torch.int64)), r"tokens\[:, 4\]"),
    (dict(tokens=torch.full((2, 24), -1, dtype=torch.int64)), r"tokens\[:, 4\]"),
    (dict(u=torch.full((2, 24), 1.0)), r"u\[:, 5\] must lie in \[0.0, 1.0\)"),
    (dict(u=torch.full((2, 24), -0.5)), r"u\[:, 5\] must lie"),
    (dict(u=torch.full((2, 24), float("nan"))), r"u\[:, 5\] .*got a NaN"),
    (dict(cond=torch.full((2, 4, 1), float("inf"))), r"cond\[:, :, 0\] must be finite"),
])
@pytest.mark.parametrize("backend", ["reference", *kernel_backends()])
def test_bad_values_raise_before_writing(bad, match, backend):
    args = {**_args(), "step": 5, **bad}
    before = [args[k].clone() for k in ("state", "tokens")]
    with pytest.raises(ValueError, match=match):
        wavenet_step(**args, backend=backend)
    assert torch.equal(args["state"], before[0]) and torch.equal(args["tokens"], before[1])


@pytest.mark.parametrize("backend", ["reference", *kernel_backends()])
def test_values_outside_the_step_are_not_read(backend):
    """Only tokens[:, t-1], u[:, t] and cond's column t are read (so only they are checked):
    garbage elsewhere, and a step past the end (which reads nothing), are fine."""
    args = _args()
    args["tokens"][:, 5:] = 99
    args["u"][:, 7:] = float("nan")
    wavenet_step(**{**args, "step": 5}, backend=backend)
    assert 0 <= int(args["tokens"][0, 5]) < 16
    wavenet_step(**{**args, "step": torch.tensor([30])}, backend=backend)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape,num_classes,kernel_size,sizes", [
    ((1, 24), 0, 2, {}),
    ((2, 9), 3, 3, dict(res_channels=5, gate_channels=7, skip_channels=9, cond_channels=3)),
    ((1, 3, 5), 2, 2, {}),
])
def test_triton_interpreter_matches_reference(shape, num_classes, kernel_size, sizes, dtype):
    """The Triton kernel on CPU tensors (interpreter), step by step against the reference:
    logits, samples and ring buffers; odd sizes, K = 3, every conditioning layout."""
    if "triton" not in kernel_backends("cpu"):
        pytest.skip("the Triton interpreter is off (TRITON_INTERPRET unset)")
    model = _model(shape, 13, num_classes, kernel_size=kernel_size, layers=4, cycle=3,
                   **sizes)
    labels = torch.tensor([1, 0, 2]) % num_classes if num_classes else None
    weights = pack_wavenet(model).to(dtype)
    x = _seq(model, torch.randint(0, 13, (3, *shape),
                                  generator=torch.Generator().manual_seed(2)))
    cond = _cond_table(model, labels, 3)
    want, _, u, state_ref = _teacher_forced(weights, x, cond, backend="reference")
    got, samples, _, state = _teacher_forced(weights, x, cond, backend="triton")
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state, state_ref, atol=1e-5, rtol=1e-5)
    _assert_samples_follow(samples, want, u, eps=1e-5)


# --------------------------------------------------------------------------- the op

# conditioning of the op's tests: none, class (B, Cc, 1), positional (B, Cc, T) expanded
# over B (stride 0), positional + class (B, Cc, T)
OP_CONDS = {"none": ((1, 24), 0), "class": ((1, 24), 3), "positional": ((1, 3, 5), 0),
            "positional+class": ((1, 3, 5), 3)}


def _op_case(cond_kind, b=2):
    shape, classes = OP_CONDS[cond_kind]
    model = _model(shape, num_classes=classes)
    labels = torch.tensor([1, 2, 0])[:b] if classes else None
    return model, pack_wavenet(model), _cond_table(model, labels, b)


@pytest.mark.parametrize("cond_kind", list(OP_CONDS))
@pytest.mark.parametrize("tensor_step", [False, True])
@pytest.mark.parametrize("with_logits", [False, True])
def test_opcheck(cond_kind, tensor_step, with_logits):
    b = 2
    model, w, cond = _op_case(cond_kind, b)
    length = model.length
    g = torch.Generator().manual_seed(5)
    step, offset = (torch.tensor([3]), 2) if tensor_step else (None, 5)  # t = 5 either way
    logits = torch.empty(b, w.levels) if with_logits else None
    args = (*w.tensors(), list(w.dilations), torch.randn(b, w.state_size, generator=g),
            torch.randint(0, w.levels, (b, length), generator=g),
            torch.rand(b, length, generator=g), step, offset, cond, logits, "reference")
    torch.library.opcheck(torch.ops.artrt.wavenet_step.default, args)


def test_op_checks_its_weights():
    """Called directly, the op checks the weights it is given (no dataclass in between)."""
    args = _args(_model())
    w = args["weights"]
    tensors = [t.double() if t is w.in_b else t for t in w.tensors()]
    with pytest.raises(TypeError, match="in_b has dtype"):
        torch.ops.artrt.wavenet_step(*tensors, list(w.dilations), args["state"],
                                     args["tokens"], args["u"], None, 0, None, None,
                                     "reference")
    with pytest.raises(ValueError, match="dilations must be"):
        torch.ops.artrt.wavenet_step(*w.tensors(), [1, 2], args["state"], args["tokens"],
                                     args["u"], None, 0, None, None, "reference")


@pytest.mark.parametrize("cond_kind", list(OP_CONDS))
@pytest.mark.parametrize("tensor_step", [False, True])
def test_torch_compile_fullgraph(cond_kind, tensor_step):
    """A compiled step function samples the same sequence as eager, step by step (an int
    step turns symbolic after the first recompile)."""
    torch._dynamo.reset()
    b = 2
    model, w, cond = _op_case(cond_kind, b)
    length = model.length
    u = torch.rand(b, length, generator=torch.Generator().manual_seed(6))

    def step(weights, state, tokens, u, t, cond, logits):
        wavenet_step(weights, state, tokens, u, t, cond, logits=logits)
        return logits * 2.0

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    runs = []
    for fn in (step, compiled):
        state, logits = w.new_state(b), torch.empty(b, w.levels)
        tokens = torch.zeros(b, length, dtype=torch.int64)
        position, outs = torch.zeros(1, dtype=torch.int64), []
        for t in range(length):
            outs.append(fn(w, state, tokens, u, position if tensor_step else t, cond, logits))
            position += 1
        runs.append((state, tokens, torch.stack(outs)))
    (state, tokens, outs), (c_state, c_tokens, c_outs) = runs
    assert torch.equal(c_tokens, tokens) and torch.equal(c_state, state)
    assert torch.equal(c_outs, outs)
    assert tokens.any()  # the samples were written


# --------------------------------------------------------------------------- the extension

_EXT_ARGS = dict(start=1, in_w=1, in_b=1, conv_w=1, conv_b=1, out_w=1, out_b=1, head_w1=1,
                 head_b1=1, head_w2=1, head_b2=1, meta=1, state=1, tokens=1, u=1, step=0,
                 cond=0, logits=0, batch=1, length=4, state_size=1 + 8 * 3, layers=2, res=8,
                 gate=8, skip=8, kernel_size=2, cond_channels=0, cond_length=1, levels=16,
                 sc_b=0, sc_c=0, sc_t=0, offset=0, dtype=0, device=0, stream=0)


def test_extension_binding_rejects_bad_arguments():
    ext, why = backends.load_extension()
    if ext is None:
        pytest.skip(why)
    for bad, match in [(dict(dtype=3), "dtype code"), (dict(kernel_size=9), "out of range"),
                       (dict(levels=1), "out of range"), (dict(batch=-1), "batch must be"),
                       (dict(conv_w=0), "conv_w is a null pointer"),
                       (dict(state=0), "state is a null pointer"),
                       (dict(cond_channels=4), "cond is a null pointer"),
                       (dict(state_size=0), "state_size")]:
        with pytest.raises(ValueError, match=match):
            ext.wavenet_step(**{**_EXT_ARGS, **bad})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error path")
def test_extension_without_gpu_raises_clearly():
    ext, why = backends.load_extension()
    if ext is None:
        pytest.skip(why)
    with pytest.raises(RuntimeError, match=r"artrt\._C\.wavenet_step: CUDA error"):
        ext.wavenet_step(**_EXT_ARGS)


# --------------------------------------------------------------------------- GPU


def _assert_samples_follow(samples, logits_ref, u, eps):
    """Each sample is the inverse CDF of the reference logits at u, up to eps on the CDF
    (a different summation order may move a boundary by rounding)."""
    cdf = logits_ref.float().softmax(1).cumsum(1)  # (B, L, T)
    s = samples.unsqueeze(1)
    lower = torch.where(s > 0, cdf.gather(1, (s - 1).clamp(min=0)), 0.0).squeeze(1)
    upper = torch.where(s < cdf.shape[1] - 1, cdf.gather(1, s), 2.0).squeeze(1)
    assert bool(((lower - eps <= u) & (u < upper + eps)).all())


COND_KINDS = {"none": ((1, 48), 0), "class": ((1, 48), 5), "positional": ((1, 6, 8), 0),
              "positional+class": ((1, 6, 8), 5)}
TOL = {torch.float32: 2e-4, torch.float16: 2e-3, torch.bfloat16: 2e-3}


GPU_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
GPU_SIZES = [(32, 128), (64, 128), (64, 256), (128, 256)]  # (R, S)
# The CUDA kernel compiles nothing at test time: every dtype x size x conditioning layout.
# The Triton kernel compiles once per case: every dtype x size, the layouts in turn, so that
# each dtype meets all four.
GPU_KERNEL_CASES = (
    [("cuda", dt, r, s, c) for dt in GPU_DTYPES for r, s in GPU_SIZES for c in COND_KINDS]
    + [("triton", dt, r, s, list(COND_KINDS)[(i + j) % len(COND_KINDS)])
       for j, dt in enumerate(GPU_DTYPES) for i, (r, s) in enumerate(GPU_SIZES)])


@pytest.mark.gpu
@pytest.mark.parametrize("backend,dtype,res,skip,cond_kind", GPU_KERNEL_CASES)
def test_kernels_match_reference(res, skip, dtype, cond_kind, backend):
    shape, classes = COND_KINDS[cond_kind]
    model = _model(shape, 256, classes, layers=7, cycle=6, res_channels=res, gate_channels=res,
                   skip_channels=skip, cond_channels=16).cuda()
    b = 5
    labels = torch.tensor([0, 4, 2, 1, 3]).cuda() if classes else None
    cond = _cond_table(model, labels, b)  # stride 0 over the batch when positional alone
    weights = pack_wavenet(model).to(dtype)
    x = _seq(model, torch.randint(0, 256, (b, *shape), device="cuda"))
    want, _, u, state_ref = _teacher_forced(weights, x, cond, backend="reference")
    got, samples, _, state = _teacher_forced(weights, x, cond, backend=backend)
    scale = want.abs().max().item()
    torch.testing.assert_close(got, want, atol=TOL[dtype] * max(scale, 1.0), rtol=TOL[dtype])
    torch.testing.assert_close(state, state_ref, atol=TOL[dtype] * 10, rtol=TOL[dtype])
    _assert_samples_follow(samples, want, u, eps=1e-4 if dtype == torch.float32 else 1e-3)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_kernels_kernel_size_three_and_odd_sizes(backend):
    """K = 3, G != R, odd channel counts and levels: the general path of the kernel."""
    model = _model((1, 37), 17, 3, kernel_size=3, layers=4, cycle=3, res_channels=24,
                   gate_channels=20, skip_channels=40, cond_channels=5).cuda()
    labels = torch.tensor([2, 0, 1]).cuda()
    weights, cond = pack_wavenet(model), _cond_table(model, labels, 3)
    x = torch.randint(0, 17, (3, 37), device="cuda")
    want, _, u, _ = _teacher_forced(weights, x, cond, backend="reference")
    got, samples, _, _ = _teacher_forced(weights, x, cond, backend=backend)
    torch.testing.assert_close(got, want, atol=2e-4, rtol=2e-4)
    _assert_samples_follow(samples, want, u, eps=1e-4)
