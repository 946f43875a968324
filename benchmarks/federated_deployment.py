"""A federation on Flower's deployment engine: a SuperLink and one SuperNode per site as separate processes.

Starts ``flower-superlink --insecure`` and ``flower-supernode --insecure --superlink ...`` (one per site,
each with its ``partition-id`` in its node config) on free localhost ports, writes a Flower App whose
components are ``lightning_medaug.federated.deployment:server`` / ``:client`` and submits it with
``flwr run``; then checks the exported generator's ``federation.json`` and prints one JSON line (rounds,
sites, wall time). Flower starts a ``flwr-clientapp`` process for every message a site answers, each
importing torch and Lightning, so the run takes minutes on 2 CPU cores: that is why this is a script
and not a test (the apps themselves are tested on the in-process grid, ``tests/federated``).

With ``--secure`` the same federation runs as real sites would: a throwaway CA signs a certificate for
localhost, the SuperLink serves HTTPS (``--ssl-ca-certfile``/``--ssl-certfile``/``--ssl-keyfile``) with
``--enable-supernode-auth``, each site's public key is registered with ``flwr supernode register``, each
SuperNode connects with ``--root-certificates`` and its ``--auth-supernode-private-key``, and ``flwr run``
reaches the SuperLink by a connection with ``root-certificates``. One more SuperNode, with a key nobody
registered, tries to join as ``site-name="unregistered"``: it must be refused (its log shows the refusal,
and the federation's record does not name it).

    python benchmarks/federated_deployment.py                      # 2 sites, 1 round of a tiny cVAE
    python benchmarks/federated_deployment.py --secure             # the same over TLS with node authentication
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
from _federation_credentials import make_node_keys, make_tls_files  # noqa: E402

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
#: The site name a SuperNode with an unregistered key asks for (``--secure``): the record must not name it.
INTRUDER = "unregistered"
#: What a refused SuperNode logs in Flower 1.42 (Fleet API error 2004, "Exit Code: 305") before it exits.
REFUSAL = "Failed to activate SuperNode"


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


def node_config(index: int, sites: int, root: Path, name: str | None = None) -> str:
    """The node config of simulated site ``index``: its share of the data set and its own folder."""
    named = f' site-name="{name}"' if name else ""
    folder = (root / "sites" / (name or f"site-{index}")).as_posix()
    return f'partition-id={index} num-partitions={sites} site-dir="{folder}"{named}'


def register(public_key: Path, name: str, env: dict[str, str], deadline: float) -> None:
    """``flwr supernode register`` a site's public key, retrying while the SuperLink is still starting."""
    while True:
        result = subprocess.run([str(BIN / "flwr"), "supernode", "register", str(public_key), "local-test", "--name",
                                 name], env=env, capture_output=True, text=True, encoding="utf-8", errors="replace")
        if result.returncode == 0:
            return
        if time.time() > deadline:
            raise RuntimeError(f"flwr supernode register {name} failed: {(result.stdout + result.stderr).strip()}")
        time.sleep(2.0)


def security(root: Path, sites: int, secure: bool) -> tuple[list[str], list[list[str]], str]:
    """The SuperLink's flags, each SuperNode's (the sites', then the unregistered one's) and the connection's."""
    if not secure:
        return ["--insecure"], [["--insecure"]] * (sites + 1), "insecure = true\n"
    tls = make_tls_files(root / "pki")
    keys = [make_node_keys(root / "pki", name)[0] for name in [f"site-{i}" for i in range(sites)] + [INTRUDER]]
    link = ["--ssl-ca-certfile", str(tls["ca"]), "--ssl-certfile", str(tls["cert"]), "--ssl-keyfile", str(tls["key"]),
            "--enable-supernode-auth"]
    nodes = [["--root-certificates", str(tls["ca"]), "--auth-supernode-private-key", str(key)] for key in keys]
    return link, nodes, f'root-certificates = "{tls["ca"].as_posix()}"\n'


