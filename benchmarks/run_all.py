"""Run every benchmark of the issue's seven figures, each in its own process, and print their JSON lines.

Prints, on stdout, each benchmark's one JSON line unchanged, then one summary line
(``"benchmark": "run_all"``) saying which figures met their targets, which have no target,
which missed and which failed to run. Progress and the load average of the machine go to stderr.

==========================  ======  ==================================================
script                      figure  what it measures against what
==========================  ======  ==================================================
``sample_speed.py``         1, 3    our sampler vs diffusers' pipeline, same UNet
``unet_efficiency.py``      2       UNet FLOP/s while sampling vs a large ``torch.mm``
``family_latency.py``       3       ms per sample of every family vs its target
``train_overhead.py``       4       Lightning Trainer vs a plain loop, same module
``mix_overhead.py``         5       mixed vs real-only loader: throughput and memory
``generate_scaling.py``     6       ``medaug generate`` on 1 vs 2 processes; size, steps
``gpu_memory.py``           7       3D training memory under bf16 (skipped without CUDA)
==========================  ======  ==================================================

``classify_baseline.py`` is not run: it is a long utility baseline, not a performance figure.

    python benchmarks/run_all.py                         # full size: tens of minutes on 2 CPU cores
    python benchmarks/run_all.py --tiny                  # smoke sizes: every script runs, figures mean nothing
    python benchmarks/run_all.py --threads 1 --out bench.jsonl
    python benchmarks/run_all.py --precision bf16-mixed  # figures 2-4 under bf16 autocast (on a GPU)
    python benchmarks/run_all.py --only train_overhead mix_overhead
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _sample_speed_meets(record: dict[str, Any]) -> bool | None:
    """Figure 1: our sampler at least 1.2x diffusers' pipeline (the issue's target)."""
    ratio = record.get("ddim_vs_pipeline", {}).get("ratio")
    return None if ratio is None else ratio >= 1.2


def _mix_overhead_meets(record: dict[str, Any]) -> bool | None:
    """Figure 5: the script reports its targets beside its figures."""
    try:
        return (record["throughput_ratio"] >= record["throughput_target"]
                and record["extra_rss_mb"] < record["extra_rss_target_mb"])
    except KeyError:
        return None


def _own_verdict(record: dict[str, Any]) -> bool | None:
    return record.get("meets_target")


@dataclass(frozen=True)
class Benchmark:
    """One script: its arguments at smoke size and which of run_all's options it takes."""

    script: str
    tiny_args: tuple[str, ...] = ("--tiny",)
    options: frozenset[str] = frozenset({"threads"})
    verdict: Callable[[dict[str, Any]], bool | None] = field(default=_own_verdict)


BENCHMARKS: dict[str, Benchmark] = {
    "sample_speed": Benchmark("sample_speed.py", options=frozenset({"threads", "precision"}),
                              verdict=_sample_speed_meets),
    "unet_efficiency": Benchmark("unet_efficiency.py", options=frozenset({"threads", "precision"})),
    "family_latency": Benchmark("family_latency.py", options=frozenset({"threads", "precision"})),
    "train_overhead": Benchmark("train_overhead.py", options=frozenset({"threads", "precision", "data_root"})),
    # mix_overhead.py has no --tiny flag: these are its smoke sizes (the bank goes to a temporary folder).
    "mix_overhead": Benchmark("mix_overhead.py", tiny_args=("--bank-size", "512", "--repeats", "1",
                                                            "--batch-size", "64"),
                              options=frozenset({"data_root"}), verdict=_mix_overhead_meets),
    "generate_scaling": Benchmark("generate_scaling.py"),
    "gpu_memory": Benchmark("gpu_memory.py"),
}


def command(name: str, args: argparse.Namespace, tmp: Path) -> list[str]:
    bench = BENCHMARKS[name]
    cmd = [sys.executable, str(HERE / bench.script)]
    if args.tiny:
        cmd += list(bench.tiny_args)
        if name == "mix_overhead":
            cmd += ["--bank-dir", str(tmp / "mix_bank")]
    if args.threads is not None and "threads" in bench.options:
        cmd += ["--threads", str(args.threads)]
    if args.precision is not None and "precision" in bench.options:
        cmd += ["--precision", args.precision]
    if args.data_root is not None and "data_root" in bench.options:
        cmd += ["--data-root", args.data_root]
    return cmd


def json_line(stdout: str) -> dict[str, Any] | None:
    """The last stdout line that is a benchmark's JSON object, if any."""
    for line in reversed(stdout.strip().splitlines()):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "benchmark" in record:
            return record
    return None


def run_one(name: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Run one script; its JSON record, or an ``error`` record saying why there is none."""
    env = dict(os.environ)
    if args.threads is not None:  # also for scripts without --threads (torch reads it at start-up)
        env["OMP_NUM_THREADS"] = str(args.threads)
    try:
        done = subprocess.run(command(name, args, tmp), check=False, capture_output=True, text=True, encoding="utf-8",
                              errors="replace", env=env, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"benchmark": name, "error": f"timed out after {args.timeout} s"}
    record = json_line(done.stdout) if done.returncode == 0 else None
    if record is None:
        tail = (done.stderr or done.stdout).strip()[-1500:]
        return {"benchmark": name, "error": f"exit code {done.returncode}, no JSON line", "stderr_tail": tail}
    return record


def summarise(records: dict[str, dict[str, Any]], tiny: bool, seconds: dict[str, float]) -> dict[str, Any]:
    """Which benchmarks met their targets, have none, missed them, or failed."""
    summary: dict[str, Any] = {"benchmark": "run_all", "tiny": tiny, "met": [], "missed": [], "no_target": [],
                               "failed": [], "seconds": seconds}
    for name, record in records.items():
        if "error" in record:
            summary["failed"].append(name)
        elif "skipped" in record:
            summary["no_target"].append(name)
        else:
            verdict = BENCHMARKS[name].verdict(record)
            summary["met" if verdict is True else "missed" if verdict is False else "no_target"].append(name)
    if tiny:
        summary["note"] = "smoke sizes: the figures and verdicts only show that each script runs"
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="every script at its smoke size")
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), default=None)
    parser.add_argument("--skip", nargs="+", choices=sorted(BENCHMARKS), default=[])
    parser.add_argument("--threads", type=int, default=None, help="torch threads of every script "
                                                                  "(default: torch's choice)")
    parser.add_argument("--precision", default=None, choices=("32-true", "bf16-mixed"),
                        help="precision of figures 2-4 (default: each script's, 32-true)")
    parser.add_argument("--data-root", default=None, help="PneumoniaMNIST folder (default: $MEDAUG_DATA, "
                                                          "else the shipped copy)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds allowed to each script")
    parser.add_argument("--out", default=None, help="also append every JSON line to this file")
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    sys.path.insert(0, str(HERE))
    from _common import emit

    names = [n for n in (args.only or BENCHMARKS) if n not in args.skip]
    records: dict[str, dict[str, Any]] = {}
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            print(f"run_all: {name} (load average {os.getloadavg()[0]:.1f}) ...", file=sys.stderr, flush=True)
            start = time.perf_counter()
            records[name] = run_one(name, args, Path(tmp))
            seconds[name] = round(time.perf_counter() - start, 1)
            print(f"run_all: {name} took {seconds[name]} s", file=sys.stderr, flush=True)
            emit(records[name], args.out)
    summary = summarise(records, args.tiny, seconds)
    summary["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    emit(summary, args.out)
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
