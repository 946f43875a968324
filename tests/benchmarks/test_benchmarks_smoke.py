"""Smoke test of the benchmark suite: every figure script runs at its smoke size and prints one JSON line.

The scripts run inside this test process (``runpy``, as ``__main__``), not as subprocesses: each
subprocess would import torch, Lightning, diffusers and MONAI again, which alone takes 10-20 s on
a contended 2-core machine, while here those imports are shared with the rest of the suite.
``run_all.py`` itself runs as a subprocess, on the one script that needs none of the library
without CUDA (``gpu_memory``).
"""

from __future__ import annotations

import argparse
import json
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_medaug.registry import create_generator, list_generators

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def run_script(monkeypatch, capsys):
    """Run ``benchmarks/<script>`` with ``argv`` as ``__main__``; its one JSON line, parsed."""
    monkeypatch.syspath_prepend(str(BENCH))

    def run(script: str, *argv: str) -> dict:
        monkeypatch.setattr(sys, "argv", [str(BENCH / script), *argv])
        runpy.run_path(str(BENCH / script), run_name="__main__")
        lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
        assert len(lines) == 1, f"{script} printed {len(lines)} JSON lines"
        return json.loads(lines[0])

    return run


def test_sample_speed(run_script):
    record = run_script("sample_speed.py", "--tiny")
    assert record["benchmark"] == "sample_speed"
    pipeline = record["ddim_vs_pipeline"]
    assert pipeline["same_images"] is True  # the comparison is fair: same noise in, same images out
    assert pipeline["ratio"] > 0 and record["dpmsolver_ms_per_sample"]


@pytest.mark.parametrize("device", [
    "cpu",
    # on CUDA the sampler replays a CUDA graph, whose replays FlopCounterMode cannot see
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")),
])
def test_unet_efficiency(run_script, device):
    record = run_script("unet_efficiency.py", "--tiny", "--device", device)
    assert record["benchmark"] == "unet_efficiency" and record["target"] == 0.5
    assert 0 < record["efficiency"] and isinstance(record["meets_target"], bool)
    # FlopCounterMode saw every UNet call of the sampler: steps x batch forward passes.
    assert record["unet_calls_per_sample_call"] == pytest.approx(record["steps"], rel=0.05)
    per_call = record["steps"] * record["batch_size"] * record["gflop_per_forward_per_image"]
    assert record["gflop_per_sample_call"] == pytest.approx(per_call, rel=0.05)
    # the roofline: intensity over the ridge, capped at 1
    assert record["flop_per_byte"] > 0 and record["memory_gb_per_s"] > 0
    expected = min(1.0, record["flop_per_byte"] / record["ridge_flop_per_byte"])
    assert record["roofline_efficiency"] == pytest.approx(expected, rel=0.01)


def test_scale_costs_sets_pixel_and_latent_diffusion_side_by_side(run_script):
    record = run_script("scale_costs.py", "--tiny", "--threads", "1")
    assert record["benchmark"] == "scale_costs" and record["meets_target"] is None  # no 256 px at smoke size
    for dims, size, latent in (("2d", "16", [3, 4, 4]), ("3d", "16", [3, 4, 4, 4])):
        entry = record["results"][dims][size]
        assert entry["latent"]["latent_shape"] == latent  # factor 4 on every axis
        for side in ("pixel", "latent"):
            assert entry[side]["train_s_per_step"] > 0 and entry[side]["sample_s_per_image"] > 0
            assert entry[side]["peak_train_mb"] is not None
        assert entry["sampling_speedup"] == pytest.approx(
            entry["pixel"]["sample_s_per_image"] / entry["latent"]["sample_s_per_image"], rel=0.05)

def test_family_latency_covers_every_registered_family(run_script):
    record = run_script("family_latency.py", "--tiny")
    for dims in ("2d", "3d"):
        block = record["results"][dims]
        assert set(block) == set(list_generators())
        assert "skipped" in block["pix2pix"] and "skipped" in block["cyclegan"]
        assert block["ddpm"]["dpmsolver++_2_steps"] > 0 and block["vae"]["ms_per_sample"] > 0
    assert record["results"]["2d"]["ldm"]["target_ms"] == 100.0
    assert record["results"]["2d"]["dcgan"]["target_ms"] == 5.0
    assert isinstance(record["meets_target"], bool)


