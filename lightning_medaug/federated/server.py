"""The server's side of a federation: check the sites, run the rounds with a Flower strategy, keep a
checkpoint of every round, export the global generator with the federation's record.

:func:`run_federation` is the body of the ``ServerApp`` (:func:`server_app`), so it runs the same on
the in-process grid, Flower's simulation engine and its deployment engine. It drives Flower's own
strategies (``FedAvg``, ``FedProx``, ``FedAdam``) round by round through their ``configure_train``
and ``aggregate_train`` rather than ``Strategy.start``, which cannot start at a later round: after
each round the global weights, the strategy's own state (FedAdam's moments) and the record so far are
written to ``<out>/checkpoint``, and a server started again on the same ``out`` resumes after the last
round written, none lost, with the strategy as it was.

Before round 1 every site answers a query with its image shape, classes and size
(:func:`~.sites.site_summary`); a site that does not fit the generator is refused by name
(:func:`~.sites.check_sites`). A site that fails or drops out in a round is left out of that
round's average; a round with fewer than ``min_sites`` replies stops the federation.

Under ``secure_aggregation`` each round's training goes through SecAgg+ (:mod:`.secure`): the strategy
then aggregates one reply, the weighted mean of the sites' weights the protocol unmasked, so FedAvg,
FedProx and FedAdam, the checkpoint, the resume and the per-site record work as without it.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx, Strategy
from safetensors.numpy import load_file as load_arrays
from safetensors.numpy import save_file as save_arrays
from safetensors.torch import load_file, save_file

from lightning_medaug.federated.parameters import load_shared_state, part_names, shared_state
from lightning_medaug.federated.record import FEDERATION_RECORD, federation_summary
from lightning_medaug.federated.secure import SecureRound, quantization_bound
from lightning_medaug.federated.settings import FederationSettings
from lightning_medaug.federated.sites import check_sites
from lightning_medaug.generative.privacy import EXPORT_FOLDER, PRIVACY_REPORT

__all__ = ["CHECKPOINT_FOLDER", "make_strategy", "run_federation", "server_app"]

#: Folder of ``out`` with the last round's global weights, the strategy's state and the record so far.
CHECKPOINT_FOLDER = "checkpoint"
_STATE = "state.json"
#: Attributes of Flower's adaptive strategies (``FedOpt``: FedAdam, FedYogi, FedAdagrad) that carry
#: over from round to round: the server optimizer's first and second moments.
_STRATEGY_STATE = ("m_t", "v_t")


def make_strategy(settings: FederationSettings) -> Strategy:
    """The Flower strategy the settings name, sampling every connected site each round."""
    common = dict(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=settings.min_sites,
                  min_available_nodes=settings.min_sites, train_metrics_aggr_fn=_no_metrics)
    if settings.strategy == "fedprox":
        return FedProx(proximal_mu=settings.proximal_mu, **common)
    if settings.strategy == "fedadam":
        return FedAdam(eta=settings.server_lr, **common)
    return FedAvg(**common)


def _no_metrics(records: list[RecordDict], weighted_by_key: str) -> MetricRecord:
    # Per-site figures are recorded from the replies themselves: an average would hide each site's epsilon.
    return MetricRecord()


def server_app(settings: FederationSettings, out: str | Path, sites_dir: str | Path | None = None) -> ServerApp:
    """The Flower ``ServerApp`` of a federation writing into ``out``."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_federation(grid, settings, out, sites_dir)

    return app


