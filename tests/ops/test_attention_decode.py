"""artrt.ops.attention_decode: decode steps equal the full causal attention, the split-KV
kernel equals the reference, the cache is written in place (and left alone on bad input)."""

from __future__ import annotations

import sys

import pytest
import torch
from artrt.kernels import attention_decode as kdecode

import artrt
from artrt.ops.attention import causal_attention_ref
from artrt.ops.attention_decode import attention_decode, attention_decode_ref
from tests.helpers import DEVICE, assert_close_lowp, kernel_backends, with_layout
from tests.ops.common import no_launch
from tests.ops.test_attention import attention_module, spy

decode_module = sys.modules["artrt.ops.attention_decode"]  # (the package re-exports the op)
CPU = ["cpu"] if DEVICE == "cpu" else []  # the cpu backend, on the tensors these tests make
FAST = [*CPU, *kernel_backends()]  # every backend but the reference
BACKENDS = ["reference", *FAST]


def make_seq(b, h, hk, t, d, dtype=torch.float32, device=DEVICE, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(shape, generator=gen) for shape in
               ((b, h, t, d), (b, hk, t, d), (b, hk, t, d)))
    return tuple(x.to(device=device, dtype=dtype) for x in (q, k, v))


def empty_cache(b, hk, t_max, d, dtype=torch.float32, device=DEVICE):
    # Garbage (not zeros) beyond the valid positions: the op must never read it.
    return (torch.full((b, hk, t_max, d), 1e4, dtype=dtype, device=device),
            torch.full((b, hk, t_max, d), float("nan"), dtype=dtype, device=device))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("h,hk,tq,strict", [(4, 2, 1, False), (4, 4, 3, False),
                                            (2, 1, 2, True), (8, 1, 1, True)])
def test_decode_steps_equal_full_attention(backend, h, hk, tq, strict):
    """Sequences with different prefix lengths, then steps of tq positions: each step's output
    is the matching rows of the full causal attention; the cache holds the keys/values."""
    b, t, d, t_max = 2, 40, 16, 48
    q, k, v = make_seq(b, h, hk, t, d)
    full = causal_attention_ref(q, k, v, strict=strict)
    k_cache, v_cache = empty_cache(b, hk, t_max, d)
    prefix = [5, 21]
    for i, p in enumerate(prefix):
        k_cache[i, :, :p], v_cache[i, :, :p] = k[i, :, :p], v[i, :, :p]
    seqlens = torch.tensor(prefix, dtype=torch.int32, device=DEVICE)
    for _ in range(6):
        pos = seqlens.long()[:, None] + torch.arange(tq, device=DEVICE)  # (B, tq)
        take = [(i, pos[i]) for i in range(b)]
        q_new = torch.stack([q[i][:, p] for i, p in take])
        k_new = torch.stack([k[i][:, p] for i, p in take])
        v_new = torch.stack([v[i][:, p] for i, p in take])
        out = attention_decode(q_new, k_cache, v_cache, seqlens, k_new, v_new, strict=strict,
                               backend=backend)
        want = torch.stack([full[i][:, p] for i, p in take])
        torch.testing.assert_close(out, want, atol=2e-6, rtol=1e-5)
        seqlens += tq
    for i in range(b):
        n = int(seqlens[i])
        torch.testing.assert_close(k_cache[i, :, :n], k[i, :, :n], atol=0, rtol=0)
        torch.testing.assert_close(v_cache[i, :, :n], v[i, :, :n], atol=0, rtol=0)
        assert (k_cache[i, :, n:] == 1e4).all()


