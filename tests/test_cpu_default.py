"""On CPU tensors, with no backend forced, no Triton kernel runs: every op a model uses picks
its cpu backend (or the reference), never the triton one, which under the interpreter is slow
and on a real CPU machine without a GPU cannot run at all ("0 active drivers"). Each model's
training step, nll and sampling (plain loop and cache) run with every Triton launch made to
raise."""

from __future__ import annotations

import pytest
import torch
from triton.runtime import interpreter, jit

from artrt.models import MODELS
from tests.helpers import DEVICE

pytestmark = pytest.mark.skipif(DEVICE != "cpu", reason="the CPU's default backends")

# the smallest configuration of each model (name -> (shape, levels, overrides))
CASES = {
    "arrnn": ((1, 4, 4), 4, {"hidden": 8}),
    "made": ((1, 4, 4), 2, {"hidden": (16,)}),
    "pixelcnn": ((3, 4, 4), 4, {"channels": 12, "blocks": 2, "head_channels": 12}),
    "pixelcnnpp": ((3, 8, 8), 16, {"channels": 8, "blocks": 1, "stages": 2, "num_mix": 2}),
    "gated_pixelcnn": ((3, 4, 4), 4, {"channels": 6, "layers": 2, "num_classes": 3,
                                          "head_channels": 12}),
    "wavenet": ((1, 16), 8, {"layers": 3, "res_channels": 8, "gate_channels": 8,
                           "skip_channels": 8}),
    "transformer": ((1, 4, 4), 4, {"dim": 16, "heads": 2, "layers": 1}),
    "multiscale": ((1, 4, 4), 4, {"scales": 1, "base_channels": 12, "base_layers": 1,
                                  "channels": 8, "layers": 1}),
}


@pytest.fixture
def no_triton(monkeypatch):
    """Any Triton kernel launch, compiled or interpreted, raises."""
    def refuse(self, *args, **kwargs):
        raise AssertionError(f"a Triton kernel ran on CPU tensors: {self}")

    monkeypatch.setattr(jit.JITFunction, "run", refuse)
    monkeypatch.setattr(interpreter.InterpretedFunction, "run", refuse)


def test_the_guard_catches_a_triton_launch(no_triton):
    from artrt.ops.gated import gated_tanh

    with pytest.raises(AssertionError, match="Triton kernel ran"):
        gated_tanh(torch.randn(2, 4, 3), backend="triton")


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", sorted(MODELS))
def test_models_run_without_triton_on_cpu(name, no_triton):
    assert set(CASES) == set(MODELS)
    model_cls, config_cls = MODELS[name]
    shape, levels, overrides = CASES[name]
    torch.manual_seed(0)
    model = model_cls(config_cls(shape, levels, **overrides))
    classes = getattr(model.config, "num_classes", 0)
    cond = torch.arange(2) % classes if classes else None
    x = torch.randint(0, levels, (2, *shape))
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    loss = model.nll(x, cond).mean()
    loss.backward()
    opt.step()
    with torch.no_grad():
        assert torch.isfinite(model.nll(x, cond)).all()
    gen = torch.Generator().manual_seed(0)
    plain = model.sample(2, cond, cache=False, generator=gen)
    gen = torch.Generator().manual_seed(0)
    cached = model.sample(2, cond, cache=True, generator=gen)
    assert torch.equal(plain, cached)
