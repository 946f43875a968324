"""Few-step sampling: a consistency-distilled student at 1, 2 and 4 steps against its DDPM teacher.

Prints one JSON line with, measured side by side in one run:

* ``ms_per_image``: the student (``ConsistencyDistillation.sample``) at 1, 2 and 4 steps and the
  teacher (``DDPM.sample``) with DPM-Solver++ at ``--teacher-steps`` (20) steps and its own guidance
  (a doubled batch when guided), at batch ``--batch-size``; interleaved repeats, the order flipping
  each round, medians compared (``unet_efficiency.interleaved_times``);
* ``speedup``: teacher ms / student ms per step count;
* ``fidelity``: per sampler, ``--num-samples`` images, at most as many as the held-out split has
  (labels drawn with the training split's class frequencies, the same labels and seed for every
  sampler), evaluated as ``medaug evaluate`` does
  (``evaluate_bank``: Frechet distance, KID, precision and recall on the domain feature extractor,
  against the training split) beside ``floor``, the held-out split against the training split
  with the same extractor and counts, and the pixel and feature copy rates (nearest training image
  closer than the 1st percentile of held-out-to-train distances).

``fd_ratio``: each student's FD over the teacher's. Target (issue [fast]): at 4 steps, FD within 1.2x of
the teacher's 20-step FD (``fd_ratio`` <= 1.2) at >= 5x the images per second (``speedup`` >= 5), both
from this one run; ``meets_target`` is null for ``--tiny``. 1 and 2 steps are reported, not targeted.

    python benchmarks/few_step.py --teacher runs/ddpm_pneumonia/version_0/generator \\
        --student runs/cd_pneumonia/version_0/generator --threads 1
    python benchmarks/few_step.py --tiny     # smoke size: an untrained teacher and student on phantoms

``--data`` is what ``medaug evaluate --data`` takes (a recipe, whose ``data:`` section is used, or a
``class_path`` / ``init_args`` mapping); by default the teacher's recipe, ``ddpm_pneumonia.yaml``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch
from _common import data_root, emit, versions
from unet_efficiency import interleaved_times, resolve_device, set_threads

STUDENT_STEPS = (1, 2, 4)
PICK = ("fd", "kid_mean", "precision", "recall")
TARGET = {"steps": 4, "fd_ratio_max": 1.2, "speedup_min": 5.0}


def tiny_models(workdir: Path, image_size: int) -> tuple[str, str, dict[str, Any]]:
    """An untrained class-conditional DDPM on phantoms and a student distilled from it for 0 steps."""
    from lightning_medaug.registry import create_generator

    torch.manual_seed(0)
    teacher = create_generator("ddpm", image_size=image_size, num_classes=2, channels=(8, 16), norm_num_groups=8,
                               num_train_timesteps=100, guidance_scale=2.0)
    teacher_dir = teacher.save_pretrained(workdir / "teacher")
    student = create_generator("consistency", teacher=str(teacher_dir), num_solver_steps=10)
    data = {"class_path": "lightning_medaug.data.PhantomDataModule",
            "init_args": {"image_size": image_size, "num_classes": 2, "num_train": 64, "num_val": 32,
                          "num_test": 32}}
    return str(teacher_dir), str(student.save_pretrained(workdir / "student")), data


def data_config(spec: str | None, root: str | None) -> dict[str, Any]:
    from lightning_medaug.evaluation.inputs import load_data_config

    config = load_data_config(spec or "ddpm_pneumonia.yaml")
    if root and "MedMNIST" in config["class_path"]:
        config["init_args"]["root"] = root
    return config


def training_labels(train: Any, n: int, seed: int) -> torch.Tensor | None:
    """``n`` labels drawn with the training split's class frequencies (``None`` without labels)."""
    from lightning_medaug.evaluation.samples import load_samples

    labels = load_samples(train).labels
    if labels is None:
        return None
    counts = torch.bincount(labels).double()
    return torch.multinomial(counts, n, replacement=True, generator=torch.Generator().manual_seed(seed))


def draw(model: Any, n: int, labels: torch.Tensor | None, batch: int, seed: int, **kwargs: Any) -> torch.Tensor:
    """``n`` samples in batches of ``batch``, seeded once for the whole draw."""
    generator = torch.Generator().manual_seed(seed)
    chunks = []
    for start in range(0, n, batch):
        part = None if labels is None else labels[start:start + batch].to(model.device)
        size = min(batch, n - start)
        chunks.append(model.sample(size, labels=part, generator=generator, **kwargs).cpu())
    return torch.cat(chunks)


def load_pair(teacher_dir: str, student_dir: str, device: torch.device) -> tuple[Any, Any]:
    """The teacher and the student, refused when the student was distilled from another teacher's settings."""
    from lightning_medaug.generative import load_generator

    teacher, student = (load_generator(d).to(device).eval() for d in (teacher_dir, student_dir))
    distilled_from = (student.hparams.get("teacher_config") or {}).get("init_args", {})
    given = teacher.generator_config()["init_args"]
    if any(distilled_from[k] != given[k] for k in set(distilled_from) & set(given)):
        raise ValueError(f"{student_dir} was distilled from a teacher configured otherwise than {teacher_dir}: pass "
                         "the teacher it was distilled from")
    return teacher, student


