"""Test-wide settings: the suite's networks are tiny, so one intra-op thread is as fast and
avoids oversubscribing a 2-core machine (also in the subprocesses tests start)."""
import os

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
