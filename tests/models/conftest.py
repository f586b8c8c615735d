"""The model tests' shared fixture (the checks themselves are in tests/models/common.py)."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: one CPU thread is much faster than several on a shared, loaded
    machine (intra-op threads of small convolutions spin against each other)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
