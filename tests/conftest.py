"""Suite-wide settings."""

from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_thread_per_process():
    """Tests are small and often run several processes (DDP, CLI) on a 2-core machine, where
    intra-op threads oversubscribe the cores and slow small kernels many times over."""
    previous = torch.get_num_threads()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
