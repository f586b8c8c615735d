"""Checks shared by the op tests in tests/ops (a plain module, not a test file): which kernel
launchers an op reaches, with no backend forced on CPU and in the backward of a forward run
under a forced backend."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from types import ModuleType

import pytest
import torch

from artrt import backends
from tests.helpers import kernel_backends


@contextlib.contextmanager
def no_launch(monkeypatch, kernels: ModuleType, *launchers: str) -> Iterator[None]:
    """Inside the block, none of the launchers ``kernels.<name>`` is called (each is replaced
    by a stub that records the call)."""
    calls = []
    for name in launchers:
        monkeypatch.setattr(kernels, name, lambda *a, **k: calls.append(1))
    yield
    assert calls == []


def assert_backward_uses_forward_backend(monkeypatch, kernels: ModuleType, launcher: str,
                                         forward: Callable[[], torch.Tensor]) -> None:
    """``forward()`` runs under the triton backend; the backward of its output, run outside
    that block, calls the triton backward launcher ``kernels.<launcher>`` exactly once."""
    if "triton" not in kernel_backends():
        pytest.skip("triton cannot run here")
    calls = []
    real = getattr(kernels, launcher)
    monkeypatch.setattr(kernels, launcher, lambda *a: calls.append(1) or real(*a))
    with backends.use_backend("triton"):
        out = forward()
    out.sum().backward()
    assert calls == [1]