def test_few_step_times_and_scores_the_student_beside_its_teacher(run_script):
    record = run_script("few_step.py", "--tiny", "--threads", "1")
    assert record["benchmark"] == "few_step" and record["meets_target"] is None
    samplers = {"student_1_steps", "student_2_steps", "student_4_steps", "teacher_dpmsolver++_2_steps"}
    assert set(record["ms_per_image"]) == set(record["fidelity"]) == samplers
    teacher_ms = record["ms_per_image"]["teacher_dpmsolver++_2_steps"]
    for steps in (1, 2, 4):
        name = f"student_{steps}_steps"
        assert record["speedup"][name] == pytest.approx(teacher_ms / record["ms_per_image"][name], rel=0.01)
    for figures in (*record["fidelity"].values(), record["floor"]):
        assert figures["fd"] >= 0 and 0 <= figures["precision"] <= 1 and 0 <= figures["recall"] <= 1
    assert all(0 <= f["copy_rate"]["pixel"] <= 1 for f in record["fidelity"].values())
    assert record["num_samples"] == 16
    teacher_fd = record["fidelity"]["teacher_dpmsolver++_2_steps"]["fd"]
    for steps in (1, 2, 4):
        name = f"student_{steps}_steps"
        assert record["fd_ratio"][name] == pytest.approx(record["fidelity"][name]["fd"] / teacher_fd, rel=0.01)
    assert record["target"] == {"steps": 4, "fd_ratio_max": 1.2, "speedup_min": 5.0}


@pytest.mark.parametrize("generator", ["cvae", "cgan"])  # automatic and manual optimisation
def test_train_overhead(run_script, generator):
    record = run_script("train_overhead.py", "--tiny", "--generator", generator)
    assert record["generator"] == generator
    assert record["batches"] == 3 and record["lightning_s"] > 0 and record["plain_s"] > 0
    assert record["ratio"] == pytest.approx(record["lightning_s"] / record["plain_s"], rel=0.01)
    assert record["cpu_ratio"] == pytest.approx(record["lightning_cpu_s"] / record["plain_cpu_s"], rel=0.01)
    assert isinstance(record["in_fit_cpu_overhead_ms_per_batch"], float)
    assert isinstance(record["meets_target"], bool) and record["target"] == 1.02
    # One timed fit (--tiny): its phases, stamped on the Trainer's hooks, add up to its wall time.
    phases = record["fit_phases_ms"]
    assert set(phases) == {"build", "enter", "strategy_setup", "loop_start", "first_batch", "later_batches",
                           "loop_end_and_teardown", "exit"}
    assert all(ms >= 0 for ms in phases.values()) and phases["first_batch"] > 0 and phases["later_batches"] > 0
    assert record["first_batch_ms"]["lightning"] == phases["first_batch"] and record["first_batch_ms"]["plain"] > 0
    assert sum(phases.values()) == pytest.approx(1000 * record["lightning_s"], rel=0.05)
    # the third side: the plain loop with a fit's CUDA memory handling (on a CPU, the plain loop again)
    assert record["released_plain_s"] > 0
    assert record["ratio_to_released_plain"] == pytest.approx(record["lightning_s"] / record["released_plain_s"],
                                                              rel=0.01)
    assert record["released_plain_cpu_s"] > 0  # the noise of the machine, in CPU time


@pytest.mark.parametrize("generator", ["cgan", "ddpm"])
def test_plain_loop_does_the_trainers_work(monkeypatch, generator):
    """Figure 4's baseline is fair: from the same seeds, the plain loop (with its stand-in for what
    manual optimisation asks of a Trainer) and ``Trainer.fit`` leave every weight and EMA the same."""
    import lightning as L
    from torch.utils.data import DataLoader

    from lightning_medaug.data import PhantomDataModule

    monkeypatch.syspath_prepend(str(BENCH))
    from plain_loop import plain_epoch
    from train_overhead import TINY_SETTINGS

    data = PhantomDataModule(image_size=16, num_train=24, batch_size=8)
    data.setup("fit")
    batches = DataLoader(list(data.train_dataloader()), batch_size=None)  # the same three batches for both
    models = {}
    for side in ("trainer", "plain", "untrained"):
        torch.manual_seed(0)
        models[side] = create_generator(generator, image_size=16, num_classes=2, **TINY_SETTINGS[generator])
        torch.manual_seed(1)
        if side == "trainer":
            L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False).fit(models[side], batches)
        elif side == "plain":
            plain_epoch(models[side], batches, None, "32-true", torch.device("cpu"))
    trained, plain, untrained = (models[side].state_dict() for side in ("trainer", "plain", "untrained"))
    assert trained.keys() == plain.keys() and all(torch.equal(trained[k], plain[k]) for k in trained)
    assert any(not torch.equal(plain[k], untrained[k]) for k in plain if k.startswith("ema."))  # it trained
    # the stand-in gave back every weight's requires_grad and left the module as it found it
    assert all(p.requires_grad for name, p in models["plain"].named_parameters() if not name.startswith("ema."))
    assert "optimizers" not in vars(models["plain"])


def test_generate_scaling(run_script):
    # The 1- and 2-process `medaug generate` launches cost two more cold imports of the library;
    # torchrun with two ranks is tested in tests/bank/test_generate.py, and the launch command is
    # checked against the real parser below. `run_all.py --tiny` runs the launches too.
    record = run_script("generate_scaling.py", "--tiny", "--parts", "image_size", "steps")
    assert "ddp" not in record
    assert set(record["image_size"]["sizes"]["2d"]) == {"8", "16"}
    assert record["image_size"]["sizes"]["2d"]["16"]["pixel_ratio"] == 4.0
    assert record["image_size"]["sizes"]["3d"]["8"]["ms_per_sample"] > 0
    assert record["steps"]["steps"]["2"]["steps_ratio"] == 2.0