def run_federation(grid: Grid, settings: FederationSettings, out: str | Path, sites_dir: str | Path | None = None,
                   log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) the federation on ``grid``; returns its record (also in ``out/generator``)."""
    out = Path(out)
    base = {"federation": settings.to_json(), "sites-dir": str(Path(sites_dir) if sites_dir else out / "sites")}
    strategy = make_strategy(settings)
    record, arrays = _resume(out, settings, strategy)
    model = settings.build_generator()
    sites, sizes = _check_sites(grid, settings, base, model)
    record["sites"] = {str(node): name for node, name in sites.items()}
    record["parts"] = part_names(model, settings.average_training_parts)
    secure = None
    if settings.secure_aggregation is not None:
        secure = SecureRound(grid, settings.secure_aggregation, max(sizes.values()), settings.round_timeout)
        record["secure_aggregation"] = {"max_weight": secure.max_weight, "max_error": quantization_bound(
            settings.secure_aggregation, sizes.values(), secure.max_weight)}
    if arrays is None:
        arrays = ArrayRecord(shared_state(model, settings.average_training_parts))
    for server_round in range(len(record["rounds"]) + 1, settings.num_rounds + 1):
        started = time.time()
        messages = strategy.configure_train(server_round, arrays, ConfigRecord(dict(base)), grid)
        replies, figures, failed = _train(grid, messages, settings, server_round, secure)
        failed = {sites.get(node, f"node {node}"): reason for node, reason in failed.items()}
        if secure is not None and not replies:
            raise RuntimeError(f"round {server_round}: secure aggregation stopped, too few sites answered for its "
                               f"reconstruction threshold ({'; '.join(f'{k}: {v}' for k, v in failed.items())})")
        if len(figures) < settings.min_sites:
            raise RuntimeError(f"round {server_round}: {len(figures)} of {len(figures) + len(failed)} sites returned "
                               f"weights, fewer than min_sites={settings.min_sites} "
                               f"({'; '.join(f'{k}: {v}' for k, v in failed.items())})")
        aggregated, _ = strategy.aggregate_train(server_round, replies)
        arrays = aggregated
        entry = {"round": server_round, "seconds": round(time.time() - started, 2), "dropped": failed,
                 "sites": {sites.get(node, f"node {node}"): metrics for node, metrics in figures.items()}}
        record["rounds"].append(entry)
        _save_checkpoint(out, arrays, strategy, record)
        log(f"round {server_round}/{settings.num_rounds}: {_round_line(entry)}")
    return _export(out, settings, arrays, record)


def _train(grid: Grid, messages: Iterable[Message], settings: FederationSettings, server_round: int,
           secure: SecureRound | None) -> tuple[list[Message], dict[int, dict[str, Any]], dict[int, str]]:
    """Send a round's training messages; returns the replies for the strategy to aggregate, the figures of
    each site that trained and the error of each that failed, by node id.

    Under secure aggregation the strategy gets one reply, the weighted mean SecAgg+ unmasked, or none
    when the protocol stopped.
    """
    if secure is None:
        replies = list(grid.send_and_receive(messages, timeout=settings.round_timeout))
        ok = [r for r in replies if not r.has_error()]
        return (ok, {r.metadata.src_node_id: dict(r.content["metrics"]) for r in ok},
                {r.metadata.src_node_id: r.error.reason for r in replies if r.has_error()})
    total, figures, failed = secure(server_round, messages)
    return ([] if total is None else [total]), figures, failed


def _check_sites(grid: Grid, settings: FederationSettings, base: dict[str, str],
                 model: Any) -> tuple[dict[int, str], dict[str, int]]:
    """Ask every site what it holds and refuse those that do not fit; returns node id -> site name and
    site name -> number of training images."""
    deadline = time.time() + settings.round_timeout
    while len(nodes := list(grid.get_node_ids())) < settings.num_sites and time.time() < deadline:
        time.sleep(1.0)  # real sites connect over time
    if len(nodes) < settings.min_sites:
        raise RuntimeError(f"{len(nodes)} sites connected, fewer than min_sites={settings.min_sites}")
    messages = [Message(RecordDict({"config": ConfigRecord(dict(base))}), node, "query") for node in nodes]
    summaries, names = {}, {}
    for reply in grid.send_and_receive(messages, timeout=settings.round_timeout):
        node = reply.metadata.src_node_id
        if reply.has_error():
            raise ValueError(f"the site on node {node} could not describe its data before round 1: "
                             f"{reply.error.reason}")
        summary = json.loads(str(reply.content["site"]["summary"]))
        if summary["site"] in summaries:
            raise ValueError(f"two sites are named {summary['site']}: give each its own site-name")
        summaries[summary["site"]], names[node] = summary, summary["site"]
    check_sites(summaries, model.image_shape, model.num_classes)
    return names, {site: int(summary["num_examples"]) for site, summary in summaries.items()}


def _round_line(entry: dict[str, Any]) -> str:
    """One round's figures per site (loss; epsilon under DP) and the sites that dropped out."""
    parts = [f"{site} loss {m.get('train-loss', float('nan')):.4g}" + (f" eps {m['epsilon']:.3g}" if "epsilon" in m
                                                                       else "") for site, m in entry["sites"].items()]
    return ", ".join(parts) + (f"; dropped: {', '.join(entry['dropped'])}" if entry["dropped"] else "")


