"""Fixtures shared by test modules."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """Run single-threaded (the training tests ask for it): on a shared 2-core machine two
    intra-op threads can be 100x slower than one, spinning against other work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
