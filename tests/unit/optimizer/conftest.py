"""Shared fixtures of the optimizer tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # Eigendecompositions, QR and matmuls on tiny matrices (Shampoo, SOAP, Sophia) are tens of
    # times slower with two contending OpenMP threads.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
