"""`medaug generate`: the command line, a real kill and resume, and torchrun with two ranks."""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import yaml

from lightning_medaug.bank import SyntheticBank, write_bank
from lightning_medaug.bank.manifest import read_manifest_columns, shard_complete, shard_files
from lightning_medaug.cli import main as cli_main
from lightning_medaug.registry import create_generator

ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}  # shards are bit-identical at a fixed thread count


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = create_generator("cvae", image_size=16, num_classes=2, channels=(8, 8), norm_num_groups=4,
                             latent_channels=2)
    return model.save_pretrained(tmp_path_factory.mktemp("cvae") / "model")


def shard_bytes(root) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((root / "shards").glob("*.npy"))}


def test_cli_writes_a_proportional_bank_and_reports_errors(model_dir, tmp_path, capsys):
    args = ["generate", "--model", str(model_dir), "--num-samples", "50", "--labels", "proportional",
            "--proportions", "0:0.26,1:0.74", "--shard-size", "32", "--batch-size", "25", "--dtype", "uint8",
            "--out", str(tmp_path / "bank"), "--no-progress"]
    assert cli_main(args) == 0
    assert "wrote 2 of 2 shards" in capsys.readouterr().out
    bank = SyntheticBank(tmp_path / "bank")
    assert bank.class_counts().tolist() == [13, 37] and bank.info["settings"]["dtype"] == "uint8"
    assert cli_main(args) == 0
    assert "is complete" in capsys.readouterr().out
    assert cli_main([*args[:-3], "--seed", "5", *args[-3:]]) == 2
    assert "already holds a bank written with other settings" in capsys.readouterr().err
    assert cli_main(["generate", "--model", str(model_dir), "--num-samples", "4", "--steps", "20",
                     "--out", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err
    assert "--steps does not apply" in err and len(err.strip().splitlines()) == 1
    assert cli_main(["generate", "--num-samples", "4", "--out", str(tmp_path / "x")]) == 2
    assert "--model" in capsys.readouterr().err
    # more than any machine can hold: one line saying what to lower, exit code 1, no bank folder
    assert cli_main(["generate", "--model", str(model_dir), "--num-samples", str(10**15),
                     "--out", str(tmp_path / "huge"), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("medaug: error: out of memory (") and "PiB" in err[0], err
    assert "--batch-size" in err[0] and "--num-samples" in err[0]
    assert not (tmp_path / "huge").exists()


def test_cli_reads_its_options_from_a_config_file(model_dir, tmp_path, capsys):
    """`--config` holds any option, spelled as on the command line or with underscores; later options win."""
    config = tmp_path / "generate.yaml"
    config.write_text(yaml.safe_dump({"model": str(model_dir), "num-samples": 6, "labels": "0:2,1:4",
                                      "shard_size": 4, "dtype": "uint8", "no-progress": True}), encoding="utf-8")
    assert cli_main(["generate", "--config", str(config), "--dtype", "float32", "--out", str(tmp_path / "bank")]) == 0
    assert "wrote 2 of 2 shards" in capsys.readouterr().out
    bank = SyntheticBank(tmp_path / "bank")
    assert bank.class_counts().tolist() == [2, 4]
    assert (bank.info["settings"]["shard_size"], bank.info["settings"]["dtype"]) == (4, "float32")
    config.write_text("model: [not, a, path]\n", encoding="utf-8")  # a mistake in the file: one line, exit 2
    assert cli_main(["generate", "--config", str(config), "--out", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model" in err[0] and "medaug generate --help" in err[0], err


def test_cli_passes_sampler_options_to_models_that_take_them(tmp_path, capsys):
    from lightning_medaug.generative.diffusion import DDPM

    torch.manual_seed(0)
    DDPM(image_size=16, num_classes=2, channels=(8, 8), norm_num_groups=4, num_train_timesteps=10,
         num_inference_steps=3).save_pretrained(tmp_path / "ddpm")
    args = ["generate", "--model", str(tmp_path / "ddpm"), "--num-samples", "4", "--sampler", "ddim", "--steps", "2",
            "--guidance-scale", "1.5", "--out", str(tmp_path / "bank"), "--no-progress"]
    assert cli_main(args) == 0
    bank = SyntheticBank(tmp_path / "bank")
    assert bank.info["settings"]["sample_kwargs"] == {"sampler": "ddim", "num_inference_steps": 2,
                                                      "guidance_scale": 1.5}
    row = (tmp_path / "bank" / "manifest.csv").read_text(encoding="utf-8").splitlines()[1].split(",")
    assert row[5:7] == ["ddpm", "lightning_medaug.generative.diffusion.DDPM"] and row[9:12] == ["ddim", "2", "1.5"]
    assert cli_main([*args[:8], "3", *args[9:]]) == 2  # other step count: another bank
    assert "sample_kwargs" in capsys.readouterr().err


def test_cli_reads_a_mask_folder(tmp_path):
    torch.manual_seed(0)
    create_generator("pix2pix", image_size=16, generator_channels=8, generator_levels=2,
                     discriminator_channels=8).save_pretrained(tmp_path / "p2p")
    (tmp_path / "masks").mkdir()
    expected = []
    for i in range(2):
        mask = np.zeros((16, 16), dtype=np.uint8)
        mask[2 + 4 * i:10 + 4 * i, 4:12] = 255
        sitk.WriteImage(sitk.GetImageFromArray(mask), str(tmp_path / "masks" / f"case{i}.png"))
        expected.append(torch.from_numpy(mask[None] > 0).float())
    assert cli_main(["generate", "--model", str(tmp_path / "p2p"), "--num-samples", "5", "--masks",
                     str(tmp_path / "masks"), "--shard-size", "4", "--out", str(tmp_path / "bank"),
                     "--no-progress"]) == 0
    bank = SyntheticBank(tmp_path / "bank")
    assert bank.has_masks and all(torch.equal(bank[i]["mask"], expected[i % 2]) for i in range(5))
    assert "case1.png" in (tmp_path / "bank" / "manifest.csv").read_text(encoding="utf-8")


def _generate_one_thread(args: list[str]) -> None:
    torch.set_num_threads(1)
    sys.exit(cli_main(args))


def test_killed_run_resumes_without_duplicates_or_gaps(model_dir, tmp_path):
    bank, total = tmp_path / "bank", 12
    args = ["generate", "--model", str(model_dir), "--num-samples", str(4 * total), "--shard-size", "4",
            "--batch-size", "1", "--out", str(bank), "--no-progress"]
    # A forked child (like a DataLoader worker) runs the real command without re-importing the stack.
    proc = multiprocessing.get_context("fork").Process(target=_generate_one_thread, args=(args,))
    proc.start()
    deadline = time.monotonic() + 240
    while not shard_files(bank, 0).manifest.exists():
        assert proc.is_alive(), f"generate exited early with code {proc.exitcode}"
        assert time.monotonic() < deadline, "no shard was written in time"
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)  # a real kill, somewhere in the middle of the next shards
    proc.join(timeout=60)
    assert proc.exitcode == -signal.SIGKILL
    done = [k for k in range(total) if shard_complete(bank, k, 4)]
    assert 0 in done and len(done) < total and not (bank / "manifest.csv").exists()

    assert cli_main(args) == 0  # resume
    write_bank(model_dir, tmp_path / "ref", 4 * total, shard_size=4, batch_size=1, progress=False)
    assert shard_bytes(bank) == shard_bytes(tmp_path / "ref")
    ids = read_manifest_columns(bank / "manifest.csv", ("id",))["id"]
    assert ids.tolist() == list(range(4 * total))
    assert not list(bank.rglob("*.tmp"))
    assert len(SyntheticBank(bank)) == 4 * total


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_torchrun_two_ranks_write_the_same_bank(model_dir, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), "-m", "lightning_medaug.cli", "generate", "--model", str(model_dir), "--num-samples",
           "40", "--shard-size", "16", "--batch-size", "8", "--out", str(tmp_path / "ddp"), "--no-progress"]
    result = subprocess.run(cmd, env=ONE_THREAD, capture_output=True, text=True, encoding="utf-8", errors="replace",
                            timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("wrote 3 of 3 shards") == 1  # rank 0 reports for all ranks
    write_bank(model_dir, tmp_path / "single", 40, shard_size=16, batch_size=8, progress=False)
    ddp, single = shard_bytes(tmp_path / "ddp"), shard_bytes(tmp_path / "single")
    assert len(ddp) == 3 and ddp == single
    assert SyntheticBank(tmp_path / "ddp").ids.tolist() == list(range(40))
