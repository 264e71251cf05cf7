from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _two_threads():
    torch.set_num_threads(2)
