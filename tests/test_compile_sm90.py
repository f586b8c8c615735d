"""Every Triton kernel of ``artrt.kernels`` compiles for an H100 (sm_90), without a GPU.

The interpreter the CPU tests run under does not type-check a kernel as the compiler does, so
a kernel can pass every CPU test and still fail to compile on a GPU. This test compiles each
``@triton.jit`` kernel (helpers are compiled inside them) to an sm_90 cubin with the ptxas
that ships with Triton, in the constexpr configurations its launcher uses on a GPU: the
launcher's tiles, warps and stages (every autotune candidate), each code-path switch both
ways, in bf16, fp16 and fp32. Pointer element types are those the launcher passes (int32 tap
tables and ranks, fp32 partial sums, int32 or int64 cache lengths); integer scalars are
int32 (no launcher passes one that needs int64), float scalars fp32. About half the cases
also get the specialisation the JIT gives contiguous inputs: 16-byte aligned pointers and
unit strides (and group / query counts of 1) as the constant 1. A compiled kernel must also
fit the H100's shared memory, or it would fail at launch.

The compiles run in one subprocess without TRITON_INTERPRET (Triton picks compiled or
interpreted when a kernel is decorated), split over two forked workers. Run this file as a
script to see each case with its compile time.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch

DTYPES = ("bf16", "fp16", "fp32")
# Shared memory one block of an H100 may opt in to (227 KB); more fails at launch.
H100_MAX_SHARED = 232448
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_KERNEL_MODULES = ("gated", "masked_conv2d", "causal_conv1d", "attention", "attention_decode",
                   "dmol", "wavenet_step")
# Case labels (exact) expected not to compile, with the reason; none at present.
_XFAIL: dict[str, str] = {}


# ----------------------------------------------------------------------- the cases

def _case(fn, dtype: str, constexprs: dict, *, warps: int, stages: int | None = None,
          ptrs: dict | None = None, floats: tuple = (), unit: tuple = (),
          contiguous: bool = False) -> dict:
    """One compile of ``fn``: its signature from the argument names.

    Pointers (``*_ptr``) point to ``dtype`` unless ``ptrs`` names another element type;
    scalars in ``floats`` are fp32, every other scalar int32. ``contiguous``: the JIT's
    specialisation of contiguous inputs, pointers 16-byte aligned and the scalars in ``unit``
    (unit strides, counts of 1) the constant 1. ``stages`` None: Triton's default, as the
    launchers that pass none get.
    """
    ptrs = dict(ptrs or {})
    names = set(fn.arg_names)
    unknown = (set(ptrs) | set(floats) | set(unit) | set(constexprs)) - names
    assert not unknown, f"{fn.__name__} has no argument {sorted(unknown)}"
    missing = {p.name for p in fn.params if p.is_constexpr} - set(constexprs)
    assert not missing, f"{fn.__name__}: no value for constexpr {sorted(missing)}"
    label = " ".join([fn.__name__, dtype, *(f"{k}={v}" for k, v in constexprs.items()),
                      f"warps={warps}", f"stages={stages}",
                      *(f"{k}=*{v}" for k, v in ptrs.items() if v != dtype),
                      *(["contiguous"] if contiguous else [])])
    constexprs = {**constexprs, **({name: 1 for name in unit} if contiguous else {})}
    signature, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = "*" + ptrs.get(name, dtype)
            if contiguous:
                attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            signature[name] = "fp32" if name in floats else "i32"
    options = {"num_warps": warps, **({} if stages is None else {"num_stages": stages})}
    return dict(label=label, fn=fn, signature=signature, constexprs=constexprs, attrs=attrs,
                options=options)


def _gated_cases():
    import artrt.kernels.gated as kg

    # BLOCK_R x BLOCK_S = _TILE elements, from S = 1 (a column) to S >= _TILE (a row).
    blocks = [kg._blocks(s) for s in (1, 64, 1 << 20)]
    for fn in (kg._gated_fwd_kernel, kg._gated_bwd_kernel):
        for di, dtype in enumerate(DTYPES):
            for j in range(2):  # HAS_COND both ways per dtype, ACT both ways with each
                n = 2 * di + j
                block_r, block_s = blocks[n % len(blocks)]
                yield _case(fn, dtype, dict(HAS_COND=bool(j), ACT=(j + di) % 2,
                                            BLOCK_R=block_r, BLOCK_S=block_s),
                            warps=kg._NUM_WARPS, unit=("stride_x_s", "stride_cond_s"),
                            contiguous=n % 2 == 1)


def _masked_conv2d_cases():
    import artrt.kernels.masked_conv2d as km

    fwd = km._tap_conv_fwd_kernel  # autotuned: every candidate config is compiled once
    none = dict(HAS_X2=False, HAS_BIAS=False, HAS_COND=False, HAS_RES=False, GATE=False,
                STORE_PRE=False)
    modes = {
        "gated_pixelcnn": {**none, "HAS_X2": True, "HAS_BIAS": True, "HAS_COND": True,
                           "GATE": True, "STORE_PRE": True},
        "gate": {**none, "HAS_BIAS": True, "HAS_RES": True, "GATE": True},
        "conv": {**none, "HAS_BIAS": True, "HAS_COND": True, "HAS_RES": True},
        # PixelCNN with colour groups: the centre tap as the second input, group by group
        "colour": {**none, "HAS_X2": True, "HAS_BIAS": True, "HAS_COND": True},
        "grad_input": none,
    }
    unit = ("stride_x_w", "stride_x2_w", "stride_cond_n", "stride_res_w")
    ptrs = {"taps_ptr": "i32", "taps2_ptr": "i32"}

    def fwd_case(i, dtype, mode, precision, contiguous):
        cfg = fwd.configs[i]
        return _case(fwd.fn, dtype, dict(**modes[mode], PRECISION=precision, UPCAST=False,
                                         **cfg.kwargs),
                     warps=cfg.num_warps, stages=cfg.num_stages, ptrs=ptrs, unit=unit,
                     contiguous=contiguous)

    # The gated modes (two accumulators, the most registers and shared memory) in every
    # config, the dtypes in turn; the plain modes in each dtype at the smallest config (the
    # cheapest to compile); fp32 with TF32 off (IEEE FMA dots, slow to compile at large
    # tiles) there too.
    for i in range(len(fwd.configs)):
        yield fwd_case(i, DTYPES[i % 3], "gated_pixelcnn" if i % 2 == 0 else "gate", "tf32",
                       i % 2 == 1)
    for di, dtype in enumerate(DTYPES):
        yield fwd_case(0, dtype, "conv" if di != 1 else "grad_input", "tf32", di != 1)
        yield fwd_case(0, dtype, "colour", "tf32", di == 1)
    yield fwd_case(0, "fp32", "gated_pixelcnn", "ieee", True)
    wg_dtypes = [(d, "tf32") for d in DTYPES] + [("fp32", "ieee")]
    for n, (dtype, precision) in enumerate(wg_dtypes):
        yield _case(km._tap_conv_wgrad_kernel, dtype,
                    dict(PRECISION=precision, UPCAST=False, BLOCK_C=km._WG_BLOCK_C,
                         BLOCK_N=km._WG_BLOCK_N, BLOCK_P=km._WG_BLOCK_P),
                    warps=km._NUM_WARPS, stages=km._NUM_STAGES,
                    ptrs={"taps_ptr": "i32", "part_ptr": "fp32"}, unit=("stride_x_w",),
                    contiguous=n % 2 == 1)


def _causal_conv1d_cases():
    import artrt.kernels.causal_conv1d as kc

    def blocks(size):  # the launcher's tiles for channel counts / lengths of `size`
        return dict(BLOCK_O=kc._block(size, kc._FWD_BLOCK_O),
                    BLOCK_C=kc._block(size, kc._FWD_BLOCK_C),
                    BLOCK_T=kc._block(size, kc._FWD_BLOCK_T))

    unit = ("stride_x_t", "stride_w_k", "stride_bias_o", "stride_cond_t", "stride_wc_c",
            "stride_aux_t")
    n = 0
    for di, dtype in enumerate(DTYPES):
        # (EPILOGUE, HAS_BIAS, HAS_COND, HAS_AUX, KSIZE, tile size, fp32 precision): the
        # forward conv with a residual, the input gradient, the gated forward and its
        # backward. K = 8 (the longest unrolled tap loop) in 16-bit only: in fp32 at the
        # largest tiles one compile takes 15 s, and a minute with IEEE dots (FMA), which run
        # at smaller tiles here. fp32 is TF32 when cuDNN may use it, else IEEE.
        modes = [
            (kc.EPI_NONE, True, False, True, (2, 8, 4)[di], (1024, 1024, 32)[di], "tf32"),
            (kc.EPI_NONE, False, False, False, (1, 3, 2)[di], 16, "ieee"),
            (kc.EPI_GATE, True, di != 1, False, (2, 3, 3)[di], 32, "ieee"),
            (kc.EPI_GATE_BWD, di != 2, di != 1, True, (8, 2, 2)[di], (1024, 32, 1024)[di],
             "tf32"),
        ]
        if dtype == "fp16":  # bf16's code paths with another MMA type: two modes suffice
            modes = modes[::3]
        for epilogue, has_bias, has_cond, has_aux, ksize, size, fp32_precision in modes:
            # 16-bit operands: "ieee" always (the launcher's rule).
            precision = fp32_precision if dtype == "fp32" else "ieee"
            yield _case(kc._causal_conv1d_fwd_kernel, dtype,
                        dict(KSIZE=ksize, HAS_BIAS=has_bias, HAS_COND=has_cond,
                             HAS_AUX=has_aux, EPILOGUE=epilogue, PRECISION=precision,
                             DOT_FP32=False, **blocks(size)),
                        warps=kc._FWD_NUM_WARPS, stages=kc._FWD_NUM_STAGES, unit=unit,
                        contiguous=n % 2 == 1)
            n += 1
    wg = [("bf16", "ieee", 8, 1024), ("fp16", "ieee", 1, 16), ("fp32", "tf32", 3, 1024),
          ("fp32", "ieee", 2, 32)]
    for n, (dtype, precision, ksize, size) in enumerate(wg):
        yield _case(kc._causal_conv1d_bwd_weight_kernel, dtype,
                    dict(KSIZE=ksize, PRECISION=precision, DOT_FP32=False,
                         BLOCK_O=kc._block(size, kc._BWD_W_BLOCK_O),
                         BLOCK_C=kc._block(size, kc._BWD_W_BLOCK_C),
                         BLOCK_T=kc._block(size, kc._BWD_W_BLOCK_T)),
                    warps=kc._BWD_W_NUM_WARPS, stages=kc._BWD_W_NUM_STAGES,
                    ptrs={"part_ptr": "fp32"}, unit=("stride_dy_t", "stride_x_t"),
                    contiguous=n % 2 == 1)


def _attention_cases():
    import artrt.kernels.attention as ka
    import artrt.kernels.attention_decode as kd
    import triton

    to_torch = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    ints = {"rank_ptr": "i32", "blocks_ptr": "i32", "count_ptr": "i32", "lse_ptr": "fp32",
            "delta_ptr": "fp32"}
    unit = ("stride_q_d", "stride_k_d", "stride_v_d", "group")
    # (ORDERED, STRICT, head dim) per dtype: each switch both ways in bf16 and fp32 (fp16
    # takes bf16's code path with another MMA type), the largest head dim (8 warps, the most
    # registers) in 16-bit; fp32 (IEEE FMA dots) at D = 128 takes 5-20 s a kernel to
    # compile, D = 64 is the same code less unrolled.
    variants = {"bf16": ((False, False, 128), (True, True, 64)),
                "fp16": ((True, False, 16),),
                "fp32": ((False, True, 64), (True, False, 32))}
    n = 0
    for dtype in DTYPES:
        cfg = ka._config(to_torch[dtype])
        precision = ka._dot_precision(to_torch[dtype])
        for ordered, strict, d in variants[dtype]:
            for fn, bm, bn, rows in (
                    (ka._causal_attention_fwd_kernel, cfg["fwd_m"], cfg["fwd_n"], cfg["fwd_m"]),
                    (ka._causal_attention_bwd_dkdv_kernel, cfg["bwd_m"], cfg["bwd_n"],
                     max(cfg["bwd_m"], cfg["bwd_n"])),
                    (ka._causal_attention_bwd_dq_kernel, cfg["bwd_m"], cfg["bwd_n"],
                     max(cfg["bwd_m"], cfg["bwd_n"]))):
                bd = ka.block_d(d)
                yield _case(fn, dtype, dict(ORDERED=ordered, STRICT=strict,
                                            DOT_PRECISION=precision, BLOCK_M=bm, BLOCK_N=bn,
                                            BLOCK_D=bd),
                            warps=ka._num_warps(rows, bd), stages=cfg["stages"],
                            ptrs={k: v for k, v in ints.items() if k in fn.arg_names},
                            floats=tuple(f for f in ("scale", "scale_log2")
                                         if f in fn.arg_names),
                            unit=unit + (("stride_do_d",) if "do_ptr" in fn.arg_names else ()),
                            contiguous=n % 2 == 1)
                n += 1

    # Decode: rows = group x Tq from 1 (one new token, one query head per kv head: group,
    # Tq and T_new the constant 1 when contiguous) to _MAX_ROWS; cache lengths int32 or int64.
    decode = {"bf16": ((False, 1, 64, "i32"), (True, kd._MAX_ROWS, 128, "i64")),
              "fp16": ((True, 8, 128, "i64"), (False, 1, 16, "i32")),
              "fp32": ((False, 32, 64, "i32"), (True, 1, 32, "i64"))}
    n = 0
    for dtype in DTYPES:
        for strict, rows, d, seqlens in decode[dtype]:
            block_m, bd = max(16, triton.next_power_of_2(rows)), ka.block_d(d)
            yield _case(kd._attention_decode_fwd_kernel, dtype,
                        dict(STRICT=strict, DOT_PRECISION=ka._dot_precision(to_torch[dtype]),
                             BLOCK_M=block_m, BLOCK_N=kd._BLOCK_N, BLOCK_D=bd),
                        warps=ka._num_warps(block_m, bd),
                        stages=1 if dtype == "fp32" else kd._NUM_STAGES,
                        ptrs={"seqlens_ptr": seqlens, "o_part_ptr": "fp32",
                              "lse_part_ptr": "fp32"},
                        floats=("scale_log2",),
                        unit=("stride_q_d", "stride_k_d", "stride_v_d",
                              *(("group", "tq", "t_new") if rows == 1 else ())),
                        contiguous=n % 2 == 1 or rows == 1)
            if n % 2 == 0:
                yield _case(kd._attention_decode_combine_kernel, dtype,
                            dict(BLOCK_M=block_m, BLOCK_D=bd), warps=4,
                            ptrs={"o_part_ptr": "fp32", "lse_part_ptr": "fp32"},
                            unit=("stride_o_d", "group", "tq"), contiguous=dtype == "fp16")
            n += 1


def _dmol_cases():
    import artrt.kernels.dmol as kd

    fp32_ptrs = {"x_ptr": "fp32", "u_ptr": "fp32", "out_ptr": "fp32", "grad_out_ptr": "fp32"}
    for fn in (kd._dmol_nll_fwd_kernel, kd._dmol_nll_bwd_kernel, kd._dmol_sample_kernel):
        ptrs = {k: v for k, v in fp32_ptrs.items() if k in fn.arg_names}
        unit = tuple(n for n in ("stride_p_w", "stride_x_w", "stride_u_w") if n in fn.arg_names)
        # the number of levels reaches the kernels as fp32 scalars derived from it
        floats = tuple(n for n in ("half_bin", "log_half_levels", "half_levels", "last")
                       if n in fn.arg_names)
        for n, (dtype, ch, k) in enumerate((("fp32", 3, 10), ("bf16", 1, 5), ("fp16", 3, 1))):
            block_k, block_p = kd._blocks(k, 1024)
            yield _case(fn, dtype, dict(CH=ch, BLOCK_K=block_k, BLOCK_P=block_p),
                        warps=kd._NUM_WARPS, ptrs=ptrs, floats=floats, unit=unit,
                        contiguous=n % 2 == 1)


def _wavenet_step_cases():
    import artrt.kernels.wavenet_step as kw

    ptrs = {"meta_ptr": "i32", "state_ptr": "fp32", "tokens_ptr": "i64", "u_ptr": "fp32",
            "step_ptr": "i64", "cond_ptr": "fp32", "logits_ptr": "fp32"}
    # (R, G, S, K, Cc, levels): the sizes of the CUDA kernel's GPU tests, and odd ones
    sizes = ((32, 32, 128, 2, 16, 256), (128, 128, 256, 2, 16, 256), (24, 20, 40, 3, 5, 17))
    for n, ((r, g, sk, k, cc, levels), dtype) in enumerate(zip(sizes, DTYPES, strict=True)):
        yield _case(kw._wavenet_step_kernel, dtype,
                    dict(HAS_STEP=n != 1, HAS_COND=n != 2, HAS_LOGITS=n == 1,
                         **kw.blocks(r, g, sk, k, cc, levels)),
                    warps=kw._NUM_WARPS, ptrs=ptrs, floats=("scale",),
                    unit=("stride_cond_t",), contiguous=n == 0)


def _cases() -> list[dict]:
    # The slower kernels first, so that the workers finish together.
    cases = [*_attention_cases(), *_masked_conv2d_cases(), *_causal_conv1d_cases(),
             *_dmol_cases(), *_wavenet_step_cases(), *_gated_cases()]
    labels = [c["label"] for c in cases]
    assert len(set(labels)) == len(labels), "two cases compile the same thing"
    assert set(_XFAIL) <= set(labels), f"stale xfail labels {set(_XFAIL) - set(labels)}"
    return cases


def _all_kernels() -> set[str]:
    """Every kernel (a jitted function named ``*_kernel``) of the kernel modules."""
    import importlib

    import triton

    found = set()
    for mod in _KERNEL_MODULES:
        module = importlib.import_module(f"artrt.kernels.{mod}")
        for name, obj in vars(module).items():
            fn = getattr(obj, "fn", obj)  # an autotuned kernel wraps its JITFunction
            if (name.endswith("_kernel") and isinstance(fn, triton.JITFunction)
                    and fn.__module__ == module.__name__):
                found.add(f"{mod}.{name}")
    return found


# ----------------------------------------------------------------------- the subprocess

_CASES: list[dict] = []


def _compile(index: int) -> tuple[int, float, str | None]:
    """(index, seconds, None or the compiler's error) for case ``index``."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    case = _CASES[index]
    start = time.perf_counter()
    try:
        kernel = triton.compile(
            ASTSource(case["fn"], case["signature"], constexprs=case["constexprs"],
                      attrs=case["attrs"]),
            target=GPUTarget("cuda", 90, 32), options=case["options"])
    except Exception as e:  # every compiler error is the answer
        return index, time.perf_counter() - start, f"{type(e).__name__}: {e}"
    error = None
    if kernel.metadata.shared > H100_MAX_SHARED:
        error = (f"OutOfResources: {kernel.metadata.shared} bytes of shared memory, more than "
                 f"the {H100_MAX_SHARED} an H100 block may use")
    return index, time.perf_counter() - start, error


def main() -> int:
    """Compile every case; print each, and the errors. 0 when each compiles or fails as its
    xfail entry says it should."""
    assert "TRITON_INTERPRET" not in os.environ, "run without TRITON_INTERPRET"
    try:
        import triton.backends.nvidia.compiler as nvidia

        nvidia.get_ptxas(90)
    except Exception as e:  # no nvidia backend, or no ptxas: nothing to test
        print(f"SKIP: no triton nvidia backend with ptxas for sm_90 ({e})")
        return 0
    import multiprocessing

    start = time.perf_counter()
    _CASES.extend(_cases())
    names = {f"{c['fn'].__module__.rsplit('.', 1)[-1]}.{c['fn'].__name__}" for c in _CASES}
    uncovered = _all_kernels() - names
    assert not uncovered, f"kernels without a compile case: {sorted(uncovered)}"
    workers = min(2, os.cpu_count() or 1)
    failed, unexpected = [], []
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        for index, seconds, error in pool.imap_unordered(_compile, range(len(_CASES))):
            label = _CASES[index]["label"]
            reason = _XFAIL.get(label)
            status = ("ok" if error is None and reason is None else
                      "FAILED" if reason is None else
                      "xfail" if error is not None else "XPASS")
            print(f"{status:6s} {seconds:5.1f}s  {label}", flush=True)
            if error is not None and reason is None:
                failed.append(f"{label}\n{error}")
            elif error is None and reason is not None:
                unexpected.append(f"{label} compiled, but is marked xfail: {reason}")
    print(f"compiled {len(_CASES)} cases of {len(names)} kernels in "
          f"{time.perf_counter() - start:.0f} s with {workers} workers")
    for text in failed + unexpected:
        print("\n" + text)
    return 1 if failed or unexpected else 0


@pytest.mark.skipif(torch.cuda.is_available(),
                    reason="a CUDA GPU is present: the gpu tests run the kernels themselves")
def test_every_kernel_compiles_for_sm90():
    pytest.importorskip("triton.backends.nvidia", reason="triton has no nvidia backend")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, os.path.abspath(__file__)], capture_output=True,
                       text=True, env=env, cwd=_ROOT, timeout=600)
    if r.returncode == 0 and r.stdout.startswith("SKIP"):
        pytest.skip(r.stdout.strip())
    assert r.returncode == 0 and "compiled" in r.stdout, (
        r.stdout[-20000:] + "\n" + r.stderr[-4000:])


if __name__ == "__main__":
    sys.exit(main())
