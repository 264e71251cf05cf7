from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _two_threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="module")
def one_thread():
    """For modules of tiny models: they gain nothing from threads, and on a busy 2-core
    machine two OpenMP threads per process make each run many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
