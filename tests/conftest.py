"""Test set-up: Triton under the interpreter when there is no GPU, and the ``gpu`` marker.

TRITON_INTERPRET must be set before ``artrt.kernels`` is imported (Triton picks compiled or
interpreted at decoration time), so this runs before any test module imports artrt.
"""

import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

# An explicit ARTRT_BACKEND in the caller's environment would change what "auto" means in
# every test; tests that exercise it set it themselves.
os.environ.pop("ARTRT_BACKEND", None)


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU; skipped without one")


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
