"""The README's "Your own data" snippets run as pasted (each in a fresh interpreter, in an empty folder)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _snippets() -> list[str]:
    text = README.read_text()
    section = text.split("## Your own data", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_section_has_the_promised_snippets():
    code = "\n".join(_snippets())
    for name in ("datasets.ImageFolder", "medmnist.PneumoniaMNIST", "WeightedRandomSampler", "list_data_collate",
                 "tio.SubjectsLoader", "spacing"):
        assert name in code, name


@pytest.mark.parametrize("index", range(4))
def test_snippet_runs_as_pasted(index, tmp_path):
    snippet = _snippets()[index]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, encoding="utf-8",
                          errors="replace", timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
