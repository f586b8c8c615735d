"""artrt.gated_tanh / artrt.gated_sigmoid against their references, every backend."""

from __future__ import annotations

import sys

import artrt.kernels.gated as kgated
import pytest
import torch

import artrt
from artrt import backends
from artrt.ops.gated import (
    ACT_SIGMOID,
    ACT_TANH,
    gated_backward_ref,
    gated_sigmoid_ref,
    gated_tanh_ref,
)
from tests.helpers import DEVICE, assert_close_lowp, kernel_backends, with_layout
from tests.ops.common import assert_backward_uses_forward_backend, no_launch
from tests.ops.test_attention import spy

gated_module = sys.modules["artrt.ops.gated"]
CPU = ["cpu"] if DEVICE == "cpu" else []  # the cpu backend, on the tensors these tests make
FAST = [*CPU, *kernel_backends()]  # every backend but the reference

GATES = {
    "tanh": (artrt.gated_tanh, gated_tanh_ref, ACT_TANH),
    "sigmoid": (artrt.gated_sigmoid, gated_sigmoid_ref, ACT_SIGMOID),
}

# (shape of x, channel dim): odd sizes, C = 1 and C = 129, channels first, last and inside.
SHAPES = [
    ((2, 6, 5, 7), 1),
    ((5, 3, 10), -1),
    ((4, 9), 0),
    ((1, 2), 1),
    ((3, 2, 4, 33), 2),
    ((2, 258, 3), 1),
    ((3, 6, 2100), 1),  # two position blocks per row, the second one partial
]


def cond_shape(shape, dim, kind):
    """Shape of a conditioning tensor of ``kind`` for x of ``shape`` with channels on dim."""
    dim %= len(shape)
    if kind == "full":
        return shape
    if kind == "class":  # (B, 2C, 1, 1): one vector per batch element
        return tuple(s if i in (0, dim) else 1 for i, s in enumerate(shape))
    if kind == "channel":  # (2C, 1, 1): fewer dimensions than x, shared by the batch
        return tuple(s if i == dim else 1 for i, s in enumerate(shape))[dim:]
    if kind == "last1":  # (B, 2C, H, 1): strides that cannot be merged into a 3-d view
        return shape[:-1] + (1,)
    raise ValueError(kind)


