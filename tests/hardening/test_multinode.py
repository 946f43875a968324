"""Multi-node on existing engines: two "nodes" (one process each) on localhost, launched with
``torchrun --nnodes 2 --node_rank {0,1} --master_addr 127.0.0.1`` exactly as docs/cluster.md shows,
train one ``medaug fit`` over gloo (both ranks must join, split the data, and rank 0 alone write the
run) and write one bank with ``medaug generate`` (disjoint shards, the same bytes as one process).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_nodes(commands: list[list[str]], cwd: Path, timeout: float = 240) -> list[tuple[int, str]]:
    """Start one process per "node", wait for all; when one fails, stop the others instead of
    letting them wait for it until the timeout. Output goes to files: a full pipe cannot block a node."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "PYTHONIOENCODING": "utf-8"}
    logs = [cwd / f"node{i}.log" for i in range(len(commands))]
    procs = [subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log.open("w", encoding="utf-8"), stderr=subprocess.STDOUT)
             for cmd, log in zip(commands, logs)]
    deadline = time.monotonic() + timeout
    try:
        while any(p.poll() is None for p in procs):
            if any(p.poll() not in (None, 0) for p in procs) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    return [(p.returncode, log.read_text(encoding="utf-8", errors="replace")) for p, log in zip(procs, logs)]


def assert_all_succeeded(results: list[tuple[int, str]]) -> None:
    """Every node's exit code and the end of every node's log: the node that failed first is not
    always rank 0, and the others' codes (-9: stopped by the harness) say which one it was."""
    if any(code != 0 for code, _ in results):
        report = "\n".join(f"--- node {i}: exit code {code}\n{output[-2500:]}"
                           for i, (code, output) in enumerate(results))
        raise AssertionError(report)


def test_two_nodes_one_process_each_train_one_run(tmp_path):
    recipe = {
        "seed_everything": 0,
        "model": {"class_path": "lightning_medaug.generative.vae.VAE",
                  "init_args": {"image_size": 16, "channels": [8, 8], "norm_num_groups": 4, "latent_channels": 2}},
        "data": {"class_path": "lightning_medaug.data.PhantomDataModule",
                 "init_args": {"image_size": 16, "num_train": 32, "num_val": 8, "num_test": 8, "batch_size": 8}},
        "trainer": {"max_epochs": 1, "enable_progress_bar": False, "enable_model_summary": False,
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": "runs", "name": "multinode"}}},
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    port = free_port()
    results = run_nodes([[sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                          "--node_rank", str(node_rank), "--master_addr", "127.0.0.1", "--master_port", str(port),
                          "-m", "lightning_medaug.cli", "fit", "--config", "recipe.yaml",
                          "--trainer.num_nodes", "2", "--trainer.devices", "1", "--trainer.strategy", "ddp",
                          "--trainer.accelerator", "cpu"] for node_rank in (0, 1)], tmp_path)
    assert_all_succeeded(results)
    outputs = [output for _, output in results]
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in outputs[0], outputs[0][-2000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in outputs[1], outputs[1][-2000:]
    run = tmp_path / "runs" / "multinode" / "version_0"
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["fit"]["global_step"] == 2.0  # 32 samples / (2 ranks x batch 8): each rank took half
    assert (run / "generator" / "model.safetensors").is_file()
    assert sorted(p.name for p in (tmp_path / "runs" / "multinode").iterdir()) == ["version_0"]


def test_two_nodes_generate_disjoint_shards_of_one_bank(tmp_path):
    from lightning_medaug.bank import SyntheticBank, write_bank
    from lightning_medaug.registry import create_generator

    model = create_generator("cvae", image_size=16, num_classes=2, channels=(8, 8), norm_num_groups=4,
                             latent_channels=2)
    folder = model.save_pretrained(tmp_path / "model")
    port = free_port()
    results = run_nodes([[sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                          "--node_rank", str(node_rank), "--master_addr", "127.0.0.1", "--master_port", str(port),
                          "-m", "lightning_medaug.cli", "generate", "--model", str(folder), "--num-samples", "70",
                          "--shard-size", "16", "--batch-size", "8", "--out", str(tmp_path / "bank"),
                          "--no-progress"] for node_rank in (0, 1)], tmp_path)
    assert_all_succeeded(results)
    outputs = [output for _, output in results]
    # five shards: node 0 (global rank 0) draws 0, 2, 4 and node 1 draws 1, 3 - no shard twice, none left out
    assert "rank 0 of 2 drew 3 shard(s): [0, 2, 4]" in outputs[0], outputs[0][-2000:]
    assert "rank 1 of 2 drew 2 shard(s): [1, 3]" in outputs[1], outputs[1][-2000:]
    bank = SyntheticBank(tmp_path / "bank")
    assert bank.ids.tolist() == list(range(70))
    write_bank(folder, tmp_path / "single", 70, shard_size=16, batch_size=8, progress=False)  # tests run 1 thread
    one = {p.name: p.read_bytes() for p in sorted((tmp_path / "single" / "shards").glob("*.npy"))}
    two = {p.name: p.read_bytes() for p in sorted((tmp_path / "bank" / "shards").glob("*.npy"))}
    assert len(two) == 5 and two == one  # the number of machines never changes a bank
