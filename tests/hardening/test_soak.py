"""Long runs stream to disk: ``medaug generate`` writes a 100,000-sample bank with flat memory."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lightning_medaug.bank import SyntheticBank
from lightning_medaug.bank.manifest import shard_files
from lightning_medaug.registry import create_generator

REPO = Path(__file__).resolve().parents[2]


def rss_mb(pid: int) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text(encoding="utf-8")
    except OSError:  # the process has ended
        return None
    # a process that has exited but not been reaped (a zombie) has no VmRSS line
    return next((int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmRSS:")), None)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads resident memory from /proc")
def test_generate_100k_samples_with_flat_memory(tmp_path):
    model = create_generator("cvae", image_size=16, num_classes=2, channels=(8, 8), norm_num_groups=4,
                             latent_channels=2)
    folder = model.save_pretrained(tmp_path / "model")
    total, shard = 100_000, 2_000
    cmd = [sys.executable, "-m", "lightning_medaug.cli", "generate", "--model", str(folder), "--num-samples",
           str(total), "--shard-size", str(shard), "--batch-size", "250", "--dtype", "uint8", "--out",
           str(tmp_path / "bank"), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            encoding="utf-8", errors="replace")
    readings, deadline = [], time.monotonic() + 300  # (shards on disk, resident MB)
    try:
        while proc.poll() is None:
            assert time.monotonic() < deadline, "generation took over 5 minutes"
            rss = rss_mb(proc.pid)
            if rss is not None and not (tmp_path / "bank" / "manifest.csv").exists():  # still generating
                readings.append((sum(shard_files(tmp_path / "bank", k).manifest.exists() for k in range(50)), rss))
            time.sleep(0.05)
        output = proc.communicate()[0]
    finally:
        proc.kill()
    assert proc.returncode == 0, output[-2000:]
    # imports, model and buffers are in place once 5 shards (10%) are on disk: compare what follows
    early = [mb for done, mb in readings if 5 <= done < 15]
    late = [mb for done, mb in readings if done >= 40]
    assert len(early) >= 5 and len(late) >= 5, f"too few memory readings: {len(early)}, {len(late)}"
    # Flat: keeping the samples in memory would add ~25 MB of uint8 pixels (100 MB as float32) plus
    # manifest rows over the last 90% of the bank; the allocator alone moves RSS by tens of MB.
    growth = statistics.median(late) - statistics.median(early)
    assert growth < 15, (statistics.median(early), statistics.median(late))
    assert max(mb for _, mb in readings if _ >= 5) - statistics.median(early) < 80
    bank = SyntheticBank(tmp_path / "bank")
    assert len(bank) == total and bank.ids[-1] == total - 1
    assert bank[total - 1]["image"].shape == (1, 16, 16)