def time_samplers(samplers: dict[str, tuple[Any, dict[str, Any]]], args: argparse.Namespace,
                  device: torch.device) -> dict[str, float]:
    """ms per image of each sampler at ``--batch-size``, the same labels and seed for all, interleaved."""
    num_classes = next(iter(samplers.values()))[0].num_classes
    labels = None if not num_classes else torch.randint(
        0, num_classes, (args.batch_size,), generator=torch.Generator().manual_seed(args.seed)).to(device)
    runs = {name: (lambda m=model, kw=kw: m.sample(args.batch_size, labels=labels,
                                                   generator=torch.Generator().manual_seed(args.seed), **kw))
            for name, (model, kw) in samplers.items()}
    times = interleaved_times(runs, args.repeats, device)
    return {name: round(1000 * statistics.median(t) / args.batch_size, 3) for name, t in times.items()}


def score_samplers(samplers: dict[str, tuple[Any, dict[str, Any]]], args: argparse.Namespace,
                   data: dict[str, Any]) -> dict[str, Any]:
    """Each sampler's images evaluated as ``medaug evaluate`` does, beside the real-vs-real floor."""
    from torch.utils.data import TensorDataset

    from lightning_medaug.evaluation.evaluate import evaluate_bank
    from lightning_medaug.evaluation.inputs import build_datamodule, real_splits, resolve_extractor

    datamodule = build_datamodule(data)
    train, held_out, floor_split = real_splits(datamodule)
    extractor, _ = resolve_extractor(args.extractor, datamodule, seed=args.seed)
    num_classes = next(iter(samplers.values()))[0].num_classes
    labels = training_labels(train, args.num_samples, args.seed) if num_classes else None
    scores: dict[str, Any] = {"fidelity": {}, "floor_split": floor_split}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (model, kw) in samplers.items():
            images = draw(model, args.num_samples, labels, args.batch_size, args.seed, **kw)
            bank = TensorDataset(images, labels) if labels is not None else TensorDataset(images)
            result = evaluate_bank(bank, train, held_out, Path(tmp) / name, extractor, num_samples=args.num_samples,
                                   seed=args.seed, floor_split=floor_split, num_classes=num_classes or None)
            memo = result["memorization"]
            scores["fidelity"][name] = {**{k: result["fidelity"]["synthetic"][k] for k in PICK},
                                        "copy_rate": {space: (memo.get(space) or {}).get("copy_rate")
                                                      for space in ("pixel", "feature")}}
            # the same real subsets for every sampler: one floor
            scores["floor"] = {k: result["fidelity"]["floor"][k] for k in PICK}
            scores["num_samples"] = result["fidelity"]["num_samples"]
    return scores


def measure(args: argparse.Namespace, teacher_dir: str, student_dir: str, data: dict[str, Any]) -> dict[str, Any]:
    device = resolve_device(args.device)
    teacher, student = load_pair(teacher_dir, student_dir, device)
    samplers = {f"student_{s}_steps": (student, {"num_inference_steps": s}) for s in STUDENT_STEPS}
    teacher_name = f"teacher_dpmsolver++_{args.teacher_steps}_steps"
    samplers[teacher_name] = (teacher, {"sampler": "dpmsolver++", "num_inference_steps": args.teacher_steps})
    ms = time_samplers(samplers, args, device)
    speedup = {name: round(ms[teacher_name] / value, 2) for name, value in ms.items() if name != teacher_name}
    scores = score_samplers(samplers, args, data)
    fd = {name: f["fd"] for name, f in scores["fidelity"].items()}
    fd_ratio = {name: round(value / fd[teacher_name], 3) for name, value in fd.items() if name != teacher_name}
    meets = None if args.tiny else bool(fd_ratio["student_4_steps"] <= TARGET["fd_ratio_max"]
                                        and speedup["student_4_steps"] >= TARGET["speedup_min"])
    return {"ms_per_image": ms, "speedup": speedup, "fd_ratio": fd_ratio, **scores, "meets_target": meets}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", help="the DDPM's save_pretrained folder")
    p.add_argument("--student", help="the distilled model's save_pretrained folder")
    p.add_argument("--data", default=None, help="real data as medaug evaluate --data takes it (default: "
                                                "ddpm_pneumonia.yaml's data)")
    p.add_argument("--data-root", default=None, help="PneumoniaMNIST folder (default: $MEDAUG_DATA, else the "
                                                     "shipped copy)")
    p.add_argument("--teacher-steps", type=int, default=20, help="DPM-Solver++ steps of the teacher")
    p.add_argument("--batch-size", type=int, default=64, help="images per timed sample() call")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--num-samples", type=int, default=1000, help="images per sampler for fidelity")
    p.add_argument("--extractor", default="domain", help="feature extractor of medaug evaluate (none: pixels)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--tiny", action="store_true", help="smoke test: untrained models on 16 px phantoms")
    p.add_argument("--out", default=None, help="also append the JSON line to this file")
    args = p.parse_args(argv)
    if args.tiny:
        args.batch_size, args.repeats, args.num_samples, args.extractor, args.teacher_steps = 4, 1, 16, "none", 2
    elif not (args.teacher and args.student):
        p.error("pass --teacher and --student (or --tiny)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    set_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        if args.tiny:
            teacher, student, data = tiny_models(Path(tmp), 16)
        else:
            teacher, student, data = args.teacher, args.student, data_config(args.data, data_root(args.data_root))
        record = measure(args, teacher, student, data)
    emit({"benchmark": "few_step", "tiny": args.tiny, "batch_size": args.batch_size, "repeats": args.repeats,
          "teacher_steps": args.teacher_steps, "extractor": args.extractor, "seed": args.seed, **record,
          "data": data["class_path"], "target": TARGET,
          "versions": versions()}, args.out)


if __name__ == "__main__":
    main()
