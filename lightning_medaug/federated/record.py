"""The federation's record beside the exported generator (``federation.json``) and its summary.

The server writes the record (:mod:`.server`); a bank drawn from the generator copies its summary into
``bank.json`` and ``medaug card`` renders it. This module imports neither Flower nor torch, so those
readers work without the federated extra.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["FEDERATION_RECORD", "federation_summary", "read_federation"]

#: The federation's record, written beside the exported generator.
FEDERATION_RECORD = "federation.json"


def federation_summary(record: dict[str, Any]) -> dict[str, Any]:
    """The federation in the few figures a model card and a bank manifest name.

    ``rounds``, ``sites`` and ``site_sizes`` (training images per site), ``strategy``, ``split``,
    ``local_epochs``, ``min_sites``, the rounds sites ``dropped`` out of, the parts of the generator
    ``averaged`` and ``kept_at_sites``, under differential privacy the largest ``epsilon`` and ``delta``
    (the global model's guarantee) and ``epsilon_per_site`` and ``delta_per_site``, and under secure
    aggregation its options, ``max_weight``, ``max_error`` (the quantization's bound on one weight in one
    round) and the per-site figures the server still received ``in_the_clear``.
    """
    settings, rounds = record["settings"], record["rounds"]
    sites = sorted({site for entry in rounds for site in entry["sites"]} | set(record.get("sites", {}).values()))
    sizes = {site: int(metrics["num-examples"]) for entry in rounds for site, metrics in entry["sites"].items()
             if "num-examples" in metrics}
    summary = {"rounds": len(rounds), "sites": sites, "site_sizes": dict(sorted(sizes.items())),
               "num_sites": settings["num_sites"], "strategy": settings["strategy"], "split": settings["split"],
               "local_epochs": settings["local_epochs"], "min_sites": settings["min_sites"],
               "dropped": {str(e["round"]): sorted(e["dropped"]) for e in rounds if e["dropped"]},
               **record.get("parts", {})}
    if settings["split"] != "iid":
        summary["alpha"] = settings["alpha"]
    if settings["strategy"] == "fedprox":
        summary["proximal_mu"] = settings["proximal_mu"]
    elif settings["strategy"] == "fedadam":
        summary["server_lr"] = settings["server_lr"]
    if settings.get("secure_aggregation") is not None:
        # what the server held of each site: only the masked sum of the updates, and these figures in the clear
        seen = sorted({key for entry in rounds for metrics in entry["sites"].values() for key in metrics})
        summary["secure_aggregation"] = {"protocol": "SecAgg+", **settings["secure_aggregation"],
                                         **record.get("secure_aggregation", {}), "in_the_clear": seen}
    last = _last_privacy(rounds)
    if last:
        summary["epsilon"] = max(p["epsilon"] for p in last.values())
        summary["delta"] = max(p["delta"] for p in last.values())
        summary["epsilon_per_site"] = {site: p["epsilon"] for site, p in sorted(last.items())}
        summary["delta_per_site"] = {site: p["delta"] for site, p in sorted(last.items())}
    return summary


def _last_privacy(rounds: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Each site's latest (epsilon, delta): the accountant composes, so the last round a site took part in."""
    latest: dict[str, dict[str, float]] = {}
    for entry in rounds:
        for site, metrics in entry["sites"].items():
            if "epsilon" in metrics:
                latest[site] = {"epsilon": metrics["epsilon"], "delta": metrics["delta"]}
    return latest


def read_federation(folder: str | Path) -> dict[str, Any] | None:
    """The record (``settings``, ``rounds``, ``summary``...) of the federation that trained the generator
    in ``folder``; ``None`` when no federation trained it (no :data:`FEDERATION_RECORD` there)."""
    path = Path(folder) / FEDERATION_RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(record.get("summary"), dict) or not isinstance(record.get("settings"), dict):
            raise ValueError("no summary or settings")
    except (OSError, ValueError, AttributeError) as err:
        raise ValueError(f"{path} is not a federation record ({err}): restore the file `medaug federate` wrote, "
                         "or delete it if no federation trained this generator") from None
    return record
