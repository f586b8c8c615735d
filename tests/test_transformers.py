"""artrt as a transformers attention implementation (artrt.integrations.transformers).

Models are built from small configs (no downloads), once with attn_implementation="eager" and
once with "artrt" on the same weights (each with its own config object: from_config writes
the implementation into the config it is given). Logits and gradients equal eager to 1e-5 in
fp32, with and without a KV cache (generate, one step, a chunk of steps), for GPT-2 and a
Llama with grouped-query heads; the profiler sees the artrt ops run. Masks artrt does not
cover (padding, a sliding window shorter than the sequence, an additive bias), dropout,
output_attentions and non-causal modules are refused with a ValueError. ImageGPT, which has
its own attention code, is covered by artrt.patch instead: logits, gradients, generate(),
checkpoints and unpatch against the unpatched model. Skipped without transformers
(pip install -e ".[hf]")."""

from __future__ import annotations

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")

from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
)

import artrt  # noqa: E402
from artrt.integrations.transformers import attention_forward, register  # noqa: E402

VOCAB, T = 50, 12
TOKENS = dict(vocab_size=VOCAB, bos_token_id=0, eos_token_id=0, pad_token_id=0)


@pytest.fixture(scope="module", autouse=True)
def _registered():
    register()


def gpt2_config(**kw):
    return GPT2Config(n_layer=2, n_head=4, n_embd=32, n_positions=32, **TOKENS, **kw)


def llama_config(**kw):
    return LlamaConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=64,
                       num_attention_heads=4, num_key_value_heads=2,
                       max_position_embeddings=32, **TOKENS, **kw)


def pair(config):
    """(eager model, artrt model) on the same weights, in eval mode."""
    torch.manual_seed(0)
    eager = AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation="eager")
    fast = AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation="artrt")
    fast.load_state_dict(eager.state_dict())
    assert (eager.config._attn_implementation, fast.config._attn_implementation) == (
        "eager", "artrt")
    return eager.eval(), fast.eval()


def tokens(b=2, t=T, seed=1):
    return torch.randint(0, VOCAB, (b, t), generator=torch.Generator().manual_seed(seed))


