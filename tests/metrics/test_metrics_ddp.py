"""Fidelity and paired metrics under 2-process DDP (gloo) equal the single-process values."""

import json
import socket
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent('''
    import json, os, sys
    import torch
    import torch.distributed as dist
    import torch.multiprocessing as mp

    from lightning_medaug.data import make_phantoms
    from torch import nn

    from lightning_medaug.metrics import FrechetDistance, KernelDistance, PairedImageMetrics, PrecisionRecall

    OUT, PORT = sys.argv[1], sys.argv[2]
    REAL_SPLIT, FAKE_SPLIT = (0, 37, 64), (0, 20, 48)  # uneven shares per process

    def metrics(extractor, **kwargs):
        return {"fd": FrechetDistance(extractor, num_features=32, **kwargs),
                "kid": KernelDistance(extractor, 6, 16, **kwargs),
                "pr": PrecisionRecall(extractor, k=3, chunk_size=10, **kwargs),
                "paired": PairedImageMetrics(sigma=0.5, **kwargs)}

    def feed(ms, real, fake, ranks):
        for r in ranks:
            part_real = real[REAL_SPLIT[r]:REAL_SPLIT[r + 1]]
            part_fake = fake[FAKE_SPLIT[r]:FAKE_SPLIT[r + 1]]
            for name in ("fd", "kid", "pr"):
                ms[name].update(part_real, real=True)
                ms[name].update(part_fake, real=False)
            ms["paired"].update(part_fake, real[FAKE_SPLIT[r]:FAKE_SPLIT[r + 1]])

    def values(ms):
        kid_mean, kid_std = ms["kid"].compute()
        out = {"fd": float(ms["fd"].compute()), "kid_mean": float(kid_mean), "kid_std": float(kid_std)}
        out.update({k: float(v) for k, v in ms["pr"].compute().items()})
        out.update({k: float(v) for k, v in ms["paired"].compute().items()})
        return out

    def worker(rank):
        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{PORT}", rank=rank, world_size=2)
        torch.manual_seed(0)  # identical extractor weights in both processes
        extractor = nn.Sequential(nn.Conv2d(1, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
        real, _, _ = make_phantoms(64, 2, 16, seed=0)
        fake, _, _ = make_phantoms(48, 2, 16, seed=1)
        fake = (fake * 0.8).clamp(-1, 1)
        ddp = metrics(extractor)
        feed(ddp, real, fake, [rank])
        result = {"ddp": values(ddp)}
        local = metrics(extractor, sync_on_compute=False)
        feed(local, real, fake, [rank])
        result["local"] = values(local)
        if rank == 0:
            single = metrics(extractor, sync_on_compute=False)
            feed(single, real, fake, [0, 1])  # the same batches, all in one process
            result["single"] = values(single)
        with open(os.path.join(OUT, f"rank{rank}.json"), "w") as f:
            json.dump(result, f)
        dist.barrier()
        dist.destroy_process_group()

    if __name__ == "__main__":
        # fork: the workers inherit the imported modules instead of importing them again
        mp.start_processes(worker, nprocs=2, start_method="fork")
''')


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_values_equal_single_process_values(tmp_path):
    script = tmp_path / "ddp_metrics.py"
    script.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path), str(_free_port())], capture_output=True,
                          text=True, encoding="utf-8", errors="replace", timeout=240, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0 = json.loads((tmp_path / "rank0.json").read_text(encoding="utf-8"))
    rank1 = json.loads((tmp_path / "rank1.json").read_text(encoding="utf-8"))
    single = rank0["single"]
    assert set(single) == {"fd", "kid_mean", "kid_std", "precision", "recall", "density", "coverage", "psnr", "ssim"}
    for ddp in (rank0["ddp"], rank1["ddp"]):
        assert ddp == pytest.approx(single, rel=1e-6, abs=1e-9)
    # The local halves alone give other values, so the agreement above comes from the sync.
    assert rank0["local"]["fd"] != pytest.approx(single["fd"], rel=1e-3)
    assert rank1["local"]["fd"] != pytest.approx(single["fd"], rel=1e-3)