def _round_files(folder: Path, server_round: int) -> tuple[Path, Path]:
    """The global weights and the strategy's state after ``server_round``."""
    return folder / f"round-{server_round:04d}.safetensors", folder / f"round-{server_round:04d}.strategy.safetensors"


def _resume(out: Path, settings: FederationSettings,
            strategy: Strategy) -> tuple[dict[str, Any], ArrayRecord | None]:
    """The record and global weights of the last finished round in ``out`` (the strategy's state
    restored into ``strategy``), or a fresh record."""
    folder = out / CHECKPOINT_FOLDER
    fresh = {"settings": json.loads(settings.to_json()), "rounds": []}
    if not (folder / _STATE).is_file():
        return fresh, None
    record = json.loads((folder / _STATE).read_text(encoding="utf-8"))
    if record.get("settings") != fresh["settings"]:
        changed = sorted(k for k in fresh["settings"] if record.get("settings", {}).get(k) != fresh["settings"][k])
        raise ValueError(f"{out} holds a federation with other settings ({', '.join(changed)}): resume it with the "
                         "same settings or write to a new folder")
    weights, state = _round_files(folder, len(record["rounds"]))
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} not found: the checkpoint of round {len(record['rounds'])} is incomplete; "
                                f"restore it or delete {folder} to start the federation again")
    if state.is_file():
        saved = load_arrays(str(state))
        for name in _STRATEGY_STATE:
            moments = {k.split("/", 1)[1]: v for k, v in saved.items() if k.split("/", 1)[0] == name}
            setattr(strategy, name, moments or None)
    return record, ArrayRecord(load_file(str(weights)))


def _save_checkpoint(out: Path, arrays: ArrayRecord, strategy: Strategy, record: dict[str, Any]) -> None:
    """The round's weights and strategy state go to files of their own, then the record naming that round
    replaces the last one, then older rounds' files go: a crash at any point resumes from a consistent round."""
    folder = out / CHECKPOINT_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    weights, state = _round_files(folder, len(record["rounds"]))
    _atomic(weights, lambda tmp: save_file({k: v.contiguous() for k, v in arrays.to_torch_state_dict().items()},
                                           str(tmp)))
    moments = {f"{name}/{k}": v for name in _STRATEGY_STATE for k, v in (getattr(strategy, name, None) or {}).items()}
    if moments:
        _atomic(state, lambda tmp: save_arrays(moments, str(tmp)))
    _atomic(folder / _STATE, lambda tmp: tmp.write_text(json.dumps(record, indent=2), encoding="utf-8"))
    for path in folder.glob("round-*.safetensors"):
        match = re.match(r"round-(\d+)\.", path.name)
        if match and int(match.group(1)) < len(record["rounds"]):
            path.unlink(missing_ok=True)


def _atomic(path: Path, write: Callable[[Path], Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    tmp.replace(path)


def _export(out: Path, settings: FederationSettings, arrays: ArrayRecord, record: dict[str, Any]) -> dict[str, Any]:
    """Save the global generator to ``out/generator`` with :data:`FEDERATION_RECORD` (and ``privacy.json``)."""
    model = settings.build_generator()
    load_shared_state(model, arrays.to_torch_state_dict())
    folder = model.save_pretrained(out / EXPORT_FOLDER)
    record = {**record, "summary": federation_summary(record)}
    _atomic(folder / FEDERATION_RECORD, lambda tmp: tmp.write_text(json.dumps(record, indent=2), encoding="utf-8"))
    summary = record["summary"]
    if "epsilon" in summary:
        privacy = {"epsilon": summary["epsilon"], "delta": summary["delta"],
                   "mechanism": "DP-SGD (Abadi et al. 2016) at every site, its accountant composed over the rounds; "
                                "the global model is as private as its least private site",
                   "unit": "one training example of a site", "accountant": settings.privacy.get("accountant", "rdp"),
                   "epsilon_per_site": summary["epsilon_per_site"], "rounds": summary["rounds"]}
        (folder / PRIVACY_REPORT).write_text(json.dumps(privacy, indent=2), encoding="utf-8")
    return record
