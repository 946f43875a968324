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


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