def close(got, want):
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def artrt_ops(fn) -> set[str]:
    """The artrt:: ops the profiler records while fn() runs (reference backend: through the
    torch.library ops, as on a GPU)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof, \
            artrt.use_backend("reference"):
        fn()
    return {e.key for e in prof.key_averages() if e.key.startswith("artrt::")}


def test_registered():
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    register()  # twice is fine
    assert AttentionInterface()["artrt"] is attention_forward
    assert "artrt" in AttentionMaskInterface()


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("make", [gpt2_config, llama_config], ids=["gpt2", "llama-gqa"])
def test_logits_and_grads_equal_eager(make, backend):
    eager, fast = pair(make())
    ids = tokens()
    with artrt.use_backend(backend):
        got = fast(ids, labels=ids)
        got.loss.backward()
    want = eager(ids, labels=ids)
    want.loss.backward()
    close(got.logits, want.logits)
    grads = {n: p.grad for n, p in fast.named_parameters()}
    for n, p in eager.named_parameters():
        close(grads[n], p.grad)


@pytest.mark.parametrize("make", [gpt2_config, llama_config], ids=["gpt2", "llama-gqa"])
def test_kv_cache_equals_eager(make):
    """Prefill 6 positions, one step, then a chunk of 3 (a materialised prefix mask), against
    the eager logits of the whole sequence; and generate()."""
    eager, fast = pair(make())
    ids = tokens()
    with torch.no_grad():
        want = eager(ids).logits
        out = fast(ids[:, :6], use_cache=True)
        close(out.logits, want[:, :6])
        out = fast(ids[:, 6:7], cache=out.past_key_values, use_cache=True)
        close(out.logits, want[:, 6:7])
        out = fast(ids[:, 7:10], cache=out.past_key_values, use_cache=True)
        close(out.logits, want[:, 7:10])
    kw = dict(max_new_tokens=5, do_sample=False, output_logits=True,
              return_dict_in_generate=True)
    got, ref = fast.generate(ids[:1, :4], **kw), eager.generate(ids[:1, :4], **kw)
    assert torch.equal(got.sequences, ref.sequences)
    close(torch.stack(got.logits), torch.stack(ref.logits))


def test_static_cache_prefill_and_decode():
    from transformers.cache_utils import StaticCache

    eager, fast = pair(gpt2_config())
    ids = tokens(b=1)
    with torch.no_grad():
        want = eager(ids).logits
        cache = StaticCache(config=fast.config, max_cache_len=16)
        close(fast(ids[:, :6], cache=cache, use_cache=True).logits, want[:, :6])
        close(fast(ids[:, 6:7], cache=cache, use_cache=True).logits, want[:, 6:7])


def test_profiler_shows_artrt_ops():
    _, fast = pair(gpt2_config())
    ids = tokens()
    ran = artrt_ops(lambda: fast(ids, labels=ids).loss.backward())
    assert {"artrt::causal_attention", "artrt::causal_attention_backward"} <= ran
    with torch.no_grad():
        cache = fast(ids[:, :6], use_cache=True).past_key_values
        ran = artrt_ops(lambda: fast(ids[:, 6:7], cache=cache, use_cache=True))
    assert ran == {"artrt::attention_decode"}


@pytest.mark.parametrize("where", ["left", "right", "all-right"])
def test_padded_batch_refused(where):
    _, fast = pair(gpt2_config())
    ids, mask = tokens(), torch.ones(2, T, dtype=torch.long)
    if where == "left":
        mask[1, :3] = 0
    elif where == "right":
        mask[1, -3:] = 0
    else:
        mask[:, -2:] = 0
    with pytest.raises(ValueError, match=r'attn_implementation="artrt".*padd'):
        fast(ids, attention_mask=mask)


def test_all_ones_mask_accepted():
    eager, fast = pair(gpt2_config())
    ids, mask = tokens(), torch.ones(2, T, dtype=torch.long)
    with torch.no_grad():
        close(fast(ids, attention_mask=mask).logits, eager(ids, attention_mask=mask).logits)


def test_sliding_window():
    """A window shorter than the sequence is refused; one at least as long changes nothing."""
    config = MistralConfig(num_hidden_layers=1, hidden_size=32, intermediate_size=32,
                           num_attention_heads=2, num_key_value_heads=1,
                           max_position_embeddings=32, sliding_window=4, **TOKENS)
    eager, fast = pair(config)
    with pytest.raises(ValueError, match="sliding window"):
        fast(tokens(t=8))
    with torch.no_grad():
        close(fast(tokens(t=4)).logits, eager(tokens(t=4)).logits)


def test_dropout_and_output_attentions_refused():
    _, fast = pair(gpt2_config())
    with pytest.raises(ValueError, match="output_attentions"):
        fast(tokens(), output_attentions=True)
    fast.train()  # attn_pdrop 0.1
    with pytest.raises(ValueError, match="dropout 0.1"):
        fast(tokens())
    fast.config.attn_pdrop = 0.0
    for m in fast.modules():
        if hasattr(m, "attn_dropout"):
            m.attn_dropout.p = 0.0
    fast(tokens())


# --------------------------------------------------------------------------- the function

class Layer(torch.nn.Module):
    def __init__(self, is_causal=True):
        super().__init__()
        self.is_causal = is_causal


def masked_softmax_attention(q, k, v, visible, scale):
    """(B, Tq, H, D): softmax(q k^T * scale) v over the visible (Tq, Tk) keys."""
    k = k.repeat_interleave(q.shape[1] // k.shape[1], 1)
    v = v.repeat_interleave(q.shape[1] // v.shape[1], 1)
    s = (q @ k.transpose(-1, -2) * scale).masked_fill(~visible, float("-inf"))
    return (s.softmax(-1) @ v).transpose(1, 2)


def qkv(tq, tk, h=4, hk=2, d=8, grad=False):
    g = torch.Generator().manual_seed(3)
    return [torch.randn(2, n, t, d, generator=g, requires_grad=grad)
            for n, t in ((h, tq), (hk, tk), (hk, tk))]


@pytest.mark.parametrize("grad", [False, True], ids=["decode", "grad"])
@pytest.mark.parametrize("kind", ["bool", "float"])
def test_prefix_mask_bottom_right(kind, grad):
    """3 queries after 4 cached keys, 2 unused slots after them (a static cache)."""
    q, k, v = qkv(3, 9, grad=grad)
    visible = torch.arange(9) <= torch.arange(4, 7)[:, None]  # (3, 9): keys 0..4+t
    mask = visible[None, None].expand(2, 1, 3, 9)
    if kind == "float":
        mask = torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)
    out, weights = attention_forward(Layer(), q, k, v, mask, scaling=0.3)
    assert weights is None and out.shape == (2, 3, 4, 8) and out.is_contiguous()
    want = masked_softmax_attention(q, k, v, visible, 0.3)
    close(out, want)
    if grad:
        got_grads = torch.autograd.grad(out.sum(), (q, k, v))
        for g, w in zip(got_grads, torch.autograd.grad(want.sum(), (q, k, v)), strict=True):
            close(g, w)


def test_no_mask_alignments():
    """Without a mask: Tq = Tk causal, Tq = 1 sees every key, 1 < Tq < Tk the first Tq keys
    (an empty static cache being filled, as transformers' SDPA path reads it)."""
    for tq, tk, visible in [(5, 5, torch.ones(5, 5, dtype=torch.bool).tril()),
                            (1, 7, torch.ones(1, 7, dtype=torch.bool)),
                            (3, 8, torch.arange(8) <= torch.arange(3)[:, None])]:
        q, k, v = qkv(tq, tk)
        close(attention_forward(Layer(), q, k, v, None)[0],
              masked_softmax_attention(q, k, v, visible, 8 ** -0.5))


def test_function_refusals():
    q, k, v = qkv(4, 4)
    causal = torch.ones(4, 4, dtype=torch.bool).tril()[None, None]
    with pytest.raises(ValueError, match="not causal attention"):
        attention_forward(Layer(is_causal=False), q, k, v, None)
    with pytest.raises(ValueError, match="not causal attention"):
        attention_forward(Layer(), q, k, v, None, is_causal=False)
    with pytest.raises(ValueError, match="additive bias"):
        bias = torch.zeros(1, 1, 4, 4).masked_fill(~causal, float("-inf")) - 0.5
        attention_forward(Layer(), q, k, v, bias)
    with pytest.raises(ValueError, match=r"query 0 \(position 0\) sees key 1, a later position"):
        attention_forward(Layer(), q, k, v, torch.ones(1, 1, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="shape"):
        attention_forward(Layer(), q, k, v, causal[..., :3])
    with pytest.raises(ValueError, match="softcap"):
        attention_forward(Layer(), q, k, v, None, softcap=30.0)
    with pytest.raises(ValueError, match="exceeds key length"):
        attention_forward(Layer(), *qkv(4, 2), None)


# --------------------------------------------------------------------------- ImageGPT

def imagegpt(**kw):
    """A small ImageGPT (its own attention code: Conv1D projections, layer_past, a tuple
    output); dropout 0 unless given (artrt.patch leaves attention with dropout alone)."""
    from transformers import ImageGPTConfig, ImageGPTForCausalImageModeling

    torch.manual_seed(0)
    kw = dict(dict(attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0), **kw)
    return ImageGPTForCausalImageModeling(ImageGPTConfig(
        n_layer=2, n_head=4, n_embd=32, vocab_size=17, n_positions=16, **kw)).eval()


def pixels(b=2, t=16, seed=1):
    return torch.randint(0, 16, (b, t), generator=torch.Generator().manual_seed(seed))


def test_imagegpt_patched():
    from transformers.models.imagegpt.modeling_imagegpt import ImageGPTAttention

    model = imagegpt()
    reference = copy.deepcopy(model)
    ids = pixels()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = artrt.patch(model)
    assert [(r.path, r.old_type, r.detail) for r in report.replaced] == [
        (f"transformer.h.{i}.attn", ImageGPTAttention, "causal, 4 heads, KV cache (layer_past)")
        for i in range(2)], str(report)
    assert report.left_alone == []
    attn = model.transformer.h[1].attn
    assert isinstance(attn, artrt.nn.CausalSelfAttention) and attn.layer_idx == 1
    original = vars(attn)["_artrt_patch"].original
    assert attn.qkv.weight is original.c_attn.weight  # the Conv1D Parameter, (C, 3C)

    with torch.no_grad():
        want = reference(ids).logits
        close(model(ids).logits, want)  # use_cache=True by default: a DynamicCache is filled
        close(model(ids, use_cache=False).logits, want)
    assert "artrt::causal_attention" in artrt_ops(lambda: model(ids))

    # training: gradients on the Conv1D Parameters by their original names
    model.train(), reference.train()
    model(ids, labels=ids).loss.backward()
    reference(ids, labels=ids).loss.backward()
    grads = {k: p.grad for k, p in model.state_dict(keep_vars=True).items()
             if isinstance(p, torch.nn.Parameter)}
    for k, p in reference.state_dict(keep_vars=True).items():
        if isinstance(p, torch.nn.Parameter):
            close(grads[k], p.grad)
    model.eval(), reference.eval()

    # state_dict: same keys, order and values; checkpoints load both ways
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)
    moved = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v
             for k, v in before.items()}
    model.load_state_dict(moved)
    reference.load_state_dict(moved)
    fresh = imagegpt()
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        want = reference(ids).logits
        close(model(ids).logits, want)
        close(fresh(ids).logits, want)

    assert artrt.unpatch(model) == 2
    assert all(type(block.attn) is ImageGPTAttention for block in model.transformer.h)
    with torch.no_grad():
        close(model(ids).logits, want)


