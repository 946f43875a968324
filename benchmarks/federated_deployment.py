"""A federation on Flower's deployment engine: a SuperLink and one SuperNode per site as separate processes.

Starts ``flower-superlink --insecure`` and ``flower-supernode --insecure --superlink ...`` (one per site,
each with its ``partition-id`` in its node config) on free localhost ports, writes a Flower App whose
components are ``lightning_medaug.federated.deployment:server`` / ``:client`` and submits it with
``flwr run``; then checks the exported generator's ``federation.json`` and prints one JSON line (rounds,
sites, wall time). Flower starts a ``flwr-clientapp`` process for every message a site answers, each
importing torch and Lightning, so the run takes minutes on 2 CPU cores: that is why this is a script
and not a test (the apps themselves are tested on the in-process grid, ``tests/federated``).

    python benchmarks/federated_deployment.py                      # 2 sites, 1 round of a tiny cVAE
    python benchmarks/federated_deployment.py --sites 3 --rounds 2 --keep runs/deployment
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit  # noqa: E402

BIN = Path(sys.executable).parent
APP = """[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "medaug-federation"
version = "1.0.0"
description = "lightning-medaug federated generator training"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "lightning-medaug"

[tool.flwr.app.components]
serverapp = "lightning_medaug.federated.deployment:server"
clientapp = "lightning_medaug.federated.deployment:client"

[tool.flwr.app.config]
config = "{config}"
out = "{out}"
"""
FEDERATION = {
    "generator": "cvae", "split": "iid",
    "generator_args": {"image_size": 16, "num_classes": 2, "channels": [8, 16], "norm_num_groups": 4,
                       "latent_channels": 2},
    "data": {"class_path": "lightning_medaug.data.PhantomDataModule",
             "init_args": {"image_size": 16, "num_train": 48, "num_val": 4, "num_test": 4, "batch_size": 8}},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    # a session of its own, so stopping it stops the processes Flower starts under it too
    return subprocess.Popen(argv, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)


def stop(process: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
            process.wait(wait)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def run(sites: int, rounds: int, root: Path, timeout: float) -> dict:
    import yaml

    (root / "app").mkdir(parents=True, exist_ok=True)
    (root / "home").mkdir(exist_ok=True)
    out, config = root / "out", root / "federation.yaml"
    config.write_text(yaml.safe_dump({**FEDERATION, "num_sites": sites, "num_rounds": rounds, "out": str(out)}),
                      encoding="utf-8")
    (root / "app" / "pyproject.toml").write_text(APP.format(config=config.as_posix(), out=out.as_posix()),
                                                 encoding="utf-8")
    link = free_port()
    # where `flwr run` finds the SuperLink it submits to ($FLWR_HOME/config.toml)
    (root / "home" / "config.toml").write_text(
        f'[superlink]\ndefault = "local-test"\n\n[superlink.local-test]\naddress = "127.0.0.1:{link}"\n'
        "insecure = true\n", encoding="utf-8")
    env = {**os.environ, "FLWR_HOME": str(root / "home"), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    processes = [start([str(BIN / "flower-superlink"), "--insecure", "--port", str(link),
                        "--disable-runtime-dependency-installation"], root / "superlink.log", env)]
    started = time.time()
    try:
        for i in range(sites):
            node = f'partition-id={i} num-partitions={sites} site-dir="{(root / "sites" / f"site-{i}").as_posix()}"'
            processes.append(start([str(BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{link}",
                                    "--port", str(free_port()), "--node-config", node],
                                   root / f"supernode-{i}.log", env))
        result = subprocess.run([str(BIN / "flwr"), "run", str(root / "app"), "local-test", "--stream"], env=env,
                                capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=timeout)
        (root / "flwr-run.log").write_text(result.stdout + result.stderr, encoding="utf-8")
    finally:
        for process in reversed(processes):
            stop(process)
    record_file = out / "generator" / "federation.json"
    summary = json.loads(record_file.read_text(encoding="utf-8"))["summary"] if record_file.is_file() else {}
    return {"benchmark": "federated_deployment", "sites": sites, "rounds": rounds,
            "rounds_done": summary.get("rounds", 0), "sites_done": summary.get("sites", []),
            "ok": result.returncode == 0 and summary.get("rounds") == rounds and len(summary.get("sites", [])) == sites,
            "wall_s": round(time.time() - started, 1), "logs": str(root)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds `flwr run` may take")
    parser.add_argument("--keep", type=str, default=None, help="folder for the app, logs and output (default: temp)")
    parser.add_argument("--out", type=str, default=None, help="also append the JSON line to this file")
    args = parser.parse_args()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="medaug-deployment-"))
    record = run(args.sites, args.rounds, root.resolve(), args.timeout)
    emit(record, args.out)
    return 0 if record["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