def test_generate_scaling_launches_a_valid_generate_command(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(BENCH))
    from generate_scaling import generate_command

    from lightning_medaug.bank.generate import build_parser

    args = argparse.Namespace(num_samples=8, shard_size=2, gen_batch_size=2, gen_steps=1)
    cmd = generate_command(2, tmp_path / "model", tmp_path / "bank", args)
    assert cmd[cmd.index("--nproc_per_node") + 1] == "2"
    parsed = build_parser().parse_args(cmd[cmd.index("generate") + 1:])
    assert (parsed.num_samples, parsed.shard_size, parsed.steps, parsed.no_progress) == (8, 2, 1, True)


def test_gpu_memory(run_script):
    record = run_script("gpu_memory.py", "--tiny")
    if torch.cuda.is_available():
        assert record["results"]["vae_16"]["largest_batch"] >= 1
    else:
        assert record["skipped"] == "no CUDA device"


@pytest.mark.slow  # ~30 s: its two peak-RSS measurements each start a fresh Python process
def test_mix_overhead(run_script, tmp_path):
    # mix_overhead.py has no --tiny flag: these are the smoke sizes run_all.py --tiny passes it.
    record = run_script("mix_overhead.py", "--bank-size", "512", "--repeats", "1", "--batch-size", "64",
                        "--bank-dir", str(tmp_path / "bank"))
    assert record["bank_size"] == 512 and record["throughput_ratio"] > 0 and "extra_rss_mb" in record


def test_run_all_reprints_lines_and_summarises(tmp_path):
    out = tmp_path / "bench.jsonl"
    done = subprocess.run([sys.executable, str(BENCH / "run_all.py"), "--tiny", "--only", "gpu_memory",
                           "--out", str(out)], check=False, capture_output=True, text=True, encoding="utf-8",
                          errors="replace", timeout=300)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["benchmark"] for line in lines] == ["gpu_memory", "run_all"]
    summary = lines[-1]
    assert summary["failed"] == [] and summary["tiny"] is True
    assert summary["no_target"] == ["gpu_memory"] and summary["met"] == summary["missed"] == []
    assert out.read_text(encoding="utf-8").splitlines() == done.stdout.splitlines()


def test_federated_evidence_scores_central_federated_dp_and_site_generators(run_script, tmp_path):
    record = run_script("federated_evidence.py", "--tiny", "--threads", "1", "--out", str(tmp_path / "fed"))
    assert record["benchmark"] == "federated_evidence" and record["meets_target"] is None
    names = [row["name"] for row in record["rows"]]
    assert names == ["central", "federated_iid_2sites", "site0_iid_2sites", "site1_iid_2sites",
                     "federated_dp8_iid_2sites"]
    rows = {row["name"]: row for row in record["rows"]}
    assert rows["federated_dp8_iid_2sites"]["epsilon"] <= 8.0 + 1e-6 and rows["federated_iid_2sites"]["rounds"] == 1
    assert rows["site0_iid_2sites"]["num_images"] + rows["site1_iid_2sites"]["num_images"] == \
        rows["central"]["num_images"]
    verdict = record["per_configuration"]["iid_2sites"]
    assert verdict["fd_over_central"] == pytest.approx(rows["federated_iid_2sites"]["fd"] / rows["central"]["fd"],
                                                       rel=0.01)
    assert verdict["best_site_fd"] == min(rows[f"site{i}_iid_2sites"]["fd"] for i in (0, 1))
    assert (tmp_path / "fed" / "central" / "samples.png").is_file()


def test_scale_fidelity_scores_ldm_pairs_against_the_held_out_floor(run_script, tmp_path):
    record = run_script("scale_fidelity.py", "--tiny", "--threads", "1", "--extractor-epochs", "1", "--per-mask", "2",
                        "--out", str(tmp_path / "fidelity"))
    assert record["benchmark"] == "scale_fidelity" and record["image_size"] == 32
    assert (record["num_train"], record["num_held_out"], record["num_synthetic"]) == (20, 10, 40)
    assert record["fd_ratio"] == pytest.approx(record["fd"] / record["floor"]["fd"])
    assert record["meets_target"] is (record["fd_ratio"] <= 2.0) and "val/dice" in record["extractor_val"]
    assert (tmp_path / "fidelity" / "samples.png").is_file()
    assert (tmp_path / "fidelity" / "evaluate" / "report.md").is_file()
    assert set(record["mask_dice"]) == {"synthetic", "synthetic_other_mask", "held_out_real"}
    assert all(0 <= v <= 1 for v in record["mask_dice"].values())
