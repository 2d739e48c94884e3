"""Fixtures shared by test modules in several folders (a module opts in with pytest.mark.usefixtures)."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def one_torch_thread():
    """The module's torch oracles run in one torch thread: on a busy machine OpenMP's threads spin-wait on each
    other (measured on 2 shared cores: LR-ASPP's export and GradCAM 1 s with one thread, 5 to 17 s with two)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