@pytest.mark.parametrize("backend", kernel_backends())
@pytest.mark.parametrize("n_splits", [1, 2, 5])
@pytest.mark.parametrize("h,hk,tq", [(4, 1, 1), (2, 2, 4), (4, 1, 40)])
def test_kernel_splits_match_reference(backend, n_splits, h, hk, tq):
    """The split-KV kernel with 1, 2 and 5 chunks (chunks that end inside, at and beyond the
    sequence), and 160 rows (4 heads x 40 positions) done in two launches."""
    b, d, t_max = 2, 32, 300
    q = make_seq(b, h, hk, tq, d, seed=1)[0]
    k_cache, v_cache = (torch.randn(b, hk, t_max, d, device=DEVICE) for _ in range(2))
    seqlens = torch.tensor([130, 299 - tq], device=DEVICE)
    k_new, v_new = (torch.randn(b, hk, tq, d, device=DEVICE) for _ in range(2))
    kc, vc = k_cache.clone(), v_cache.clone()
    want = attention_decode_ref(q, kc, vc, seqlens, k_new, v_new)
    for i, start in enumerate(seqlens.tolist()):  # the append, done by the op before launch
        k_cache[i, :, start:start + tq], v_cache[i, :, start:start + tq] = k_new[i], v_new[i]
    got = kdecode.attention_decode_fwd(q, k_cache, v_cache, seqlens, tq, d ** -0.5, False,
                                       n_splits=n_splits)
    torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(k_cache, kc, atol=0, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_new_keys_and_empty_rows(backend):
    """Without k_new the queries are the last Tq positions of the cache; a query placed
    before position 0 (or a strict query at position 0) sees nothing and outputs zeros."""
    b, h, d, t_max = 2, 2, 16, 20
    q, k, v = make_seq(b, h, h, 8, d)
    k_cache, v_cache = empty_cache(b, h, t_max, d)
    k_cache[:, :, :8], v_cache[:, :, :8] = k, v
    seqlens = torch.tensor([8, 2], device=DEVICE)
    out = attention_decode(q[:, :, 5:8], k_cache, v_cache, seqlens, backend=backend)
    full = causal_attention_ref(q, k, v)
    torch.testing.assert_close(out[0], full[0, :, 5:8], atol=2e-6, rtol=1e-5)
    # sequence 1 has 2 keys: its queries sit at positions -1, 0, 1
    assert (out[1, :, 0] == 0).all()
    torch.testing.assert_close(out[1, :, 1:], causal_attention_ref(
        q[1:, :, 6:8], k[1:, :, :2], v[1:, :, :2])[0], atol=2e-6, rtol=1e-5)
    out = attention_decode(q[:, :, :1], k_cache, v_cache, torch.zeros(2, dtype=torch.int32,
                           device=DEVICE), k[:, :, :1], v[:, :, :1], strict=True,
                           backend=backend)
    assert (out == 0).all()


@pytest.mark.parametrize("backend", FAST)
def test_kernel_non_contiguous(backend):
    b, h, d, t_max = 2, 4, 16, 70
    q = with_layout(make_seq(b, h, 2, 1, d)[0], "strided")
    k_cache = with_layout(torch.randn(b, 2, t_max, d, device=DEVICE), "strided")
    v_cache = torch.randn(b, t_max, 2, d, device=DEVICE).transpose(1, 2)  # (B, Hk, Tmax, D)
    k_new, v_new = (with_layout(torch.randn(b, 2, 1, d, device=DEVICE), "permuted")
                    for _ in range(2))
    for lengths in ([60, 7], [9, 9]):  # one kernel call per sequence, and one in all
        seqlens = with_layout(torch.tensor(lengths, device=DEVICE), "strided")
        kc, vc = k_cache.clone(), v_cache.clone()
        want = attention_decode_ref(q, kc, vc, seqlens.contiguous(), k_new, v_new)
        got = attention_decode(q, k_cache, v_cache, seqlens, k_new, v_new, backend=backend)
        torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)
        torch.testing.assert_close(k_cache, kc, atol=0, rtol=0)
        torch.testing.assert_close(v_cache, vc, atol=0, rtol=0)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_kernel_16bit(backend, dtype):
    """fp16 and bf16 under the tolerance rule, with an append; bf16 also under the Triton 3.9
    interpreter, whose own bf16 tl.dot is wrong (~1e9)."""
    b, h, d, t_max = 2, 4, 32, 150
    q, k_new, v_new = make_seq(b, h, 1, 2, d, dtype)
    k_cache, v_cache = (torch.randn(b, 1, t_max, d, device=DEVICE).to(dtype) for _ in range(2))
    seqlens = torch.tensor([100, 146], device=DEVICE)
    fp32 = attention_decode_ref(q.float(), k_cache.float(), v_cache.float(), seqlens,
                                k_new.float(), v_new.float())
    lowp = attention_decode_ref(q, k_cache.clone(), v_cache.clone(), seqlens, k_new, v_new)
    got = attention_decode(q, k_cache, v_cache, seqlens, k_new, v_new, backend=backend)
    assert got.dtype == dtype
    assert_close_lowp(got, lowp, fp32, f"decode {dtype}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty(backend):
    z = torch.zeros(2, 2, 4, 16, device=DEVICE)
    sl = torch.zeros(2, dtype=torch.int32, device=DEVICE)
    out = attention_decode(torch.randn(2, 2, 0, 16, device=DEVICE), z, z.clone(), sl,
                           backend=backend)
    assert out.shape == (2, 2, 0, 16)
    empty = torch.zeros(2, 2, 0, 16, device=DEVICE)  # Tmax = 0: no key, zeros
    out = attention_decode(torch.randn(2, 2, 1, 16, device=DEVICE), empty, empty.clone(), sl,
                           backend=backend)
    assert out.shape == (2, 2, 1, 16) and (out == 0).all()


# --------------------------------------------------------------------------- cpu backend


def via_op(q, k_cache, v_cache, seqlens, k_new=None, v_new=None, scale=None, strict=False):
    """attention_decode through the torch.library op with the cpu backend (what
    torch.compile and opcheck run), not the direct call of eager mode."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return torch.ops.artrt.attention_decode(q, k_cache, v_cache, seqlens, k_new, v_new, scale,
                                            strict, "cpu")


PATHS = {"direct": lambda *a, **kw: attention_decode(*a, backend="cpu", **kw), "op": via_op,
         "host lengths": lambda *a, **kw: attention_decode(*a, backend="cpu",
                                                           _lengths=a[3].tolist(), **kw)}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("lengths", [[0, 0], [6, 6], [5, 21], [0, 3], [9]])
@pytest.mark.parametrize("tq,t_new", [(1, 1), (1, 0), (3, 3), (7, 7), (3, 0)])
@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("h,hk", [(4, 2), (2, 2)])
def test_cpu_matches_reference_fp64(path, lengths, tq, t_new, strict, h, hk):
    """Equal lengths (one kernel call) and unequal ones (one per sequence), one or several
    queries (more than the keys: rows that see nothing), with and without an append, GQA;
    stale entries past each length (1e4 and NaN) never read; the caches written as the
    reference writes them."""
    b, d, t_max = len(lengths), 5, 32
    q = make_seq(b, h, hk, tq, d, torch.float64, "cpu", seed=tq)[0]
    k_cache, v_cache = empty_cache(b, hk, t_max, d, torch.float64, "cpu")
    k, v = make_seq(b, hk, hk, max(lengths) + t_new, d, torch.float64, "cpu", seed=1)[1:]
    for i, n in enumerate(lengths):
        k_cache[i, :, :n], v_cache[i, :, :n] = k[i, :, :n], v[i, :, :n]
    seqlens = torch.tensor(lengths)
    new = (k[:, :, :t_new].contiguous(), v[:, :, :t_new].contiguous()) if t_new else ()
    kc, vc = k_cache.clone(), v_cache.clone()
    want = attention_decode_ref(q, kc, vc, seqlens, *new, scale=0.4, strict=strict)
    got = PATHS[path](q, k_cache, v_cache, seqlens, *new, scale=0.4, strict=strict)
    assert got.is_contiguous() and torch.isfinite(got).all()
    torch.testing.assert_close(got, want)
    assert torch.equal(k_cache, kc) and torch.equal(v_cache.nan_to_num(), vc.nan_to_num())


@pytest.mark.parametrize("path", [*PATHS, "default"])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("h,hk,strict", [(4, 2, False), (2, 2, True)])
def test_cpu_one_sequence_steps(path, index_dtype, h, hk, strict):
    """One sequence, one position per step (the new keys written at cache_seqlens), queries
    and new keys in other layouts: each step is the matching row of the full causal
    attention, and the cache holds exactly the keys."""
    run = PATHS.get(path, attention_decode)
    d, t, t_max, prefix = 8, 12, 16, 4
    q, k, v = make_seq(1, h, hk, t, d, torch.float64, "cpu")
    full = causal_attention_ref(q, k, v, strict=strict)
    k_cache, v_cache = empty_cache(1, hk, t_max, d, torch.float64, "cpu")
    k_cache[:, :, :prefix], v_cache[:, :, :prefix] = k[:, :, :prefix], v[:, :, :prefix]
    seqlens = torch.tensor([prefix], dtype=index_dtype)
    for i in range(prefix, t):
        out = run(with_layout(q[:, :, i:i + 1], "strided"), k_cache, v_cache, seqlens,
                  with_layout(k[:, :, i:i + 1], "permuted"),
                  with_layout(v[:, :, i:i + 1], "strided"), strict=strict)
        assert out.is_contiguous()
        torch.testing.assert_close(out, full[:, :, i:i + 1])
        seqlens += 1
    assert torch.equal(k_cache[:, :, :t], k) and torch.equal(v_cache[:, :, :t], v)
    assert (k_cache[:, :, t:] == 1e4).all() and v_cache[:, :, t:].isnan().all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cpu_uniform_lengths_low_precision(dtype):
    """The one-call path (equal lengths), with an append, under the tolerance rule."""
    b, h, d, t_max = 3, 4, 32, 150
    q, k_new, v_new = make_seq(b, h, 2, 2, d, dtype, "cpu")
    k_cache, v_cache = (torch.randn(b, 2, t_max, d).to(dtype) for _ in range(2))
    seqlens = torch.tensor([99, 99, 99])
    fp32 = attention_decode_ref(q.float(), k_cache.float(), v_cache.float(), seqlens,
                                k_new.float(), v_new.float())
    lowp = attention_decode_ref(q, k_cache.clone(), v_cache.clone(), seqlens, k_new, v_new)
    for path in PATHS.values():
        got = path(q, k_cache, v_cache, seqlens, k_new, v_new)
        assert got.dtype == dtype
        if dtype == torch.float32:
            torch.testing.assert_close(got, fp32, atol=2e-6, rtol=1e-5)
        else:
            assert_close_lowp(got, lowp, fp32, f"decode {dtype}")


def test_cpu_fallbacks(monkeypatch):
    """No GQA in torch's flash kernel (heads repeated), or no flash kernel (the reference):
    the same outputs and caches."""
    b, h, hk, d, t_max = 2, 4, 1, 8, 20
    q, k_new, v_new = make_seq(b, h, hk, 2, d, torch.float64, "cpu")
    k_cache, v_cache = (torch.randn(b, hk, t_max, d, dtype=torch.float64) for _ in range(2))
    for seqlens in (torch.tensor([4, 4]), torch.tensor([3, 9])):
        want = attention_decode_ref(q, k_cache.clone(), v_cache.clone(), seqlens, k_new, v_new)
        with monkeypatch.context() as m:
            m.setattr(attention_module, "_flash_takes_gqa", lambda: False)
            calls = spy(m, torch.Tensor, "repeat_interleave")
            for path in PATHS.values():
                torch.testing.assert_close(path(q, k_cache.clone(), v_cache.clone(), seqlens,
                                                k_new, v_new), want)
            assert calls
        with monkeypatch.context() as m:
            m.setattr(decode_module, "_FLASH", None)
            for path in PATHS.values():
                torch.testing.assert_close(path(q, k_cache.clone(), v_cache.clone(), seqlens,
                                                k_new, v_new), want)


def test_default_backend_on_cpu_is_cpu(monkeypatch):
    b, h, d, t_max = 2, 2, 16, 10
    q, k, v = make_seq(b, h, h, 1, d, device="cpu")
    k_cache, v_cache = (torch.randn(b, h, t_max, d) for _ in range(2))
    seqlens = torch.tensor([3, 3])
    want = attention_decode_ref(q, k_cache.clone(), v_cache.clone(), seqlens, k, v)
    calls = spy(monkeypatch, decode_module, "_cpu_one_query")  # the cpu backend's Tq = 1 step
    with no_launch(monkeypatch, kdecode, "attention_decode_fwd"):
        torch.testing.assert_close(attention_decode(q, k_cache, v_cache, seqlens, k, v), want)
    assert calls == ["_cpu_one_query"]


def test_forced_backend_is_taken(monkeypatch):
    """ARTRT_BACKEND and use_backend still choose the backend of a call that names none
    (the cpu step runs only where nothing forces another)."""
    b, h, d, t_max = 1, 2, 16, 10
    q, k, v = make_seq(b, h, h, 1, d, device="cpu")
    k_cache, v_cache = (torch.randn(b, h, t_max, d) for _ in range(2))
    seqlens = torch.tensor([3])
    calls = spy(monkeypatch, decode_module, "_cpu_one_query", "attention_decode_ref")
    monkeypatch.setenv("ARTRT_BACKEND", "reference")
    attention_decode(q, k_cache.clone(), v_cache.clone(), seqlens, k, v)
    monkeypatch.setenv("ARTRT_BACKEND", "fastest")
    with pytest.raises(ValueError, match="ARTRT_BACKEND"):
        attention_decode(q, k_cache.clone(), v_cache.clone(), seqlens, k, v)
    monkeypatch.delenv("ARTRT_BACKEND")
    with artrt.use_backend("reference"):
        attention_decode(q, k_cache.clone(), v_cache.clone(), seqlens, k, v)
    assert calls == ["attention_decode_ref"] * 2
    attention_decode(q, k_cache.clone(), v_cache.clone(), seqlens, k, v)
    assert calls[2:] == ["_cpu_one_query"]


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("backend", [None, *BACKENDS])
def test_overflow_leaves_cache_unchanged(backend):
    b, h, d, t_max = 2, 2, 16, 10
    q, k, v = make_seq(b, h, h, 3, d)
    k_cache, v_cache = (torch.randn(b, h, t_max, d, device=DEVICE) for _ in range(2))
    kc, vc = k_cache.clone(), v_cache.clone()
    for seqlens, match in (([7, 8], r"cache overflow: cache_seqlens \+ T_new = 8 \+ 3 > Tmax "
                                    "= 10; nothing was written"),
                           ([2, -1], "cache_seqlens must be >= 0, got -1")):
        with pytest.raises(ValueError, match=match):
            attention_decode(q, k_cache, v_cache, torch.tensor(seqlens, device=DEVICE), k, v,
                             backend=backend)
        assert torch.equal(k_cache, kc) and torch.equal(v_cache, vc)


def _unwritable_cases():
    """(id, how to spoil the caches or arguments of a valid call with T_new = 1, the error
    and its message). ``args`` holds q, k_cache, v_cache, seqlens, k_new, v_new."""

    def expanded(t):  # the first batch element's memory, seen B times: stride 0 in dim 0
        return t[:1].expand_as(t)

    def inference(t):
        with torch.inference_mode():
            return t.clone()

    def swap(i, f):
        return lambda args: [f(a) if j == i else a for j, a in enumerate(args)]

    return [
        ("v_cache expanded", swap(2, expanded), ValueError,
         r"v_cache must be writable in place .* dim 0 has size 2 and stride 0"),
        ("k_cache expanded", swap(1, expanded), ValueError,
         r"k_cache must be writable in place .* dim 0 has size 2 and stride 0"),
        ("v_cache inference tensor", swap(2, inference), ValueError,
         "v_cache is an inference tensor"),
        ("k_cache passed twice", lambda a: [a[0], a[1], a[1], *a[3:]], ValueError,
         "k_cache and v_cache must be separate memory"),
        ("v_new dtype", swap(5, lambda t: t.double()), TypeError, "v_new must be torch.float32"),
        ("v_new shape", swap(5, lambda t: t[:, :1]), ValueError, r"v_new must have shape"),
        ("v_cache dtype", swap(2, lambda t: t.double()), TypeError,
         "v_cache must have q's dtype"),
        ("seqlens overflow", swap(3, lambda t: t + 5), ValueError, "cache overflow"),
        ("seqlens negative", swap(3, lambda t: t - 4), ValueError,
         "cache_seqlens must be >= 0, got -1"),
    ]


@pytest.mark.parametrize("backend", [None, *BACKENDS])
@pytest.mark.parametrize("case", _unwritable_cases(), ids=lambda c: c[0])
def test_bad_argument_leaves_caches_unchanged(backend, case):
    """Every check runs before the append: an error about any argument (v_cache included)
    leaves both caches bitwise unchanged, and names the argument."""
    _, spoil, error, match = case
    b, h, hk, d, t_max = 2, 4, 2, 16, 10
    q, k_new, v_new = make_seq(b, h, hk, 1, d)
    caches = [torch.randn(b, hk, t_max, d, device=DEVICE) for _ in range(2)]
    seqlens = torch.tensor([3, 9], device=DEVICE)
    args = spoil([q, *caches, seqlens, k_new, v_new])
    before = [t.clone() for t in args[1:3]]
    with pytest.raises(error, match=match):
        attention_decode(*args, backend=backend)
    for t, was in zip(args[1:3], before, strict=True):
        assert torch.equal(t.view(torch.int32), was.view(torch.int32))  # bitwise


@pytest.mark.parametrize("backend", BACKENDS)
def test_expanded_cache_without_new_keys(backend):
    """Without new keys nothing is written, so expanded caches (one prefix shared by the
    batch) and one tensor as both caches are accepted."""
    b, h, d, t_max = 3, 4, 16, 10
    q = make_seq(b, h, 2, 2, d)[0]
    shared = [torch.randn(1, 2, t_max, d, device=DEVICE).expand(b, 2, t_max, d)
              for _ in range(2)]
    seqlens = torch.tensor([3, 9, 10], device=DEVICE)
    for k_cache, v_cache in (shared, (shared[0], shared[0])):
        want = attention_decode_ref(q, k_cache.clone(), v_cache.clone(), seqlens)
        got = attention_decode(q, k_cache, v_cache, seqlens, backend=backend)
        torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("backend", kernel_backends())
def test_too_many_heads_leaves_caches_unchanged(backend):
    """The launcher's grid limit is checked before the append."""
    q = torch.randn(65536, 1, 1, 16, device=DEVICE)
    k_cache, v_cache = (torch.zeros(65536, 1, 4, 16, device=DEVICE) for _ in range(2))
    seqlens = torch.zeros(65536, dtype=torch.int32, device=DEVICE)
    with pytest.raises(ValueError, match="at most 65535"):
        attention_decode(q, k_cache, v_cache, seqlens, q + 1, q + 1, backend=backend)
    assert not k_cache.any() and not v_cache.any()


def test_bad_input():
    b, h, d, t_max = 2, 4, 8, 10
    q, k, v = make_seq(b, h, 2, 1, d, device="cpu")
    kc, vc = torch.zeros(b, 2, t_max, d), torch.zeros(b, 2, t_max, d)
    sl = torch.zeros(b, dtype=torch.int32)
    with pytest.raises(ValueError, match=r"q must have shape \(B, H, Tq, D\)"):
        attention_decode(q[0], kc, vc, sl)
    with pytest.raises(ValueError, match="k_cache and v_cache must have one shape"):
        attention_decode(q, kc, vc[:, :1], sl)
    with pytest.raises(TypeError, match="k_cache must have q's dtype"):
        attention_decode(q, kc.double(), vc.double(), sl)
    with pytest.raises(ValueError, match=r"k_cache must have shape \(B, Hk, Tmax, D\)"):
        attention_decode(q, kc[:1], vc[:1], sl)
    with pytest.raises(ValueError, match="multiple of the caches' 3"):
        attention_decode(q, kc.repeat(1, 2, 1, 1)[:, :3], vc.repeat(1, 2, 1, 1)[:, :3], sl)
    with pytest.raises(ValueError, match=r"cache_seqlens must be an int32 or int64 tensor of "
                                         r"shape \(B,\) = \(2,\)"):
        attention_decode(q, kc, vc, sl[:1])
    with pytest.raises(ValueError, match="cache_seqlens must be an int32"):
        attention_decode(q, kc, vc, sl.float())
    with pytest.raises(ValueError, match="both k_new and v_new or neither"):
        attention_decode(q, kc, vc, sl, k)
    with pytest.raises(ValueError, match=r"k_new must have shape \(B, Hk, T_new, D\)"):
        attention_decode(q, kc, vc, sl, k[:, :1], v[:, :1])
    with pytest.raises(TypeError, match="v_new must be torch.float32"):
        attention_decode(q, kc, vc, sl, k, v.half())
    with pytest.raises(ValueError, match="k_new and v_new must have one shape"):
        attention_decode(q, kc, vc, sl, k, torch.cat([v, v], 2))
    with pytest.raises(ValueError, match="scale must be finite"):
        attention_decode(q, kc, vc, sl, scale=float("nan"))
    with pytest.raises(TypeError, match="strict must be a bool"):
        attention_decode(q, kc, vc, sl, strict=None)
    with pytest.raises(ValueError, match=r"head dim D must be in \[1, 128\]"):
        attention_decode(torch.zeros(1, 1, 1, 130), torch.zeros(1, 1, 4, 130),
                         torch.zeros(1, 1, 4, 130), torch.zeros(1, dtype=torch.int32))
    assert (kc == 0).all() and (vc == 0).all()


# --------------------------------------------------------------------------- torch.library


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("with_new", [False, True])
def test_opcheck(backend, with_new):
    b, h, d, t_max = 2, 4, 16, 40
    q, k, v = make_seq(b, h, 2, 2, d)
    kc, vc = (torch.randn(b, 2, t_max, d, device=DEVICE) for _ in range(2))
    sl = torch.tensor([3, 30], device=DEVICE)
    new = (k, v) if with_new else (None, None)
    torch.library.opcheck(torch.ops.artrt.attention_decode.default,
                          (q, kc, vc, sl, *new, 0.25, False, backend))


@pytest.mark.parametrize("backend", [None, *FAST])
def test_torch_compile_fullgraph(backend):
    torch._dynamo.reset()
    b, h, d, t_max = 2, 4, 16, 40
    q, k, v = make_seq(b, h, 2, 1, d)
    sl = torch.tensor([3, 30], device=DEVICE)

    def step(q, k, v, kc, vc, sl):
        return attention_decode(q * 2.0, kc, vc, sl, k, v, backend=backend) + 1.0

    eager_caches = [torch.randn(b, 2, t_max, d, device=DEVICE) for _ in range(2)]
    compiled_caches = [c.clone() for c in eager_caches]
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    want = step(q, k, v, *eager_caches, sl)
    got = compiled(q, k, v, *compiled_caches, sl)
    torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)
    for a, c in zip(compiled_caches, eager_caches, strict=True):
        assert torch.equal(a, c)
    assert torch.equal(eager_caches[0][0, :, 3], k[0, :, 0])  # the append happened


