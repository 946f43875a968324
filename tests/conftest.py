"""Shared test set-up: small, deterministic, offline."""

import os

# wandb never reaches the network from tests.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("PYTHONHASHSEED", "0")

import pytest
import torch

# Test models are tiny: one thread per process is as fast as two, and DDP tests start two
# processes on two cores, where more threads would only spin against each other.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("PYTHONIOENCODING", "utf-8")
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module, then the count it had. Tiny tensors only gain
    synchronisation from more threads (very slow on a loaded CPU), and shards written by the bank
    are bit-identical at a fixed thread count. Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