def make_inputs(shape, dim, cond_kind, dtype=torch.float32, device=DEVICE, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = (2 * torch.randn(shape, generator=gen)).to(device=device, dtype=dtype)
    cond = None
    if cond_kind is not None:
        cond = torch.randn(cond_shape(shape, dim, cond_kind), generator=gen)
        cond = cond.to(device=device, dtype=dtype)
    out_shape = list(shape)
    out_shape[dim] //= 2
    grad = torch.randn(out_shape, generator=gen).to(device=device, dtype=dtype)
    return x, cond, grad


def run(fn, x, cond, dim, grad, **kwargs):
    """Forward and gradients (x, cond) for one upstream gradient."""
    x = x.detach().requires_grad_()
    leaves = [x]
    if cond is not None:
        cond = cond.detach().requires_grad_()
        leaves.append(cond)
    out = fn(x, cond, dim, **kwargs)
    grads = torch.autograd.grad(out, leaves, grad)
    return (out.detach(), *grads)


# --------------------------------------------------------------------------- reference


@pytest.mark.parametrize("gate", GATES)
def test_backward_ref_matches_autograd(gate):
    _, ref, act = GATES[gate]
    x, cond, grad = make_inputs((3, 8, 5), 1, "class", dtype=torch.float64)
    _, dx, dcond = run(ref, x, cond, 1, grad)
    want = gated_backward_ref(grad, x, cond, 1, act)
    torch.testing.assert_close(want, dx)
    torch.testing.assert_close(want.sum_to_size(cond.shape), dcond)


@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("cond_kind", [None, "class", "channel", "full"])
def test_gradcheck_reference(gate, cond_kind):
    fn = GATES[gate][0]
    x, cond, _ = make_inputs((2, 4, 3, 5), 1, cond_kind, dtype=torch.float64, device="cpu")
    inputs = (x.requires_grad_(),) if cond is None else (x.requires_grad_(),
                                                         cond.requires_grad_())
    assert torch.autograd.gradcheck(
        lambda *t: fn(t[0], t[1] if len(t) > 1 else None, 1, backend="reference"), inputs)


@pytest.mark.parametrize("gate", GATES)
def test_gradgradcheck_reference(gate):
    fn = GATES[gate][0]
    x, cond, _ = make_inputs((2, 4, 3), 1, "class", dtype=torch.float64, device="cpu")
    assert torch.autograd.gradgradcheck(lambda x, c: fn(x, c, 1, backend="reference"),
                                        (x.requires_grad_(), cond.requires_grad_()))


def test_reference_values():
    # tanh(0.5) sigmoid(-1) and 0.5 sigmoid(-1), by hand.
    x = torch.tensor([[0.5, -1.0]], dtype=torch.float64)
    s = 1 / (1 + torch.exp(torch.tensor(1.0, dtype=torch.float64)))
    assert torch.allclose(gated_tanh_ref(x), torch.tanh(torch.tensor(0.5, dtype=torch.float64)) * s)
    assert torch.allclose(gated_sigmoid_ref(x), 0.5 * s)


# --------------------------------------------------------------------------- kernels


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("shape,dim", SHAPES)
@pytest.mark.parametrize("cond_kind", [None, "class", "channel", "last1"])
def test_kernel_matches_reference(backend, gate, shape, dim, cond_kind):
    fn, ref, _ = GATES[gate]
    x, cond, grad = make_inputs(shape, dim, cond_kind)
    want = run(ref, x, cond, dim, grad)
    got = run(fn, x, cond, dim, grad, backend=backend)
    assert got[0].shape == want[0].shape and got[0].is_contiguous()
    for g, w, what in zip(got, want, ("out", "dx", "dcond"), strict=False):
        torch.testing.assert_close(g, w, atol=2e-6, rtol=1e-5, msg=what)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("layout", ["strided", "permuted"])
@pytest.mark.parametrize("cond_layout", ["contiguous", "strided", "permuted"])
def test_kernel_non_contiguous(backend, gate, layout, cond_layout):
    fn, ref, _ = GATES[gate]
    x, cond, grad = make_inputs((3, 6, 5, 7), 1, "full")
    x_nc, cond_nc = with_layout(x, layout), with_layout(cond, cond_layout)
    grad_nc = with_layout(grad, layout)
    assert not x_nc.is_contiguous() and not grad_nc.is_contiguous()
    want = run(ref, x, cond, 1, grad)
    got = run(fn, x_nc, cond_nc, 1, grad_nc, backend=backend)
    for g, w, what in zip(got, want, ("out", "dx", "dcond"), strict=False):
        torch.testing.assert_close(g, w, atol=2e-6, rtol=1e-5, msg=what)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_kernel_low_precision(backend, gate, dtype):
    fn, ref, _ = GATES[gate]
    x, cond, grad = make_inputs((2, 16, 9, 11), 1, "class", dtype=dtype)
    fp32 = run(ref, x.float(), cond.float(), 1, grad.float())
    lowp = run(ref, x, cond, 1, grad)
    got = run(fn, x, cond, 1, grad, backend=backend)
    for g, lp, f, what in zip(got, lowp, fp32, ("out", "dx", "dcond"), strict=False):
        assert g.dtype == dtype
        assert_close_lowp(g, lp, f, f"{gate} {dtype} {what}")


@pytest.mark.parametrize("backend", FAST)
def test_kernel_empty_and_extremes(backend):
    x = torch.empty(0, 4, 3, device=DEVICE)
    assert artrt.gated_tanh(x, backend=backend).shape == (0, 2, 3)
    # Saturated inputs: no inf/nan from exp overflow, exact limits.
    x = torch.tensor([[-100.0, 100.0, 100.0, -100.0]], device=DEVICE)
    torch.testing.assert_close(artrt.gated_tanh(x, backend=backend),
                               torch.tensor([[-1.0, 0.0]], device=DEVICE))
    torch.testing.assert_close(artrt.gated_sigmoid(x, backend=backend),
                               torch.tensor([[-100.0, 0.0]], device=DEVICE))


@pytest.mark.parametrize("backend", FAST)
def test_kernel_many_rows_few_positions(backend):
    """S = 1 with many rows: the tile is laid along rows, several programs along them."""
    x, cond, grad = make_inputs((3000, 4), 1, "full")
    want = run(gated_tanh_ref, x, cond, 1, grad)
    got = run(artrt.gated_tanh, x, cond, 1, grad, backend=backend)
    for g, w in zip(got, want, strict=False):
        torch.testing.assert_close(g, w, atol=2e-6, rtol=1e-5)


# --------------------------------------------------------------------------- dispatch


def test_backward_uses_forward_backend(monkeypatch):
    """The backend forced at forward time is the one the backward runs, outside the block."""
    x = torch.randn(2, 4, 3, device=DEVICE, requires_grad=True)
    assert_backward_uses_forward_backend(monkeypatch, kgated, "gated_bwd",
                                         lambda: artrt.gated_tanh(x))


@pytest.mark.parametrize("grad", [False, True])
def test_default_backend_on_cpu_is_cpu(monkeypatch, grad):
    """No backend forced, CPU tensors: the cpu backend (forward, and backward at or above
    the size where its Python backward pays), not the Triton launchers."""
    x = torch.randn(2, 2 * gated_module._SMALL_TANH_GRAD, requires_grad=grad)
    calls = spy(monkeypatch, gated_module, "_cpu_forward", "_cpu_backward", "_cpu_tanh_gate",
                "_cpu_tanh_gate_backward")
    with no_launch(monkeypatch, kgated, "gated_fwd", "gated_bwd"):
        torch.testing.assert_close(artrt.gated_tanh(x, dim=0), gated_tanh_ref(x, dim=0))
        if grad:
            artrt.gated_tanh(x, dim=0).sum().backward()
    assert calls == (["_cpu_tanh_gate", "_cpu_tanh_gate", "_cpu_tanh_gate_backward"] if grad
                     else ["_cpu_forward"])
    if grad:  # below that size the training path is the reference expression
        calls.clear()
        artrt.gated_tanh(x[:, :8], dim=0).sum().backward()
        assert calls == []


def test_cpu_backend_selection():
    """``cpu`` is a backend: chosen on CPU tensors by an op that has it (float32, float64,
    float16, bfloat16), refused on other devices and by an op without it."""
    cpu, meta = torch.device("cpu"), torch.device("meta")
    assert "cpu" in backends.BACKENDS and backends.status()["cpu"]["cpu"] is None
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        assert backends.select("op", cpu, dtype, "auto", ("triton", "cpu", "reference")) == "cpu"
        assert backends.select("op", cpu, dtype, "auto", ("triton", "reference")) == "reference"
    assert backends.select("op", meta, torch.float32, "auto", ("cpu", "reference")) == "reference"
    with pytest.raises(backends.BackendUnavailableError, match="CPU tensors, got a meta"):
        backends.select("op", meta, torch.float32, "cpu", ("cpu", "reference"))
    with pytest.raises(backends.BackendUnavailableError, match="no implementation of this op"):
        backends.select("op", cpu, torch.float32, "cpu", ("triton", "reference"))
    assert "float32, float64, float16 and bfloat16, got torch.complex64" in (
        backends.unavailable_reason("cpu", "cpu", torch.complex64))
    assert "CPU tensors, got a cuda tensor" in backends.unavailable_reason("cpu", "cuda")


def test_direct_call():
    """The dispatcher is skipped only in plain eager mode on plain CPU tensors."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    x = torch.randn(2, 4)
    assert backends.direct_call(x, None, x)
    assert backends.direct_call(x, torch.nn.Parameter(x))  # a module's weight

    class Sub(torch.Tensor):
        pass

    assert not backends.direct_call(x, x.as_subclass(Sub))  # any other subclass
    assert not backends.direct_call(x, x.to("meta"))
    with torch.device("cpu"):  # a TorchFunctionMode
        assert not backends.direct_call(x)
    with FakeTensorMode():  # a TorchDispatchMode
        assert not backends.direct_call(x)
    seen = []
    torch.vmap(lambda t: seen.append(backends.direct_call(t)) or t)(x)
    assert seen == [False]
    compiled = torch.compile(lambda t: t + backends.direct_call(t), fullgraph=True,
                             backend="eager")
    assert torch.equal(compiled(x), x)  # False (0) while compiling


def _cpu_call(fn, act, path, monkeypatch):
    """Call the cpu backend by ``path``: ``direct`` (the public function's eager call),
    ``direct-function`` (the same, with the tanh gate's autograd.Function at every size), or
    ``op`` (the torch.library op, as torch.compile and opcheck run it)."""
    if path == "op":
        return lambda x, c, d: torch.ops.artrt.gated(x, c, d, act, "cpu")
    if path == "direct-function":
        monkeypatch.setattr(gated_module, "_SMALL_TANH_GRAD", 0)
    return lambda x, c, d: fn(x, c, d, backend="cpu")


CPU_PATHS = ["direct", "direct-function", "op"]


@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("cond_kind", [None, "class", "full"])
@pytest.mark.parametrize("path", CPU_PATHS)
def test_cpu_matches_reference_fp64(gate, cond_kind, path, monkeypatch):
    """float64 (which the kernels of the other backends do not take), every way of calling
    the cpu backend."""
    fn, ref, act = GATES[gate]
    call = _cpu_call(fn, act, path, monkeypatch)
    for shape, dim in SHAPES:
        x, cond, grad = make_inputs(shape, dim, cond_kind, dtype=torch.float64, device="cpu")
        got, want = run(call, x, cond, dim, grad), run(ref, x, cond, dim, grad)
        assert got[0].is_contiguous()
        for g, w, what in zip(got, want, ("out", "dx", "dcond"), strict=False):
            torch.testing.assert_close(g, w, msg=f"{shape} {dim} {what}")


@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("path", CPU_PATHS)
def test_cpu_gradgradcheck(gate, path, monkeypatch):
    fn, _, act = GATES[gate]
    x, cond, _ = make_inputs((2, 4, 3), 1, "class", dtype=torch.float64, device="cpu")
    call = _cpu_call(fn, act, path, monkeypatch)
    assert torch.autograd.gradgradcheck(lambda x, c: call(x, c, 1),
                                        (x.requires_grad_(), cond.requires_grad_()))


@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("path", CPU_PATHS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cpu_low_precision(gate, path, dtype, monkeypatch):
    fn, ref, act = GATES[gate]
    call = _cpu_call(fn, act, path, monkeypatch)
    x, cond, grad = make_inputs((2, 16, 9, 11), 1, "class", dtype=dtype, device="cpu")
    fp32 = run(ref, x.float(), cond.float(), 1, grad.float())
    lowp = run(ref, x, cond, 1, grad)
    got = run(call, x, cond, 1, grad)
    for g, lp, f, what in zip(got, lowp, fp32, ("out", "dx", "dcond"), strict=False):
        assert g.dtype == dtype
        assert_close_lowp(g, lp, f, f"{gate} {dtype} {what}")


@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("path", CPU_PATHS)
def test_cpu_non_finite_matches_reference(gate, path, monkeypatch):
    """NaN, +-inf and saturating inputs, and a NaN and infinite upstream gradient: the same
    NaN/inf (and finite values) as the reference forward and gated_backward_ref."""
    fn, ref, act = GATES[gate]
    call = _cpu_call(fn, act, path, monkeypatch)
    x, cond, grad = make_inputs((2, 8, 3, 5), 1, "class", device="cpu")
    special = torch.tensor([float("nan"), float("inf"), -float("inf"), 100.0, -100.0, 0.0])
    x.view(-1)[::7][:24] = special.repeat(4)
    grad.view(-1)[::5][:12] = special.roll(1).repeat(2)
    got = run(call, x, cond, 1, grad)
    want = (ref(x, cond, 1), gated_backward_ref(grad, x, cond, 1, act))
    for g, w, what in zip(got, want, ("out", "dx"), strict=False):
        torch.testing.assert_close(g, w, equal_nan=True, msg=what)
    torch.testing.assert_close(got[2], want[1].sum((2, 3), keepdim=True), equal_nan=True)


@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("layout", ["strided", "permuted"])
def test_cpu_function_non_contiguous(gate, layout, monkeypatch):
    """The tanh gate's autograd.Function (every size) on strided and permuted inputs."""
    fn, ref, act = GATES[gate]
    call = _cpu_call(fn, act, "direct-function", monkeypatch)
    x, cond, grad = make_inputs((3, 6, 5, 7), 1, "full", device="cpu")
    want = run(ref, x, cond, 1, grad)
    got = run(call, with_layout(x, layout), with_layout(cond, layout), 1,
              with_layout(grad, layout))
    assert got[0].is_contiguous()
    for g, w, what in zip(got, want, ("out", "dx", "dcond"), strict=False):
        torch.testing.assert_close(g, w, atol=2e-6, rtol=1e-5, msg=what)


def test_env_backend_forces(monkeypatch):
    monkeypatch.setenv("ARTRT_BACKEND", "cuda")
    with pytest.raises(backends.BackendUnavailableError, match="ARTRT_BACKEND"):
        artrt.gated_tanh(torch.randn(2, 4))
    monkeypatch.setenv("ARTRT_BACKEND", "fastest")
    with pytest.raises(ValueError, match="ARTRT_BACKEND"):
        artrt.gated_tanh(torch.randn(2, 4))
    if "triton" not in kernel_backends():
        return
    calls = []
    real = kgated.gated_fwd
    monkeypatch.setattr(kgated, "gated_fwd", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setenv("ARTRT_BACKEND", "triton")
    x = torch.randn(2, 4, device=DEVICE)
    artrt.gated_tanh(x)
    assert calls == [1]
    with artrt.use_backend("reference"):  # use_backend takes precedence over the environment
        artrt.gated_tanh(x)
    assert calls == [1]


def test_forced_backend_cannot_run():
    x = torch.randn(2, 4, dtype=torch.float64, device=DEVICE)
    with pytest.raises(backends.BackendUnavailableError, match="float64"):
        artrt.gated_tanh(x, backend="triton")
    with pytest.raises(backends.BackendUnavailableError, match="cuda"):
        artrt.gated_tanh(torch.randn(2, 4), backend="cuda")
    with pytest.raises(ValueError, match="backend must be one of"):
        artrt.gated_tanh(x, backend="cudnn")
    with pytest.raises(ValueError, match="use_backend"), artrt.use_backend("fast"):
        pass


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("fn", [artrt.gated_tanh, artrt.gated_sigmoid])
def test_bad_input(fn):
    x = torch.randn(2, 6, 4)
    with pytest.raises(ValueError, match="even number of channels.*got 5"):
        fn(torch.randn(2, 5, 4))
    with pytest.raises(ValueError, match="dim must be in"):
        fn(x, dim=3)
    with pytest.raises(TypeError, match="dim must be an int"):
        fn(x, dim=1.0)
    with pytest.raises(TypeError, match="floating-point.*torch.int64"):
        fn(torch.ones(2, 6, 4, dtype=torch.int64))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        fn([[1.0, 2.0]])
    with pytest.raises(ValueError, match=r"cond of shape \(2, 3, 1\) does not broadcast"):
        fn(x, torch.randn(2, 3, 1))
    with pytest.raises(ValueError, match="does not broadcast"):  # cond may not grow x
        fn(x, torch.randn(3, 2, 6, 4))
    with pytest.raises(TypeError, match="cond must have x's dtype"):
        fn(x, torch.randn(2, 6, 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="cond must be on x's device"):
        fn(x, torch.randn(2, 6, 1, device="meta"))
    with pytest.raises(ValueError, match="scalar"):
        fn(torch.tensor(1.0))


def test_bad_grad_out():
    x = torch.randn(2, 6, 4)
    with pytest.raises(ValueError, match="grad_out must have shape"):
        torch.ops.artrt.gated_backward(torch.randn(2, 6, 4), x, None, 1, ACT_TANH, "auto")


# --------------------------------------------------------------------------- torch.library


OPCHECK_BACKENDS = ["reference", *FAST]


@pytest.mark.parametrize("backend", OPCHECK_BACKENDS)
@pytest.mark.parametrize("act", [ACT_TANH, ACT_SIGMOID])
@pytest.mark.parametrize("cond_kind", [None, "class"])
def test_opcheck(backend, act, cond_kind):
    x, cond, grad = make_inputs((2, 6, 3, 5), 1, cond_kind)
    x.requires_grad_()
    if cond is not None:
        cond.requires_grad_()
    torch.library.opcheck(torch.ops.artrt.gated.default, (x, cond, 1, act, backend))
    torch.library.opcheck(torch.ops.artrt.gated_backward.default,
                          (grad, x.detach(), cond, 1, act, backend))


@pytest.mark.parametrize("backend", [None, *FAST])
def test_torch_compile_fullgraph(backend):
    torch._dynamo.reset()
    x, cond, grad = make_inputs((2, 8, 5, 3), 1, "class")

    def block(x, cond):
        h = artrt.gated_tanh(x * 2.0, cond, backend=backend)
        return artrt.gated_sigmoid(torch.cat([h, h.flip(1)], 1), backend=backend) + 1.0

    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    want = run(lambda x, c, d: block(x, c), x, cond, 1, torch.ones(2, 4, 5, 3))
    got = run(lambda x, c, d: compiled(x, c), x, cond, 1, torch.ones(2, 4, 5, 3))
    for g, w in zip(got, want, strict=False):
        torch.testing.assert_close(g, w, atol=2e-6, rtol=1e-5)


def test_torch_compile_inductor():
    """The default (inductor) backend compiles a model that uses the op, without breaks."""
    torch._dynamo.reset()
    x, cond, _ = make_inputs((2, 8, 5, 3), 1, "class")
    layer = artrt.nn.GatedTanh()
    compiled = torch.compile(lambda x, c: layer(x + 1.0, c) * 3.0, fullgraph=True)
    torch.testing.assert_close(compiled(x, cond), gated_tanh_ref(x + 1.0, cond) * 3.0)


# --------------------------------------------------------------------------- GPU, real shapes


GPU_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
GPU_SHAPES = [(64, 256, 32, 32), (16, 512, 16000)]  # Gated PixelCNN (class cond), WaveNet
# The CUDA kernel compiles nothing at test time: every gate x dtype x shape. Triton compiles
# per case: each gate in every dtype, the shapes in turn (each gate and dtype meets both).
GPU_CASES = (
    [("cuda", g, dt, s) for g in GATES for dt in GPU_DTYPES for s in GPU_SHAPES]
    + [("triton", g, dt, GPU_SHAPES[(i + j) % 2]) for i, g in enumerate(GATES)
       for j, dt in enumerate(GPU_DTYPES)])


@pytest.mark.gpu
@pytest.mark.parametrize("backend,gate,dtype,shape", GPU_CASES)
def test_gpu_real_shapes(backend, gate, dtype, shape):
    fn, ref, _ = GATES[gate]
    cond_kind = "class" if len(shape) == 4 else "full"
    x, cond, grad = make_inputs(shape, 1, cond_kind, dtype=dtype, device="cuda")
    got = run(fn, x, cond, 1, grad, backend=backend)
    fp32 = run(ref, x.float(), cond.float(), 1, grad.float())
    if dtype == torch.float32:
        for g, f in zip(got, fp32, strict=False):
            torch.testing.assert_close(g, f, atol=1e-5, rtol=1e-5)
        return
    lowp = run(ref, x, cond, 1, grad)
    for g, lp, f, what in zip(got, lowp, fp32, ("out", "dx", "dcond"), strict=False):
        assert_close_lowp(g, lp, f, f"{gate} {dtype} {shape} {what}")