# --------------------------------------------------------------------------- GPU, real shapes


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("h,hk,d", [(32, 8, 128), (16, 16, 64), (8, 1, 32)])
def test_gpu_real_shapes(dtype, h, hk, d):
    b, t_max, tq = 4, 16384, 1
    q = torch.randn(b, h, tq, d, device="cuda").to(dtype)
    k_cache, v_cache = (torch.randn(b, hk, t_max, d, device="cuda").to(dtype)
                        for _ in range(2))
    k_new, v_new = (torch.randn(b, hk, tq, d, device="cuda").to(dtype) for _ in range(2))
    seqlens = torch.tensor([0, 1000, 9999, t_max - tq], device="cuda", dtype=torch.int32)
    kc, vc = k_cache.clone(), v_cache.clone()
    got = attention_decode(q, k_cache, v_cache, seqlens, k_new, v_new, backend="triton")
    fp32 = attention_decode_ref(q.float(), kc.float(), vc.float(), seqlens, k_new.float(),
                                v_new.float())
    lowp = attention_decode_ref(q, kc, vc, seqlens, k_new, v_new)
    assert torch.equal(k_cache, kc) and torch.equal(v_cache, vc)
    if dtype == torch.float32:
        torch.testing.assert_close(got, fp32, atol=1e-5, rtol=1e-5)
    else:
        assert_close_lowp(got, lowp, fp32, f"decode {dtype}")
