"""The same user project under DDP with 2 processes (gloo): shares are disjoint and cover the mixed epoch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conformance_testing import SOURCES

HERE = Path(__file__).parent


@pytest.mark.parametrize("source", SOURCES)
def test_ddp_two_processes(source, generators, banks, tmp_path):
    if source == "bank":
        path = banks("2d16")
    else:
        path = str(tmp_path / "generator")
        generators("2d16").save_pretrained(path)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, str(HERE / "ddp_project.py"), str(tmp_path), source, path],
                          capture_output=True, encoding="utf-8", errors="replace", timeout=300, env=env,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    shares = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert len(shares[0]) == len(shares[1]) == 40  # 40 real + 40 synthetic, half on each rank
    assert not set(shares[0]) & set(shares[1])  # no image on both ranks
    assert len(set(shares[0]) | set(shares[1])) == 80
