"""The model card's "Federated training" section, from the ``federation.json`` beside the weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning_medaug.federated.record import read_federation

__all__ = ["federation_context"]

_STRATEGIES = {"fedavg": "FedAvg (McMahan et al. 2017)", "fedprox": "FedProx (Li et al. 2020)",
               "fedadam": "FedAdam (Reddi et al. 2021)"}
_SPLITS = {"iid": "IID shares of one training split", "label_skew": "label-skewed shares (Dirichlet over classes)",
           "quantity_skew": "shares of skewed size (Dirichlet over sites)"}


def federation_context(folder: Path) -> dict[str, Any] | None:
    """Rows of the section for the generator in ``folder``; ``None`` when no federation trained it."""
    record = read_federation(folder)
    if record is None:
        return None
    s = record["summary"]
    strategy = _STRATEGIES.get(s["strategy"], s["strategy"])
    if "proximal_mu" in s:
        strategy += f", mu {s['proximal_mu']:g}"
    if "server_lr" in s:
        strategy += f", server learning rate {s['server_lr']:g}"
    split = _SPLITS.get(s["split"], s["split"]) + (f", alpha {s['alpha']:g}" if "alpha" in s else "")
    dropped = "; ".join(f"round {r}: {', '.join(sites)}" for r, sites in s.get("dropped", {}).items())
    rows = [("rounds", str(s["rounds"])), ("sites", str(len(s["sites"]))), ("strategy", strategy),
            ("local epochs per round", str(s["local_epochs"])), ("sites' data", split),
            ("averaged by the server", ", ".join(s.get("averaged", [])) or "not recorded"),
            ("kept at each site", ", ".join(s.get("kept_at_sites", [])) or "nothing (integer counters aside)"),
            ("sites that dropped out", dropped or "none")]
    secure = s.get("secure_aggregation")
    if secure:
        bound = f", error at most {secure['max_error']:.2g} per weight" if "max_error" in secure else ""
        rows.append(("secure aggregation", f"{secure.get('protocol', 'SecAgg+')}: the server saw only the sum of "
                     f"the sites' masked updates (quantized{bound}); in the clear: "
                     f"{', '.join(secure.get('in_the_clear', [])) or 'nothing'}"))
    eps, delta = s.get("epsilon_per_site", {}), s.get("delta_per_site", {})
    sites = [(site, str(s.get("site_sizes", {}).get(site, "not recorded")),
              f"{eps[site]:.3g}" if site in eps else "no DP", f"{delta[site]:.3g}" if site in delta else "-")
             for site in s["sites"]]
    return {"num_sites": len(s["sites"]), "rows": rows, "sites": sites, "secure": bool(secure),
            "delta": f"{s['delta']:.3g}" if "delta" in s else None,
            "epsilon": f"{s['epsilon']:.3g}" if "epsilon" in s else None}