def run(sites: int, rounds: int, root: Path, timeout: float, secure: bool = False,
        secure_aggregation: bool = False) -> dict:
    import yaml

    (root / "app").mkdir(parents=True, exist_ok=True)
    (root / "home").mkdir(exist_ok=True)
    out, config = root / "out", root / "federation.yaml"
    federation = {**FEDERATION, "num_sites": sites, "num_rounds": rounds, "out": str(out)}
    if secure_aggregation:  # SecAgg+ with its defaults: the server gets only the masked sum of the updates
        federation["secure_aggregation"] = {}
    config.write_text(yaml.safe_dump(federation), encoding="utf-8")
    (root / "app" / "pyproject.toml").write_text(APP.format(config=config.as_posix(), out=out.as_posix()),
                                                 encoding="utf-8")
    link = free_port()
    link_args, node_args, connection = security(root, sites, secure)
    # where `flwr run` and `flwr supernode` find the SuperLink ($FLWR_HOME/config.toml)
    (root / "home" / "config.toml").write_text(
        f'[superlink]\ndefault = "local-test"\n\n[superlink.local-test]\naddress = "127.0.0.1:{link}"\n'
        + connection, encoding="utf-8")
    env = {**os.environ, "FLWR_HOME": str(root / "home"), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}

    def supernode(index: int, name: str | None = None) -> subprocess.Popen:
        return start([str(BIN / "flower-supernode"), *node_args[sites if name else index], "--superlink",
                      f"127.0.0.1:{link}", "--port", str(free_port()), "--node-config",
                      node_config(index, sites, root, name)], root / f"supernode-{name or index}.log", env)

    processes = [start([str(BIN / "flower-superlink"), *link_args, "--port", str(link),
                        "--disable-runtime-dependency-installation"], root / "superlink.log", env)]
    started, intruder_code = time.time(), None
    try:
        if secure:
            for i in range(sites):
                register(root / "pki" / f"site-{i}.pub", f"site-{i}", env, deadline=time.time() + 180)
            # started before the registered sites, so it would be among the first nodes the server sees
            processes.append(intruder := supernode(0, INTRUDER))
        processes += [supernode(i) for i in range(sites)]
        result = subprocess.run([str(BIN / "flwr"), "run", str(root / "app"), "local-test", "--stream"], env=env,
                                capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=timeout)
        (root / "flwr-run.log").write_text(result.stdout + result.stderr, encoding="utf-8")
        if secure:
            intruder_code = intruder.poll()  # before stop() below, which would set it
    finally:
        for process in reversed(processes):
            stop(process)
    record_file = out / "generator" / "federation.json"
    summary = json.loads(record_file.read_text(encoding="utf-8"))["summary"] if record_file.is_file() else {}
    done = summary.get("sites", [])
    record = {"benchmark": "federated_deployment", "sites": sites, "rounds": rounds,
              "rounds_done": summary.get("rounds", 0), "sites_done": done,
              "ok": result.returncode == 0 and summary.get("rounds") == rounds and len(done) == sites
              and (not secure_aggregation or "secure_aggregation" in summary),
              "secure_aggregation": summary.get("secure_aggregation", {}).get("protocol"),
              "tls": secure, "node_auth": secure, "wall_s": round(time.time() - started, 1), "logs": str(root)}
    if secure:
        log = (root / f"supernode-{INTRUDER}.log").read_text(encoding="utf-8", errors="replace")
        https = "running on https://" in (root / "superlink.log").read_text(encoding="utf-8", errors="replace")
        refused = intruder_code not in (None, 0) and REFUSAL in log and INTRUDER not in done
        record.update(superlink_https=https, unregistered_node_exit=intruder_code, unregistered_node_refused=refused)
        record["ok"] = record["ok"] and https and refused
    return record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds `flwr run` may take")
    parser.add_argument("--keep", type=str, default=None, help="folder for the app, logs and output (default: temp)")
    parser.add_argument("--out", type=str, default=None, help="also append the JSON line to this file")
    parser.add_argument("--secure", action="store_true",
                        help="TLS with a throwaway CA, node authentication, and a SuperNode with an unregistered key")
    parser.add_argument("--secure-aggregation", action="store_true",
                        help="aggregate with SecAgg+ (needs 3 sites or more to protect a site's update)")
    args = parser.parse_args()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="medaug-deployment-"))
    record = run(args.sites, args.rounds, root.resolve(), args.timeout, args.secure, args.secure_aggregation)
    emit(record, args.out)
    return 0 if record["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
