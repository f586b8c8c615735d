"""Static performance report for Hopper (sm_90a), read from the compiled code: no GPU needed.

    python -m bench.static                       # everything -> bench/results/static-sm90.md
    python -m bench.static --only attention      # one family (repeatable)
    python -m bench.static --dtype bfloat16      # the benchmark cases of one dtype
    python -m bench.static --json out.json --no-write   # what tests/test_static.py reads

Each benchmark family (``bench/<family>.py``) is replayed at its GPU shapes on CPU tensors,
through the public ops with the Triton backend forced, and every kernel launch is captured
instead of run (``_capture``). The launchers pick tiles, warps and stages as on a GPU, and
Triton's own binder gives the specialisation the JIT would compile (16-byte aligned pointers
and integers divisible by 16 marked so, integers equal to 1 made constants). Where a launcher
looks at the device, ``_as_on_h200`` makes it decide as on an H200 (132 SMs, TF32 as cuDNN).
Every distinct specialisation, each autotune candidate of an autotuned kernel, is compiled
for sm_90a with the ptxas that ships with Triton, in forked workers, and read back:

* the cubin (``cuobjdump --dump-resource-usage``): registers, stack frame (spills);
* Triton's metadata: shared memory; with registers and warps, the occupancy (blocks and
  warps per SM under H100/H200 limits: 65536 registers, 228 KB shared memory with 227 KB per
  block and 1 KB reserved per block, 64 warps, 32 blocks);
* the SASS: HGMMA (wgmma), HMMA (mma.sync) or neither; LDGSTS (cp.async) and UTMALDG / UBLKCP
  (TMA); STL / LDL (spill traffic); MUFU and instruction counts, in all and per iteration of
  the innermost loops that hold the MMAs;
* the PTX: the width of every global load, store and cp.async (static counts), in all and
  inside loops.

The CUDA kernels of ``csrc/`` go through ``nvcc -arch=sm_90a --resource-usage``.

Estimates (not measurements). Per call: the MMA FLOPs the kernel executes and the bytes it
must move (each distinct tensor argument once: compulsory HBM traffic; re-reads that hit L2
are not counted), then

    t = max(FLOPs / (peak x f_mma x f_pipe x f_spill x f_restart / f_overlap),
            bytes / (HBM x f_mem), issue time of a loop-free kernel) / wave efficiency

f_pipe from the share of the loop's load bytes that arrive by cp.async, f_restart from the
trips of the pipelined loop per start, f_overlap from the loop's other instructions against
its MMA time (SASS), f_mem from the access widths; the factors are in ``_ASSUMPTIONS`` (each
a low-high range, giving a range of times) and are printed with the report. The autotuner
is assumed to pick the candidate with the best estimate. Run without TRITON_INTERPRET:
``main`` re-executes itself without it (Triton picks compiled or interpreted kernels when a
kernel is decorated).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"

# H200 SXM (the H100 SXM's SM, more and faster HBM).
SMS = 132
CLOCK_HZ = 1.83e9  # the clock of the tensor peak: 4096 bf16 FLOP per clock per SM
PEAK_16BIT = 989e12  # bf16 / fp16 dense tensor-core FLOP/s
PEAK_TF32 = 494e12
MMA_PER_CLOCK = {"16bit": 4096, "tf32": 2048}  # dense FLOP per clock per SM
PEAK_FP32_FMA = 67e12  # CUDA cores
HBM_BYTES_S = 4.8e12
REGS_PER_SM, WARPS_PER_SM, BLOCKS_PER_SM = 65536, 64, 32
SMEM_PER_SM, SMEM_PER_BLOCK, SMEM_RESERVED = 233472, 232448, 1024
REG_ALLOC_UNIT = 256  # registers are allocated per warp in units of 256

# Efficiency factors (low, high) of the estimate: assumptions, not measurements.
_ASSUMPTIONS = {
    "mma.sync": ((0.6, 0.65), "mma.sync (HMMA) on sm_90 cannot issue at wgmma's rate: about "
                              "60-65 % of the dense tensor peak (Hopper microbenchmarks)"),
    "pipe_async": ((0.6, 0.8), "MMA main loop fed by cp.async / TMA with >= 2 stages: "
                               "60-80 % of the MMA ceiling (well-pipelined Triton GEMMs)"),
    "pipe_sync": ((0.3, 0.5), "operands loaded synchronously (ld.global, then st.shared) "
                              "every K step: the MMA waits for each load: 30-50 %; mixed "
                              "loops interpolate by the square of the async share of the "
                              "loop's load bytes (one synchronous operand stalls each step)"),
    "overlap": ((1.0, 1.0), "the other instructions of the MMA loop (SASS: issue at 4 warp-"
                            "instructions per clock per SM, MUFU at 16 lanes per clock) take "
                            "r times the loop's MMA time: they overlap it fully (/max(1, r)) "
                            "or not at all (/(1 + r)): the two ends of the range"),
    "restart": ((1.0, 1.0), "a software pipeline of s stages restarted every n trips of the "
                            "inner loop keeps the MMA busy n / (n + s - 1) of the time"),
    "spill": ((0.8, 0.95), "a stack frame (spilled registers): local-memory traffic in the loop"),
    "mem_vector": ((0.75, 0.9), "global accesses of 8-16 bytes per thread: 75-90 % of HBM"),
    "mem_narrow": ((0.4, 0.65), "global accesses of 2-4 bytes per thread: 40-65 % of HBM"),
    "issue": ((0.6, 0.85), "loop-free elementwise kernels: SASS instructions x warps at one "
                           "warp-instruction per clock per SM sub-partition (4 per SM), MUFU "
                           "at 16 lanes per clock per SM: 60-85 % of that issue rate"),
}


# ----------------------------------------------------------------------- capture

@dataclass
class Launch:
    """One captured kernel launch (for an autotuned kernel: one per candidate config)."""
    family: str
    case: str
    phase: str
    dtype: str
    kernel: str
    key: str  # the compiled specialisation
    config: int | None  # index of the autotune candidate, None when not autotuned
    site: int  # the launch: autotune candidates of one launch share it
    programs: int
    args: dict  # name -> int value, or for a tensor {"shape", "dtype", "bytes", "ptr"}
    constexprs: dict  # name -> value
    divisible: list  # non-constexpr int arguments the JIT marks divisible by 16
    ones: list  # int arguments equal to 1, which the JIT makes constants
    warps: int
    stages: int


@dataclass
class _Capture:
    launches: list = field(default_factory=list)
    specs: dict = field(default_factory=dict)  # key -> (fn, signature, constexprs, attrs, options)
    label: tuple = ("", "", "", "")  # family, case, phase, dtype
    tuning: tuple | None = None  # (config index, site) inside an autotuner
    sites: int = 0


_CAP = _Capture()


def _target():
    from triton.backends.compiler import GPUTarget

    return GPUTarget("cuda", 90, 32)


def _arg_summary(value):
    import torch

    if isinstance(value, torch.Tensor):
        return {"shape": list(value.shape), "dtype": str(value.dtype).removeprefix("torch."),
                "bytes": value.numel() * value.element_size(), "ptr": value.data_ptr()}
    if isinstance(value, bool) or not isinstance(value, int):
        return repr(value) if not isinstance(value, (float, str, type(None))) else value
    return value


@contextlib.contextmanager
def _capture():
    """Record every Triton launch (with the JIT's specialisation for sm_90) instead of running
    it; an autotuned kernel records each candidate its pruning keeps."""
    from triton.compiler import make_backend
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction, create_function_from_signature

    backend = make_backend(_target())
    binders = {}

    def jit_run(self, *args, grid, warmup, **kwargs):
        if self not in binders:
            binders[self] = create_function_from_signature(self.signature, self.params, backend)
        bound, spec, opts = binders[self](*args, **kwargs)
        options, signature, constexprs, attrs = self._pack_args(backend, kwargs, bound, spec,
                                                                opts)
        names = self.arg_names
        named = {names[p[0]]: v for p, v in constexprs.items()}
        divisible = [names[p[0]] for p, a in attrs.items()
                     if a and signature[names[p[0]]].startswith("i")]
        key = repr((self.__module__, self.__name__, sorted(signature.items()),
                    sorted(named.items()), sorted((k, repr(v)) for k, v in attrs.items()),
                    sorted((k, repr(v)) for k, v in options.__dict__.items())))
        _CAP.specs.setdefault(key, (self, signature, constexprs, attrs, dict(options.__dict__)))
        g = grid(bound) if callable(grid) else grid
        programs = math.prod(int(x) for x in g)
        family, case, phase, dtype = _CAP.label
        if _CAP.tuning is None:
            _CAP.sites += 1
        config, site = _CAP.tuning or (None, _CAP.sites)
        declared = {p.name for p in self.params if p.is_constexpr}
        _CAP.launches.append(Launch(
            family, case, phase, dtype, self.__name__, key, config, site, programs,
            {k: _arg_summary(v) for k, v in bound.items() if k not in named},
            {k: v for k, v in named.items() if k in declared}, divisible,
            [k for k in named if k not in declared], options.num_warps, options.num_stages))
        return None

    def tune_run(self, *args, **kwargs):  # as Autotuner.run, every kept candidate
        self.nargs = dict(zip(self.arg_names, args, strict=False))
        configs = self.prune_configs(kwargs) if len(self.configs) > 1 else self.configs
        self.nargs = None
        _CAP.sites += 1
        for cfg in configs:
            _CAP.tuning = (self.configs.index(cfg), _CAP.sites)
            try:
                self.fn.run(*args, **kwargs, **cfg.all_kwargs())
            finally:
                _CAP.tuning = None

    saved = JITFunction.run, Autotuner.run
    JITFunction.run, Autotuner.run = jit_run, tune_run
    try:
        yield
    finally:
        JITFunction.run, Autotuner.run = saved


@contextlib.contextmanager
def _label(family: str, case: str, phase: str, dtype):
    old = _CAP.label
    _CAP.label = (family, case, phase, str(dtype).removeprefix("torch."))
    try:
        yield
    finally:
        _CAP.label = old


@contextlib.contextmanager
def _as_on_h200():
    """The launchers decide as on an H200 although the tensors are on the CPU: the Triton
    backend is allowed for CPU tensors, the device has 132 SMs, fp32 convolutions use TF32
    as cuDNN does, and the splits that count SMs count the H200's."""
    import types

    import artrt.kernels.attention_decode as kd
    import artrt.kernels.causal_conv1d as kc
    import torch

    import artrt.backends as backends

    props = types.SimpleNamespace(multi_processor_count=SMS, name="NVIDIA H200 (static)")
    orig_reason, orig_props = backends.unavailable_reason, torch.cuda.get_device_properties
    orig_precision, orig_splits = kc._precision, kd._splits
    orig_bwd_w, orig_split = kc.causal_conv1d_bwd_weight, kc._INTERPRET_SPLIT

    def reason(name, device, dtype=None):
        return None if name == "triton" else orig_reason(name, device, dtype)

    def precision(x):  # the launcher's rule on a CUDA tensor
        return "tf32" if x.dtype == torch.float32 and torch.backends.cudnn.allow_tf32 else "ieee"

    def splits(batch_heads, t_max, device):
        return orig_splits(batch_heads, t_max, torch.device("cuda"))

    def bwd_weight(grad_out, x, ksize, dilation):
        # the launcher's split on a CUDA tensor: _BWD_W_PROGRAMS_PER_SM programs per SM
        tiles = (-(-grad_out.shape[1] // kc._block(grad_out.shape[1], kc._BWD_W_BLOCK_O))
                 * -(-x.shape[1] // kc._block(x.shape[1], kc._BWD_W_BLOCK_C)) * ksize)
        kc._INTERPRET_SPLIT = -(-kc._BWD_W_PROGRAMS_PER_SM * SMS // tiles)
        try:
            return orig_bwd_w(grad_out, x, ksize, dilation)
        finally:
            kc._INTERPRET_SPLIT = orig_split

    backends.unavailable_reason = reason
    torch.cuda.get_device_properties = lambda device=None: props
    kc._precision, kd._splits, kc.causal_conv1d_bwd_weight = precision, splits, bwd_weight
    try:
        yield
    finally:
        backends.unavailable_reason, torch.cuda.get_device_properties = orig_reason, orig_props
        kc._precision, kd._splits, kc.causal_conv1d_bwd_weight = (orig_precision, orig_splits,
                                                                   orig_bwd_w)


# ----------------------------------------------------------------------- the benchmark calls
# Each replays one bench/ family at its GPU shapes. Inputs are uninitialised: the kernels
# never run, and the ops check no values (dmol's, which do, get the benchmark's inputs).

def _grads(outs, leaves):
    import torch

    outs = outs if isinstance(outs, tuple) else (outs,)
    torch.autograd.grad(outs, leaves, [torch.empty_like(o) for o in outs])


def _masked_conv_calls(dtypes):
    import torch
    import torch.nn.functional as F

    from artrt import backends
    from artrt.nn.gated_pixelcnn import GatedPixelCNNLayer
    from artrt.ops.masked_conv2d import masked_conv2d
    from bench import masked_conv as mb

    b, size = mb.BATCH, mb.SIZE
    for dtype in [d for d in mb.DTYPES if d in dtypes]:
        for c in mb.CHANNELS:
            for k in mb.KERNELS:
                shape = f"{b},{c},{size},{size} k={k}"
                x = torch.empty(b, c, size, size, dtype=dtype, requires_grad=True)
                w = torch.empty(c, c, k, k, dtype=dtype, requires_grad=True)
                bias = torch.empty(c, dtype=dtype, requires_grad=True)
                with _label("masked_conv", f"masked_conv2d {shape}", "fwd", dtype):
                    y = masked_conv2d(x, w, bias, "B", backend="triton")
                with _label("masked_conv", f"masked_conv2d {shape}", "bwd", dtype):
                    _grads(y, (x, w, bias))
                layer = GatedPixelCNNLayer(c, k, cond_dim=mb.N_CLASSES).to(dtype=dtype)
                v, h = (torch.empty(b, c, size, size, dtype=dtype, requires_grad=True)
                        for _ in range(2))
                cond = F.one_hot(torch.arange(b) % mb.N_CLASSES, mb.N_CLASSES).to(dtype)
                with backends.use_backend("triton"):
                    with _label("masked_conv", f"gated_pixelcnn_layer {shape}", "fwd", dtype):
                        outs = layer(v, h, cond)
                    with _label("masked_conv", f"gated_pixelcnn_layer {shape}", "bwd", dtype):
                        _grads(outs, (v, h, *layer.parameters()))


def _causal_conv1d_calls(dtypes):
    import torch

    from artrt import backends
    from artrt.nn.wavenet import WaveNetBlock
    from artrt.ops.causal_conv1d import causal_conv1d
    from bench import causal_conv1d as cb

    b, t, r, g, s, k = cb.B, cb.T, cb.R, cb.G, cb.S, cb.K
    for dtype in [d for d in cb.DTYPES if d in dtypes]:
        x = torch.empty(b, r, t, dtype=dtype, requires_grad=True)
        w = torch.empty(2 * g, r, k, dtype=dtype, requires_grad=True)
        bias = torch.empty(2 * g, dtype=dtype)
        for d in cb.DILATIONS:
            case = f"conv d={d} {b}x{r}->{2 * g}x{t}"
            with _label("causal_conv1d", case, "fwd", dtype):
                y = causal_conv1d(x, w, bias, d, backend="triton")
            with _label("causal_conv1d", case, "bwd", dtype):
                _grads(y, (x, w))
        blocks = [WaveNetBlock(r, g, s, k, d).to(dtype=dtype) for d in cb.DILATIONS]
        case = f"block stack d=1..512 {b}x({r}->{g})x{t}"
        with backends.use_backend("triton"):
            with _label("causal_conv1d", case, "fwd", dtype):
                h, skip_sum = x, 0
                for blk in blocks:
                    h, skip = blk(h)
                    skip_sum = skip_sum + skip
            with _label("causal_conv1d", case, "bwd", dtype):
                params = [p for blk in blocks for p in blk.parameters()]
                _grads((h, skip_sum), [x, *params])


def _attention_calls(dtypes):
    import torch

    from artrt.ops.attention import causal_attention, random_order, subscale_order, zigzag_order
    from artrt.ops.attention_decode import attention_decode
    from bench import attention as ab

    dtype = torch.bfloat16  # the benchmark's dtype on a GPU
    if dtype not in dtypes:
        return

    def qkv(b, h, t, d):
        return [torch.empty(b, h, t, d, dtype=dtype, requires_grad=True) for _ in range(3)]

    for d, t in ab.CAUSAL + ab.SMALL_D:
        b, h = max(1, 16384 // t), 2048 // d
        q, k, v = qkv(b, h, t, d)
        case = f"causal {b},{h},{t},{d}"
        with _label("attention", case, "fwd", dtype):
            out = causal_attention(q, k, v, backend="triton")
        with _label("attention", case, "bwd", dtype):
            _grads(out, (q, k, v))
    side, d = ab.ORDER_SIDE, ab.ORDER_D
    t = side * side
    b, h = max(1, 16384 // t), 2048 // d
    for kind in ab.ORDERS:
        rank = {"zigzag": lambda: zigzag_order(side, side, "cpu"),
                "subscale": lambda: subscale_order(side, side, 4, "cpu"),
                "random": lambda: random_order(t, torch.Generator().manual_seed(0), "cpu")
                }[kind]()
        q, k, v = qkv(b, h, t, d)
        case = f"order-{kind} {b},{h},{t},{d}"
        with _label("attention", case, "fwd", dtype):
            out = causal_attention(q, k, v, order=rank, backend="triton")
        with _label("attention", case, "bwd", dtype):
            _grads(out, (q, k, v))
    for b, h, hk, d, length in ab.DECODE:
        q = torch.empty(b, h, 1, d, dtype=dtype)
        k_new, v_new = (torch.empty(b, hk, 1, d, dtype=dtype) for _ in range(2))
        kc, vc = (torch.empty(b, hk, length + 1, d, dtype=dtype) for _ in range(2))
        seqlens = torch.full((b,), length, dtype=torch.int32)
        with _label("attention", f"decode {b},{h}/{hk},{length + 1},{d}", "fwd", dtype):
            attention_decode(q, kc, vc, seqlens, k_new, v_new, backend="triton")


def _dmol_calls(dtypes):
    from artrt.ops.dmol import dmol_nll, dmol_sample
    from bench import dmol as db

    for b, c, k, h, w, dtype in db.SHAPES:
        if dtype not in dtypes:
            continue
        params, x, u = db._inputs(b, c, k, h, w, dtype, "cpu")
        case = f"dmol {b},{c},{k},{h},{w}"
        with _label("dmol", case, "fwd", dtype):
            nll = dmol_nll(params, x, k, backend="triton")
        with _label("dmol", case, "bwd", dtype):
            _grads(nll.sum(), (params,))
        with _label("dmol", case, "sample", dtype):
            dmol_sample(params.detach(), k, uniforms=u, backend="triton")


def _gated_calls(dtypes):
    import torch

    from bench import gated as gb

    for shape, dtype in gb.SHAPES:
        if dtype not in dtypes:
            continue
        x = torch.empty(shape, dtype=dtype, requires_grad=True)
        for gate, (fn, _) in gb.GATES.items():
            case = f"gated_{gate} {'x'.join(map(str, shape))}"
            with _label("gated", case, "fwd", dtype):
                y = fn(x, backend="triton")
            with _label("gated", case, "bwd", dtype):
                _grads(y, (x,))


FAMILIES = {
    "masked_conv": _masked_conv_calls,
    "causal_conv1d": _causal_conv1d_calls,
    "attention": _attention_calls,
    "dmol": _dmol_calls,
    "gated": _gated_calls,
}


def capture(families, dtypes) -> list[Launch]:
    """Replay ``families`` at their benchmark shapes in ``dtypes``; the captured launches."""
    import artrt.kernels  # noqa: F401  (compiled, not interpreted: see main)
    import torch

    _CAP.launches.clear()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    with _capture(), _as_on_h200():
        for name in families:
            FAMILIES[name](dtypes)
    return list(_CAP.launches)


# ----------------------------------------------------------------------- compile and read

def _tool(name: str) -> str:
    import triton.backends.nvidia as nvidia

    return os.path.join(os.path.dirname(nvidia.__file__), "bin", name)


_SASS_LINE = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)")
_SASS_FULL = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P[T0-9]+\s+)?"
                        r"([A-Z][A-Za-z0-9_.]*)([^;]*);")
_HMMA_SHAPES = {"16816": (16, 8, 16), "1688": (16, 8, 8), "884": (8, 8, 4), "1684": (16, 8, 4)}
_PTX_WIDTH = {"b8": 1, "u8": 1, "s8": 1, "b16": 2, "u16": 2, "s16": 2, "f16": 2, "bf16": 2,
              "b32": 4, "u32": 4, "s32": 4, "f32": 4, "b64": 8, "u64": 8, "s64": 8, "f64": 8}


def _ptx_widths(ptx: str) -> dict:
    """Static counts of the global accesses by bytes per thread: {"ld": {bytes: count},
    "st": ..., "cp.async": ...}, and "loop ld" / "loop cp.async" for those inside a loop (a
    label that a later branch jumps back to)."""
    lines = ptx.splitlines()
    labels = {m.group(1): i for i, line in enumerate(lines)
              if (m := re.match(r"\s*(\$L__\w+):", line))}
    inside = [False] * len(lines)
    for i, line in enumerate(lines):
        m = re.search(r"\bbra(?:\.uni)?\s+(\$L__\w+);", line)
        if m and labels.get(m.group(1), i + 1) <= i:
            inside[labels[m.group(1)]:i + 1] = [True] * (i + 1 - labels[m.group(1)])
    out = {"ld": {}, "st": {}, "cp.async": {}, "loop ld": {}, "loop cp.async": {}}

    def add(kind, width, i):
        out[kind][width] = out[kind].get(width, 0) + 1
        if inside[i] and kind != "st":
            out["loop " + kind][width] = out["loop " + kind].get(width, 0) + 1

    for i, line in enumerate(lines):
        for m in re.finditer(r"\b(ld|st)\.global((?:\.[a-z0-9:_]+)*)", line):
            parts = m.group(2).split(".")[1:]
            vec = next((int(p[1:]) for p in parts if re.fullmatch(r"v\d", p)), 1)
            size = next((_PTX_WIDTH[p] for p in reversed(parts) if p in _PTX_WIDTH), 4)
            add(m.group(1), vec * size, i)
        for m in re.finditer(r"cp\.async\.c[ag]\.shared\.global\s*\[[^\]]*\],\s*\[[^\]]*\],"
                             r"\s*(0x[0-9a-fA-F]+|\d+)", line):
            add("cp.async", int(m.group(1), 0), i)
    return out


def _innermost_loops(ins: list) -> list[tuple[int, int]]:
    """(first, last) addresses of the loops (backward branches) of the SASS instructions
    ``ins`` [(address, opcode, operands)] that contain no other loop."""
    loops = []
    for addr, op, rest in ins:
        m = re.search(r"0x([0-9a-f]+)", rest) if op.startswith("BRA") else None
        if m and int(m.group(1), 16) < addr:
            loops.append((int(m.group(1), 16), addr))
    return [(a, b) for a, b in loops
            if not any(a <= c and d <= b and (c, d) != (a, b) for c, d in loops)]


def _sass_loop(sass: str) -> dict | None:
    """Per iteration of the innermost loops that hold MMA instructions (a backward branch's
    range containing no other such range), per warp: instructions, MUFU instructions and
    MMA FLOPs (an HGMMA m x n x k is a warpgroup's: a quarter of 2 m n k per warp)."""
    ins = [(int(a, 16), op, rest) for a, op, rest in _SASS_FULL.findall(sass)]
    loops = []
    for addr, op, rest in ins:
        m = re.search(r"0x([0-9a-f]+)", rest) if op.startswith("BRA") else None
        if m and int(m.group(1), 16) < addr:
            loops.append((int(m.group(1), 16), addr))
    mma = [x for x, op, _ in ins if op.startswith(("HGMMA", "HMMA"))]
    with_mma = [(a, b) for a, b in loops if any(a <= x <= b for x in mma)]
    inner = [(a, b) for a, b in with_mma
             if not any(a <= c and d <= b and (c, d) != (a, b) for c, d in with_mma)]
    if not inner:
        return None
    out = {"instr": 0, "mufu": 0, "flops": 0.0, "loops": len(inner)}
    for a, b in inner:
        for x, op, _ in ins:
            if not a <= x <= b:
                continue
            out["instr"] += 1
            out["mufu"] += op.startswith("MUFU")
            if m := re.match(r"HGMMA\.(\d+)x(\d+)x(\d+)", op):
                out["flops"] += 2 * math.prod(map(int, m.groups())) / 4
            elif (m := re.match(r"HMMA\.(\d+)", op)) and m.group(1) in _HMMA_SHAPES:
                out["flops"] += 2 * math.prod(_HMMA_SHAPES[m.group(1)])
    return out


def _loads_per_iteration(sass: str) -> list[int]:
    """LDG instructions per iteration of each innermost loop that has any."""
    ins = [(int(a, 16), op, rest) for a, op, rest in _SASS_FULL.findall(sass)]
    counts = [sum(1 for x, op, _ in ins if a <= x <= b and op.startswith("LDG"))
              for a, b in _innermost_loops(ins)]
    return [n for n in counts if n]


def _read_cubin(cubin: bytes) -> dict:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        Path(path).write_bytes(cubin)
        usage = subprocess.run([_tool("cuobjdump"), "--dump-resource-usage", path],
                               capture_output=True, text=True, check=True).stdout
        sass = subprocess.run([_tool("cuobjdump"), "-sass", path], capture_output=True,
                              text=True, check=True).stdout
    fields = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", usage))
    ops: dict[str, int] = {}
    for m in _SASS_LINE.finditer(sass):
        base = m.group(1).split(".")[0]
        ops[base] = ops.get(base, 0) + 1
    return {"regs": int(fields.get("REG", 0)), "stack": int(fields.get("STACK", 0)),
            "local": int(fields.get("LOCAL", 0)), "sass": ops, "loop": _sass_loop(sass)}


def _compile(key: str) -> tuple[str, dict]:
    """Compile one specialisation for sm_90a; the facts read from it, or {"error": ...}."""
    import warnings

    import triton
    from triton.compiler import ASTSource

    warnings.filterwarnings("ignore", message="TRITON_DEFAULT_FP_FUSION")
    fn, signature, constexprs, attrs, options = _CAP.specs[key]
    start = time.perf_counter()
    try:
        kernel = triton.compile(ASTSource(fn, signature, constexprs=constexprs, attrs=attrs),
                                target=_target(), options=options)
        facts = _read_cubin(kernel.asm["cubin"])
    except Exception as e:  # a compile error is a result of the report
        return key, {"error": f"{type(e).__name__}: {str(e)[:2000]}",
                     "seconds": time.perf_counter() - start}
    facts.update(shared=int(kernel.metadata.shared), widths=_ptx_widths(kernel.asm["ptx"]),
                 seconds=time.perf_counter() - start)
    return key, facts


def compile_all(keys: list[str], jobs: int, log=None) -> dict[str, dict]:
    """{key: facts} of every specialisation, compiled in ``jobs`` forked workers."""
    import multiprocessing

    results = {}
    with multiprocessing.get_context("fork").Pool(jobs) as pool:
        for key, facts in pool.imap_unordered(_compile, keys):
            results[key] = facts
            if log:
                log(key, facts)
    return results


# ----------------------------------------------------------------------- analysis

def occupancy(regs: int, shared: int, warps: int) -> tuple[int, str]:
    """(blocks per SM, the limiting resource) of a kernel on an H100/H200 SM."""
    per_warp = -(-max(regs, 1) * 32 // REG_ALLOC_UNIT) * REG_ALLOC_UNIT
    by_regs = (REGS_PER_SM // per_warp) // warps
    smem = shared + SMEM_RESERVED
    by_smem = SMEM_PER_SM // smem if shared <= SMEM_PER_BLOCK else 0
    limits = {"registers": by_regs, "shared memory": by_smem,
              "warps": WARPS_PER_SM // warps, "blocks": BLOCKS_PER_SM}
    limiter = min(limits, key=limits.get)
    return limits[limiter], limiter


def _mma(sass: dict) -> str:
    if sass.get("HGMMA"):
        return "wgmma"
    if sass.get("HMMA"):
        return "mma.sync"
    return "none"


def _async(sass: dict) -> str:
    kinds = [name for op, name in (("UTMALDG", "TMA"), ("UBLKCP", "TMA bulk"),
                                   ("LDGSTS", "cp.async")) if sass.get(op)]
    return "+".join(kinds) or "none"


def _width_text(counts: dict) -> str:
    return " ".join(f"{n}x{w}B" for w, n in sorted(counts.items(), key=lambda x: -x[0])) or "-"


def _load_bytes(widths: dict) -> tuple[float, float]:
    """(fraction of the global bytes loaded inside loops that cp.async moves, fraction of
    all global bytes moved by accesses of >= 8 bytes per thread): static PTX counts."""
    sync = sum(w * n for w, n in widths["loop ld"].items())
    asyn = sum(w * n for w, n in widths["loop cp.async"].items())
    total = sum(w * n for part in ("ld", "st", "cp.async") for w, n in widths[part].items())
    wide = sum(w * n for part in ("ld", "st", "cp.async") for w, n in widths[part].items()
               if w >= 8)
    return (asyn / (sync + asyn) if sync + asyn else 0.0, wide / total if total else 0.0)


def _tensor(args: dict, name: str) -> dict | None:
    v = args.get(name)
    return v if isinstance(v, dict) else None


def work(launch: Launch) -> tuple[float, float, bool, float | None]:
    """(MMA FLOPs executed, bytes moved at least, loop free, trips of the pipelined loop) of
    one launch.

    Bytes: every distinct tensor argument once (dummies alias another argument). FLOPs: the
    tensor-core products the kernel runs, including the recomputations of a backward.
    Trips: iterations of the innermost (software-pipelined) loop each time it starts: the
    pipeline fills and drains at every start (masked_conv2d: per tap; causal_conv1d: per
    tap; attention: once per program), None where it is long."""
    a, c = launch.args, launch.constexprs
    seen, moved = set(), 0
    for v in a.values():
        if isinstance(v, dict) and (v["ptr"], v["bytes"]) not in seen:
            seen.add((v["ptr"], v["bytes"]))
            moved += v["bytes"]
    name, flops, loop_free, trips = launch.kernel, 0.0, False, None

    def val(key, default=0):
        if key in launch.ones:  # made a constant by the JIT
            return 1
        v = a.get(key, c.get(key, default))
        return v if isinstance(v, (int, float)) else default

    if name == "_tap_conv_fwd_kernel":
        pixels = val("batch") * val("height") * val("width")
        flops = 2.0 * pixels * val("nw") * val("cin") * val("n_taps")
        if c.get("HAS_X2"):
            flops += 2.0 * pixels * val("nw") * val("cin2") * val("n_taps2")
        trips = -(-val("cin") // c["BLOCK_K"])
    elif name == "_tap_conv_wgrad_kernel":
        taps = _tensor(a, "taps_ptr")["shape"][0]
        flops = 2.0 * val("batch") * val("height") * val("width") * val("cin") * val("n_out") * taps
    elif name == "_causal_conv1d_fwd_kernel":
        rows = val("cout") * (1 if c.get("EPILOGUE", 0) == 0 else 2)
        kdim = val("cin") * c["KSIZE"] + (val("ccond") if c.get("HAS_COND") else 0)
        flops = 2.0 * _tensor(a, "x_ptr")["shape"][0] * val("t_len") * rows * kdim
        trips = -(-val("cin") // c["BLOCK_C"])
    elif name == "_causal_conv1d_bwd_weight_kernel":
        flops = (2.0 * _tensor(a, "x_ptr")["shape"][0] * val("t_len") * val("cout") * val("cin")
                 * c["KSIZE"])
    elif name.startswith("_causal_attention_"):
        b, h, t, d = _tensor(a, "q_ptr")["shape"]
        # products of T x T/2 x D per (batch, head): fwd QK^T, PV; dK/dV QK^T, dO V^T, P^T dO,
        # dS^T Q; dQ QK^T, dO V^T, dS K
        kind = name.split("_")[-2]
        products = {"fwd": 2, "dkdv": 4, "dq": 3}[kind]
        flops = products * 2.0 * b * h * t * t / 2 * d
        trips = max(1.0, t / 2 / c["BLOCK_M" if kind == "dkdv" else "BLOCK_N"])
    elif name == "_attention_decode_fwd_kernel":
        b, h, tq, d = _tensor(a, "q_ptr")["shape"]
        flops = 4.0 * b * h * tq * _tensor(a, "k_ptr")["shape"][2] * d
        trips = max(1.0, val("chunk") / c["BLOCK_N"])
    elif name in ("_gated_fwd_kernel", "_gated_bwd_kernel", "_dmol_nll_fwd_kernel",
                  "_dmol_nll_bwd_kernel", "_dmol_sample_kernel"):
        loop_free = True
    return flops, float(moved), loop_free, trips


def _range(lo_hi, scale=1.0):
    return lo_hi[0] * scale, lo_hi[1] * scale


def estimate(launch: Launch, facts: dict) -> dict:
    """Occupancy and the roofline estimate of one launch compiled as ``facts``."""
    blocks, limiter = occupancy(facts["regs"], facts["shared"], launch.warps)
    flops, moved, loop_free, trips = work(launch)
    sass = facts["sass"]
    mma = _mma(sass)
    async_frac, wide_frac = _load_bytes(facts["widths"])
    out = {"blocks": blocks, "limiter": limiter, "warps_sm": blocks * launch.warps, "mma": mma,
           "async": _async(sass), "flops": flops, "bytes": moved}
    if blocks == 0:
        return {**out, "t": None, "why": "does not fit an SM"}
    slots = SMS * blocks
    waves = launch.programs / slots
    wave_eff = launch.programs / (math.ceil(waves) * slots)
    fp32 = launch.dtype == "float32"
    mem = tuple(n + (v - n) * wide_frac for n, v in zip(_ASSUMPTIONS["mem_narrow"][0],
                                                     _ASSUMPTIONS["mem_vector"][0], strict=True))
    t_mem = [moved / (HBM_BYTES_S * mem[1]), moved / (HBM_BYTES_S * mem[0])]
    t_comp, ceiling = [0.0, 0.0], None
    if flops:
        if mma == "none":
            ceiling, mma_f = PEAK_FP32_FMA, (1.0, 1.0)
        else:
            ceiling = PEAK_TF32 if fp32 else PEAK_16BIT
            mma_f = _ASSUMPTIONS["mma.sync"][0] if mma == "mma.sync" else (1.0, 1.0)
        # a synchronously loaded operand stalls every step however the others arrive
        pipe = tuple(s + (q - s) * async_frac ** 2
                     for s, q in zip(_ASSUMPTIONS["pipe_sync"][0], _ASSUMPTIONS["pipe_async"][0],
                                     strict=True))
        spill = _ASSUMPTIONS["spill"][0] if facts["stack"] else (1.0, 1.0)
        restart = trips / (trips + launch.stages - 1) if trips else 1.0
        loop, ratio = facts.get("loop"), 0.0
        if loop and loop["flops"]:
            # the loop's other instructions against its MMA time, per SM
            rate = MMA_PER_CLOCK["tf32" if fp32 else "16bit"]
            mma_clocks = loop["flops"] * launch.warps / rate
            other = max(loop["instr"] * launch.warps / 4, loop["mufu"] * launch.warps * 2)
            ratio = other / mma_clocks
        hi = ceiling * mma_f[1] * pipe[1] * spill[1] * restart / max(1.0, ratio)
        lo = ceiling * mma_f[0] * pipe[0] * spill[0] * restart / (1.0 + ratio)
        t_comp = [flops / hi, flops / lo]
    t_issue = [0.0, 0.0]
    if loop_free:
        warps = launch.programs * launch.warps
        instr = sum(sass.values())
        issue = max(instr * warps / (SMS * 4 * CLOCK_HZ),
                    sass.get("MUFU", 0) * warps * 32 / (SMS * 16 * CLOCK_HZ))
        f = _ASSUMPTIONS["issue"][0]
        t_issue = [issue / f[1], issue / f[0]]
    terms = {"memory": t_mem, "MMA": t_comp, "issue": t_issue}
    bound = max(terms, key=lambda k: terms[k][1])
    t = [max(v[i] for v in terms.values()) / wave_eff for i in (0, 1)]
    why = (f"{bound}-bound; {flops / 1e9:.3g} GFLOP" if flops else f"{bound}-bound")
    why += f", {moved / 1e6:.3g} MB, {waves:.2g} waves (eff {wave_eff:.2f})"
    if flops:
        why += f", {100 * async_frac:.0f}% of loop load bytes async"
        if trips:
            why += f", {trips:.3g} trips per pipeline start ({launch.stages} stages)"
        if ratio:
            why += f", loop ALU/MUFU issue {ratio:.2f}x its MMA time"
    if facts["stack"]:
        why += f", {facts['stack']} B stack"
    return {**out, "t": t, "bound": bound, "why": why, "waves": waves, "wave_eff": wave_eff,
            "ceiling": ceiling}


# ----------------------------------------------------------------------- CUDA kernels

def cuda_report(timeout: float = 240) -> tuple[list[dict], str]:
    """(rows, note) for the kernels of csrc/*.cu: nvcc -arch=sm_90a --resource-usage."""
    nvcc = "nvcc"
    try:
        version = subprocess.run([nvcc, "--version"], capture_output=True, text=True,
                                 timeout=30).stdout.strip().splitlines()[-2]
    except (OSError, IndexError, subprocess.TimeoutExpired) as e:
        return [], f"nvcc not available ({e}); CUDA kernels not reported"
    rows = []
    for src in sorted((ROOT / "csrc").glob("*.cu")):
        threads = re.search(r"constexpr int kThreads = (\d+);", src.read_text())
        with tempfile.TemporaryDirectory() as d:
            obj = os.path.join(d, "k.o")
            r = subprocess.run([nvcc, "-arch=sm_90a", "--resource-usage", "-O3", "-c",
                                f"-I{ROOT / 'csrc'}", str(src), "-o", obj],
                               capture_output=True, text=True, timeout=timeout)
            if r.returncode != 0:
                rows.append({"file": src.name, "kernel": "-", "error": r.stderr[-500:]})
                continue
            sass = subprocess.run([_tool("cuobjdump"), "-sass", obj], capture_output=True,
                                  text=True).stdout
        usage = r.stdout + r.stderr
        per_fn = {}
        for m in re.finditer(r"Function properties for (\S+)\n\s*(\d+) bytes stack frame, "
                             r"(\d+) bytes spill stores, (\d+) bytes spill loads", usage):
            per_fn[m.group(1)] = {"stack": int(m.group(2)), "spill_st": int(m.group(3)),
                                  "spill_ld": int(m.group(4))}
        for m in re.finditer(r"Compiling entry function '(\S+)' for 'sm_90a'\n(?:.*\n)*?"
                             r".*Used (\d+) registers(?:, used \d+ barriers)?"
                             r"(?:, (\d+) bytes smem)?", usage):
            name = m.group(1)
            ops: dict[str, int] = {}
            block = sass.split(f"Function : {name}")[1].split("Function :")[0] \
                if f"Function : {name}" in sass else ""
            for op in _SASS_LINE.finditer(block):
                base = op.group(1)
                ops[base] = ops.get(base, 0) + 1
            loads = {k.removeprefix("LDG.E"): v for k, v in ops.items() if k.startswith("LDG")}
            base_ops: dict[str, int] = {}
            for k, v in ops.items():
                base_ops[k.split(".")[0]] = base_ops.get(k.split(".")[0], 0) + v
            in_loops = _loads_per_iteration(block)
            rows.append({"file": src.name, "kernel": _demangle(name),
                         "loop_loads": sorted(in_loops)[len(in_loops) // 2] if in_loops else 0,
                         "regs": int(m.group(2)), "smem_static": int(m.group(3) or 0),
                         "threads": int(threads.group(1)) if threads else None,
                         **per_fn.get(name, {}), "mma": _mma(base_ops),
                         "async": _async(base_ops),
                         "loads": " ".join(f"{v}x{k or '.32'}" for k, v in sorted(loads.items())),
                         "mufu": base_ops.get("MUFU", 0)})
    return rows, version


def _demangle(name: str) -> str:
    try:
        return subprocess.run(["c++filt", name], capture_output=True, text=True,
                              timeout=10).stdout.strip().replace("artrt::(anonymous namespace)::",
                                                                 "")
    except (OSError, subprocess.TimeoutExpired):
        return name


# ----------------------------------------------------------------------- the report

def _fmt_t(t) -> str:
    if t is None:
        return "-"
    return f"{t[0] * 1e6:.3g}-{t[1] * 1e6:.3g}"


def _mode(launch: Launch) -> str:
    c = launch.constexprs
    flags = [f"{k}={v}" for k, v in c.items() if not k.startswith("BLOCK_")
             and k not in ("UPCAST", "DOT_FP32") and v not in (False, 0, None)]
    # the integer specialisations that change code paths (not strides or sizes)
    shown = ("n_taps", "n_taps2", "groups2", "dilation", "group", "tq", "t_new")
    ints = [f"{k}=1" for k in shown if k in launch.ones]
    ints += [f"{k}%16=0" for k in shown if k in launch.divisible]
    return " ".join(flags + ints) or "-"


def _tiles(launch: Launch) -> str:
    blocks = [f"{k.removeprefix('BLOCK_')}{v}" for k, v in launch.constexprs.items()
              if k.startswith("BLOCK_")]
    return " ".join(blocks) + f" w{launch.warps} s{launch.stages}"


def analyse(launches: list[Launch], facts: dict) -> dict:
    """Per launch the estimate; per benchmark case and phase the sums (the autotuner's best
    candidate per launch); per specialisation its facts and users."""
    groups: dict[int, list] = {}  # launch site -> its candidates
    for ln in launches:
        groups.setdefault(ln.site, []).append(ln)
    calls, cases = [], {}
    for group in groups.values():
        cands = []
        for ln in group:
            f = facts[ln.key]
            est = estimate(ln, f) if "error" not in f else {"t": None, "why": f["error"][:80]}
            cands.append((ln, f, est))
        timed = [c for c in cands if c[2].get("t")]
        best = min(timed, key=lambda c: c[2]["t"][0]) if timed else cands[0]
        ln, f, est = best
        calls.append({"family": ln.family, "case": ln.case, "phase": ln.phase,
                      "dtype": ln.dtype, "kernel": ln.kernel, "programs": ln.programs,
                      "config": _tiles(ln), "candidates": len(cands), "est": est,
                      "spills": any(c[1].get("stack") for c in cands)})
        key = (ln.family, ln.case, ln.dtype, ln.phase)
        agg = cases.setdefault(key, {"t": [0.0, 0.0], "flops": 0.0, "bytes": 0.0,
                                     "launches": 0, "missing": 0})
        agg["launches"] += 1
        if est.get("t"):
            agg["t"] = [agg["t"][0] + est["t"][0], agg["t"][1] + est["t"][1]]
            agg["flops"] += est["flops"]
            agg["bytes"] += est["bytes"]
        else:
            agg["missing"] += 1
    specs: dict[str, dict] = {}
    for ln in launches:
        s = specs.setdefault(ln.key, {"launch": ln, "cases": set(), "dtype": ln.dtype})
        s["cases"].add(ln.case)
    return {"calls": calls, "cases": cases, "specs": specs}


def _representative_calls(calls: list[dict]) -> list[dict]:
    """The calls of one case per (family, kind of case, dtype): the case with the most MMA
    FLOPs (then bytes), e.g. the largest masked convolution."""
    totals: dict[tuple, list] = {}
    for c in calls:
        t = totals.setdefault((c["family"], c["case"], c["dtype"]), [0.0, 0.0])
        t[0] += c["est"].get("flops") or 0.0
        t[1] += c["est"].get("bytes") or 0.0
    best: dict[tuple, tuple] = {}
    for (family, case, dtype), t in totals.items():
        kind = (family, case.split(" ")[0].split("-")[0], dtype)
        if kind not in best or t > totals[best[kind]]:
            best[kind] = (family, case, dtype)
    chosen = set(best.values())
    return [c for c in calls if (c["family"], c["case"], c["dtype"]) in chosen]


def _peak_for(dtype: str) -> float:
    return PEAK_TF32 if dtype == "float32" else PEAK_16BIT


def markdown(result: dict, facts: dict, env: dict, cuda: tuple[list, str]) -> str:
    from bench.common import markdown_table

    calls, cases, specs = result["calls"], result["cases"], result["specs"]
    lines = [
        "# Static performance report: sm_90a (H100 / H200), from the compiled code",
        "",
        ", ".join(f"{k} {v}" for k, v in env.items()),
        "",
        "Written by `python -m bench.static` without a GPU. Every number below is read from "
        "code compiled for sm_90a at the specialisations the benchmarks (`bench/*.py`, GPU "
        "shapes) launch, or estimated from it: **estimates, not measurements**. See the "
        "module docstring of `bench/static.py` for the method and the end of this file for "
        "the assumptions. Autotune candidates that a kernel's pruning drops at a shape (e.g. "
        "`_prune_fwd_configs` of masked_conv2d) are never launched there, so not listed.",
        "",
    ]
    spilling = sorted({(s["launch"].kernel, s["dtype"], _mode(s["launch"]),
                        _tiles(s["launch"]), facts[k].get("stack", 0))
                       for k, s in specs.items() if facts[k].get("stack")})
    errors = sorted({(s["launch"].kernel, s["dtype"], _tiles(s["launch"]),
                      facts[k]["error"].splitlines()[0][:120])
                     for k, s in specs.items() if "error" in facts[k]})
    lines += ["## Headlines", ""]
    if spilling:
        lines.append("Specialisations that spill (stack frame bytes per thread):")
        lines += [f"- `{k}` {d} {m} [{t}]: {b} B" for k, d, m, t, b in spilling]
    else:
        lines.append("No specialisation the benchmarks launch spills.")
    if errors:
        lines.append("")
        lines.append("Specialisations that do not compile:")
        lines += [f"- `{k}` {d} [{t}]: {e}" for k, d, t, e in errors]
    lines.append("")
    by_kernel: dict[tuple, dict] = {}
    for k, s in specs.items():
        f = facts[k]
        if "error" in f:
            continue
        ln = s["launch"]
        agg = by_kernel.setdefault((ln.kernel, s["dtype"]), {"regs": [], "mma": set(),
                                                             "async": set(), "occ": [],
                                                             "stack": []})
        agg["regs"].append(f["regs"])
        agg["stack"].append(f["stack"])
        agg["mma"].add(_mma(f["sass"]))
        agg["async"].add(_async(f["sass"]))
        agg["occ"].append(occupancy(f["regs"], f["shared"], ln.warps)[0] * ln.warps)
    rows = [{"kernel": k, "dtype": d, "regs": f"{min(a['regs'])}-{max(a['regs'])}",
             "mma": "/".join(sorted(a["mma"])), "async": "/".join(sorted(a["async"])),
             "warps": f"{min(a['occ'])}-{max(a['occ'])}", "n": len(a["regs"]),
             "spill": f"{sum(1 for x in a['stack'] if x)} ({max(a['stack'])} B)"
             if max(a["stack"]) else "0"}
            for (k, d), a in sorted(by_kernel.items())]
    lines += ["Per kernel and dtype, over its specialisations:", "",
              markdown_table(rows, [("kernel", "kernel"), ("dtype", "dtype"),
                                    ("n", "specialisations"), ("regs", "registers"),
                                    ("spill", "spilling (max stack)"), ("mma", "MMA"),
                                    ("async", "async copies"), ("warps", "warps/SM")]), ""]

    lines += ["## Estimated time per benchmark call", "",
              "Sum over the call's kernel launches (for an autotuned launch, the candidate "
              "with the best estimate) of the estimated kernel times; host work, launch gaps "
              "and torch ops between kernels are not counted. % of peak: executed MMA FLOPs "
              "per second against the dtype's dense tensor peak (bf16/fp16 989 TFLOP/s, TF32 "
              "494), and bytes against 4.8 TB/s.", ""]
    rows = []
    for (family, case, dtype, phase), agg in cases.items():
        t = agg["t"]
        row = {"family": family, "case": case, "dtype": dtype, "phase": phase,
               "launches": agg["launches"], "gflop": agg["flops"] / 1e9,
               "mb": agg["bytes"] / 1e6, "us": _fmt_t(t) if t[0] else "-"}
        if t[0]:
            peak = _peak_for(dtype)
            row["pct_peak"] = (f"{100 * agg['flops'] / t[1] / peak:.0f}-"
                               f"{100 * agg['flops'] / t[0] / peak:.0f}") if agg["flops"] else "-"
            row["pct_bw"] = (f"{100 * agg['bytes'] / t[1] / HBM_BYTES_S:.0f}-"
                             f"{100 * agg['bytes'] / t[0] / HBM_BYTES_S:.0f}")
        if agg["missing"]:
            row["note"] = f"{agg['missing']} launches without an estimate"
        rows.append(row)
    lines += [markdown_table(rows, [("family", "family"), ("case", "case"), ("dtype", "dtype"),
                                    ("phase", "phase"), ("launches", "launches"),
                                    ("gflop", "GFLOP (MMA)"), ("mb", "MB moved"),
                                    ("us", "est. us"), ("pct_peak", "% tensor peak"),
                                    ("pct_bw", "% HBM"), ("note", "note")]), ""]

    lines += ["## Kernel launches", "",
              "Every launch of one benchmark call per kind of call and dtype (the one with "
              "the most FLOPs), identical launches counted together; `why` gives the "
              "estimate's reasoning. For an autotuned launch, `cands` candidates survive the "
              "pruning and `best config` is the one with the best estimate.", ""]
    rows = []
    for c in _representative_calls(calls):
        e = c["est"]
        row = {"case": c["case"], "dtype": c["dtype"], "phase": c["phase"],
               "kernel": c["kernel"], "config": c["config"], "cands": c["candidates"],
               "programs": c["programs"], "us": _fmt_t(e.get("t")), "why": e.get("why")}
        same = next((r for r in rows if all(r[k] == row[k] for k in row)), None)
        if same:
            same["n"] += 1
        else:
            rows.append({**row, "n": 1})
    lines += [markdown_table(rows, [("case", "case"), ("dtype", "dtype"), ("phase", "phase"),
                                    ("kernel", "kernel"), ("n", "n"),
                                    ("config", "best config"), ("cands", "cands"),
                                    ("programs", "programs"), ("us", "est. us each"),
                                    ("why", "why")]), ""]

    lines += ["## Compiled specialisations", "",
              "Every specialisation the benchmarks launch (each autotune candidate). stack: "
              "spilled bytes per thread (STL/LDL: spill instructions in the SASS). Occupancy "
              "from registers (allocated per warp in units of 256), shared memory (+1 KB "
              "reserved per block) and warps. Widths: global accesses per thread in the PTX "
              "(static counts).", ""]
    rows = []
    for k, s in sorted(specs.items(), key=lambda kv: (kv[1]["launch"].kernel,
                                                      kv[1]["dtype"], _mode(kv[1]["launch"]),
                                                      _tiles(kv[1]["launch"]))):
        ln, f = s["launch"], facts[k]
        row = {"kernel": ln.kernel, "dtype": s["dtype"], "mode": _mode(ln),
               "tiles": _tiles(ln), "cases": len(s["cases"])}
        if "error" in f:
            row["mma"] = f["error"].splitlines()[0][:60]
        else:
            blocks, limiter = occupancy(f["regs"], f["shared"], ln.warps)
            sass = f["sass"]
            row.update(regs=f["regs"], stack=f["stack"],
                       stl=f"{sass.get('STL', 0)}/{sass.get('LDL', 0)}",
                       smem=f"{f['shared'] / 1024:.1f}",
                       occ=f"{blocks} ({blocks * ln.warps}w, {limiter})",
                       mma=f"{_mma(sass)} ({sass.get('HGMMA', 0) or sass.get('HMMA', 0)})",
                       asyn=_async(sass), ld=_width_text(f["widths"]["ld"]),
                       cp=_width_text(f["widths"]["cp.async"]),
                       st=_width_text(f["widths"]["st"]))
        rows.append(row)
    lines += [markdown_table(rows, [("kernel", "kernel"), ("dtype", "dtype"), ("mode", "mode"),
                                    ("tiles", "tiles"), ("regs", "regs"), ("stack", "stack B"),
                                    ("stl", "STL/LDL"), ("smem", "smem KB"),
                                    ("occ", "blocks/SM"), ("mma", "MMA (count)"),
                                    ("asyn", "async"), ("ld", "ld.global"),
                                    ("cp", "cp.async"), ("st", "st.global"),
                                    ("cases", "cases")]), ""]

    cuda_rows, cuda_note = cuda
    lines += ["## CUDA kernels (csrc/)", ""]
    if cuda_rows:
        for r in cuda_rows:
            if r.get("regs") and r.get("threads"):
                warps = r["threads"] // 32
                b, lim = occupancy(r["regs"], r.get("smem_static", 0), warps)
                r["occ"] = f"{b} ({b * warps}w, {lim})"
        lines += [f"nvcc: {cuda_note}; `nvcc -arch=sm_90a --resource-usage -O3`. Occupancy "
                  "without dynamic shared memory (wavenet_step adds (K R + Cc + R + G + 2 S + "
                  "levels) x 4 bytes: 3 KB at the sampling benchmark's R64 G64 S128 K2, "
                  "which changes nothing).", "",
                  markdown_table(cuda_rows, [("file", "file"), ("kernel", "kernel"),
                                             ("regs", "regs"), ("stack", "stack B"),
                                             ("spill_st", "spill st B"),
                                             ("threads", "threads"), ("occ", "blocks/SM"),
                                             ("mma", "MMA"), ("async", "async"),
                                             ("loads", "LDG (SASS)"), ("mufu", "MUFU"),
                                             ("error", "error")]), ""]
        lines += _cuda_estimates(cuda_rows)
    else:
        lines += [cuda_note, ""]

    lines += ["## Assumptions of the estimate", ""]
    lines += [f"- {k}: " + ("" if v[0] == (1.0, 1.0) else f"x{v[0][0]}-{v[0][1]}: ") + v[1]
              for k, v in _ASSUMPTIONS.items()]
    lines += [f"- peaks: bf16/fp16 dense {PEAK_16BIT / 1e12:.0f} TFLOP/s, TF32 "
              f"{PEAK_TF32 / 1e12:.0f}, fp32 FMA {PEAK_FP32_FMA / 1e12:.0f}; HBM "
              f"{HBM_BYTES_S / 1e12:.1f} TB/s; {SMS} SMs at {CLOCK_HZ / 1e9:.2f} GHz",
              "- bytes: each distinct tensor argument once (compulsory traffic); re-reads "
              "that miss L2 (e.g. an implicit-GEMM input read once per tap) would add to it",
              "- FLOPs: the products the kernel executes (attention backward: 7 T x T/2 x D "
              "products, where the benchmark counts 5); masked-out work of padded tiles "
              "(e.g. dmol's K = 10 in a 16-wide tile) shows in the SASS counts of "
              "loop-free kernels only",
              "- wave efficiency: programs / (waves rounded up x 132 x blocks per SM)",
              "- 'loop load bytes async': static PTX counts, inside loops, of cp.async bytes "
              "against ld.global bytes", ""]
    return "\n".join(lines)


def _cuda_estimates(rows: list[dict]) -> list[str]:
    """The CUDA kernels' estimates at the benchmark shapes (stated arithmetic)."""
    from bench import gated as gb
    from bench import sampling as sb

    cfg = sb.WAVENET
    r, g, s, v, layers = (cfg["res_channels"], cfg["gate_channels"], cfg["skip_channels"],
                          cfg["levels"], cfg["layers"])
    k = 2
    params = layers * ((k * r) * 2 * g + 2 * g + g * (r + s) + r + s) + s * s + s + s * v + v
    weight_mb = params * 4 / 1e6
    # per layer: the gate walks K R rows, the output G rows; the head S rows twice; each
    # thread has the loads of one iteration of its (unrolled) dot loop in flight (the median
    # over the fp32 kernel's innermost loops, from its SASS), ~270 cycles per L2 round trip
    step = next((row for row in rows if row["kernel"].startswith("void wavenet_step_kernel<float")),
                {})
    flight = max(1, step.get("loop_loads", 4))
    rounds = (layers * (math.ceil(k * r / flight) + math.ceil(g / flight))
              + 2 * math.ceil(s / flight))
    latency_us = rounds * 270 / CLOCK_HZ * 1e6
    bw_us = params * 4 / (64 * CLOCK_HZ) * 1e6  # one SM at 64 B/clock from L2
    shape = gb.SHAPES[1][0]
    narrow = _ASSUMPTIONS["mem_narrow"][0]
    n = shape[0] * shape[1] // 2 * shape[2]
    return [
        f"- wavenet_step.cu, sampling benchmark (WaveNet {layers} layers, R{r} G{g} S{s}, "
        f"{v} levels, fp32 weights): {params / 1e3:.0f} k parameters = {weight_mb:.1f} MB "
        f"streamed through one SM per sequence per step. Batch 1 uses 1 of {SMS} SMs: "
        f"bandwidth bound at 64 B/clock per SM ~{bw_us:.0f} us; latency bound "
        f"(the matrix-vector loops, {flight} loads in flight per thread (one iteration of "
        f"the unrolled inner loop, SASS), ~270 cycles per L2 round trip, {rounds} dependent "
        f"rounds) ~{latency_us:.0f} us per step; overlapped or not: "
        f"{max(latency_us, bw_us):.0f}-{latency_us + bw_us:.0f} us, "
        f"{1e6 / (latency_us + bw_us):,.0f}-{1e6 / max(latency_us, bw_us):,.0f} samples/s at "
        f"batch 1 (target 43,000), before the per-layer barriers and the serial "
        f"gate -> projection chain.",
        f"- gated.cu, gated benchmark {'x'.join(map(str, shape))} bf16: 3 x {n / 1e6:.0f} M "
        f"elements = {6 * n / 1e6:.0f} MB forward, one thread per element with 2-byte loads "
        "(the LDG column), no vector access: the narrow-access factor of HBM, "
        f"{_ASSUMPTIONS['mem_narrow'][0][0]:.0%}-{_ASSUMPTIONS['mem_narrow'][0][1]:.0%}: "
        f"{6 * n / (HBM_BYTES_S * narrow[1]) * 1e6:.0f}-"
        f"{6 * n / (HBM_BYTES_S * narrow[0]) * 1e6:.0f} us (the Triton kernel's row in "
        "the call table above is the comparison).",
        ""]


def environment() -> dict:
    import torch
    import triton
    import triton.backends.nvidia.compiler as nvidia

    try:
        ptxas = nvidia.get_ptxas(90).version
    except Exception as e:  # noqa: BLE001 - recorded
        ptxas = f"unknown ({e})"
    return {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "target": "sm_90a", "triton": triton.__version__, "ptxas": ptxas,
            "torch": torch.__version__}


def _json(launches, facts, result) -> dict:
    specs = []
    for k, s in result["specs"].items():
        ln = s["launch"]
        specs.append({"kernel": ln.kernel, "dtype": s["dtype"], "mode": _mode(ln),
                      "tiles": _tiles(ln), "cases": sorted(s["cases"]),
                      "autotuned": ln.config is not None,
                      "families": sorted({x.family for x in launches if x.key == k}),
                      **{f: facts[k].get(f) for f in ("regs", "stack", "shared", "error")},
                      "spill_instructions": (facts[k].get("sass", {}).get("STL", 0)
                                             + facts[k].get("sass", {}).get("LDL", 0)),
                      "mma": _mma(facts[k].get("sass", {})),
                      "async": _async(facts[k].get("sass", {}))})
    calls = [{k: v for k, v in c.items() if k != "est"} | {
        "est_us": None if not c["est"].get("t") else [x * 1e6 for x in c["est"]["t"]],
        "why": c["est"].get("why")} for c in result["calls"]]
    return {"specialisations": specs, "calls": calls}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(FAMILIES), action="append",
                        help="this benchmark family only (repeatable)")
    parser.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), action="append",
                        help="only the benchmark cases of this dtype (repeatable)")
    parser.add_argument("--out", type=Path, default=RESULTS / "static-sm90.md")
    parser.add_argument("--no-write", action="store_true", help="print, write no markdown")
    parser.add_argument("--json", type=Path, help="also write the facts as JSON here")
    parser.add_argument("--no-cuda", action="store_true", help="skip csrc/*.cu")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args(argv)

    if os.environ.get("TRITON_INTERPRET", "0").lower() not in ("", "0", "false", "off", "no"):
        # Triton decides compiled or interpreted when a kernel is decorated: start afresh.
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        return subprocess.run([sys.executable, "-m", "bench.static",
                               *(sys.argv[1:] if argv is None else argv)],
                              env=env, cwd=ROOT).returncode
    try:
        import triton.backends.nvidia.compiler as nvidia

        nvidia.get_ptxas(90)
    except Exception as e:  # noqa: BLE001 - no nvidia backend or no ptxas: nothing to do
        print(f"SKIP: no triton nvidia backend with ptxas for sm_90 ({e})")
        return 0
    import torch

    dtypes = [getattr(torch, d) for d in (args.dtype or ("bfloat16", "float16", "float32"))]
    families = args.only or list(FAMILIES)
    start = time.perf_counter()
    launches = capture(families, dtypes)
    keys = sorted({ln.key for ln in launches},
                  key=lambda k: -sum(v for v in _CAP.specs[k][2].values()
                                     if isinstance(v, int) and not isinstance(v, bool)))
    print(f"captured {len(launches)} launches of {len({ln.kernel for ln in launches})} kernels "
          f"in {time.perf_counter() - start:.0f} s: {len(keys)} specialisations to compile",
          flush=True)

    def log(key, facts):
        fn = _CAP.specs[key][0]
        state = ("ERROR " + facts["error"].splitlines()[0][:100] if "error" in facts else
                 f"regs {facts['regs']:3d} stack {facts['stack']:4d} smem {facts['shared']:6d}")
        print(f"{facts['seconds']:5.1f}s {fn.__name__} {state}", flush=True)

    facts = compile_all(keys, args.jobs, log)
    result = analyse(launches, facts)
    cuda = ([], "skipped (--no-cuda)") if args.no_cuda else cuda_report()
    text = markdown(result, facts, environment(), cuda)
    if args.json:
        args.json.write_text(json.dumps(_json(launches, facts, result), indent=1) + "\n")
    if not args.no_write and not args.only and not args.dtype:
        args.out.write_text(text + "\n")
        print(f"wrote {args.out}")
    else:
        print(text)
    print(f"done in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
