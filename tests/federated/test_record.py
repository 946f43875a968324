"""The federation's record: its summary, its reader's refusal of a broken file, and no Flower behind the readers."""

import ast
import json
from pathlib import Path

import pytest

from lightning_medaug.federated.record import FEDERATION_RECORD, federation_summary, read_federation

PACKAGE = Path(__file__).resolve().parents[2] / "lightning_medaug"


def test_summary_names_each_site_its_last_size_and_epsilon():
    settings = {"num_sites": 2, "strategy": "fedprox", "proximal_mu": 0.1, "split": "label_skew", "alpha": 0.3,
                "local_epochs": 1, "min_sites": 1, "server_lr": 0.01}
    rounds = [{"round": 1, "dropped": {}, "sites": {"a": {"num-examples": 5, "epsilon": 1.0, "delta": 0.01},
                                                    "b": {"num-examples": 7, "epsilon": 1.5, "delta": 0.02}}},
              {"round": 2, "dropped": {"b": "offline"}, "sites": {"a": {"num-examples": 5, "epsilon": 2.0,
                                                                        "delta": 0.01}}}]
    summary = federation_summary({"settings": settings, "rounds": rounds, "parts": {"averaged": ["g"]}})
    assert summary["dropped"] == {"2": ["b"]} and summary["site_sizes"] == {"a": 5, "b": 7}
    assert summary["epsilon_per_site"] == {"a": 2.0, "b": 1.5}  # b's accountant stopped when it dropped out
    assert (summary["epsilon"], summary["delta"]) == (2.0, 0.02) and summary["averaged"] == ["g"]
    assert summary["alpha"] == 0.3 and summary["proximal_mu"] == 0.1 and "server_lr" not in summary
    assert json.loads(json.dumps(summary)) == summary  # the same once written to federation.json or bank.json


def test_reader_returns_none_without_a_record_and_refuses_a_broken_one(tmp_path):
    assert read_federation(tmp_path) is None
    (tmp_path / FEDERATION_RECORD).write_text('{"rounds": []}', encoding="utf-8")
    with pytest.raises(ValueError, match="is not a federation record"):
        read_federation(tmp_path)


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_the_bank_and_the_model_card_read_the_record_without_flower():
    """They import ``federated.record`` only, and the federated package imports Flower only in its apps."""
    readers = [*(PACKAGE / "bank").glob("*.py"), *(PACKAGE / "model_card").glob("*.py")]
    federated = {m for path in readers for m in _imports(path) if m.startswith("lightning_medaug.federated")}
    assert federated == {"lightning_medaug.federated.record"}
    loaded = ("__init__.py", "record.py", "sites.py")
    assert not any(m.split(".")[0] == "flwr" for name in loaded for m in _imports(PACKAGE / "federated" / name))
    assert {m for m in _imports(PACKAGE / "federated" / "__init__.py") if m.startswith("lightning_medaug.federated")} \
        <= {"lightning_medaug.federated.sites"}
