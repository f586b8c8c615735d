"""No op synchronises with the host while a CUDA graph is being captured.

A host read (``.item()``, ``.tolist()``, ``bool(tensor)``, ``torch.equal``) inside a captured
region breaks the capture. The ops' value checks read values on the host, so they are
skipped under capture (``artrt.ops._checks.capturing``); everything else in the dispatch
code must not read values at all. Without a GPU this is checked on the CPU: capture is
reported as active and every host read raises, then each op runs on its kernel backend (the
Triton interpreter here, the code path a GPU takes) with valid arguments.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from artrt.ops import _checks
from tests.helpers import kernel_backends
from tests.test_fuzz import OPS

pytestmark = pytest.mark.skipif("triton" not in kernel_backends("cpu"),
                                reason="the Triton interpreter is off")


class HostSync(AssertionError):
    pass


@contextlib.contextmanager
def capture_reported(monkeypatch):
    """Inside: capture reported active, and every host read of a tensor raises HostSync."""

    def sync(*args, **kwargs):
        raise HostSync("a host read of a tensor while a CUDA graph is captured")

    with monkeypatch.context() as m:
        # what _checks.capturing() asks: a CUDA stream that is capturing
        m.setattr(torch.cuda, "is_available", lambda: True)
        m.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
        for name in ("item", "tolist", "__bool__", "__int__", "__float__", "__index__"):
            m.setattr(torch.Tensor, name, sync)
        m.setattr(torch, "equal", sync)
        yield


@pytest.mark.parametrize("op", list(OPS))
def test_no_host_read_under_capture(op, monkeypatch):
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=10, deadline=None, derandomize=True, database=None)
    @given(data=st.data(), seed=st.integers(0, 2 ** 16))
    def run(data, seed):
        call = OPS[op](data.draw, torch.Generator().manual_seed(seed))
        args = {k: v.clone() if isinstance(v, torch.Tensor) else v
                for k, v in call.args.items()}
        with capture_reported(monkeypatch):
            with torch.no_grad():
                call.fn(**args, backend="triton")

    run()


def test_harness(monkeypatch):
    """Inside the harness capture is seen as active and a host read raises."""
    with capture_reported(monkeypatch):
        assert _checks.capturing()
        with pytest.raises(HostSync):
            torch.ones(1).item()
    assert not _checks.capturing() or torch.cuda.is_available()