def test_imagegpt_patched_generates_through_its_cache():
    model = imagegpt()
    reference = copy.deepcopy(model)
    artrt.patch(model)
    ids = pixels()
    kw = dict(max_new_tokens=6, do_sample=False, output_logits=True,
              return_dict_in_generate=True)
    got, want = model.generate(ids[:, :5], **kw), reference.generate(ids[:, :5], **kw)
    assert torch.equal(got.sequences, want.sequences)
    close(torch.stack(got.logits), torch.stack(want.logits))
    with torch.no_grad():
        cache = model(ids[:, :6]).past_key_values
        ran = artrt_ops(lambda: model(ids[:, 6:7], cache=cache))
    assert ran == {"artrt::attention_decode"}


def test_imagegpt_patched_refuses_what_artrt_does_not_compute():
    model = imagegpt()
    artrt.patch(model)
    ids, mask = pixels(), torch.ones(2, 16, dtype=torch.long)
    mask[1, :3] = 0
    with pytest.raises(ValueError, match=r"the ImageGPTAttention at 'transformer.h.0.attn' .*"
                                         r"attention_mask=None only; got attention_mask=a "
                                         r"torch.float32 tensor of shape \(2, 1, 16, 16\)"):
        model(ids, attention_mask=mask)
    with pytest.raises(ValueError, match="output_attentions=False only; got "
                                         "output_attentions=True"):
        model(ids, output_attentions=True)
    with torch.no_grad():  # an all-ones mask is no mask: transformers passes None
        model(ids, attention_mask=torch.ones(2, 16, dtype=torch.long))


def test_imagegpt_with_attention_dropout_left_alone():
    """ImageGPTConfig's default attn_pdrop / resid_pdrop of 0.1: left alone, even in eval
    mode (the replacement has no dropout, and training would silently lose it)."""
    model = imagegpt(attn_pdrop=0.1, resid_pdrop=0.1)
    report = artrt.patch(model)
    assert report.replaced == [] and len(report.left_alone) == 2
    assert all("dropout p=0.1" in r.reason for r in report.left_alone)
