"""Self-contained HTML and Markdown reports: inlined figures, escaping, relative links only."""

import base64
import re

import pytest
import torch

from lightning_medaug.rendering import save_image_grid
from lightning_medaug.rendering.html import (
    Figure,
    Section,
    Table,
    format_value,
    render_markdown,
    write_report,
)


def _sections():
    return [
        Section("Scores", paragraphs=["A <b>bold</b> claim & more."],
                tables=[Table(("metric", "value"), [("fd", 0.123456), ("note", "a|b <script>x</script>"),
                                                    ("missing", None), ("flag", True)], caption="n=16")],
                notes=["one note"]),
        Section("Pictures", figures=[Figure("grid.png", "a grid"), Figure("sub/second.png")]),
    ]


def test_html_inlines_figures_and_escapes_text(tmp_path):
    save_image_grid(torch.rand(4, 1, 8, 8) * 2 - 1, tmp_path / "grid.png")
    save_image_grid(torch.rand(2, 1, 4, 8, 8) * 2 - 1, tmp_path / "sub" / "second.png")
    html_path, md_path = write_report(tmp_path, "Title & co", _sections(), subtitle="sub")
    html = html_path.read_text(encoding="utf-8")
    sources = re.findall(r'src="([^"]*)"', html)
    assert len(sources) == 2 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert base64.b64decode(sources[0].split(",", 1)[1]) == (tmp_path / "grid.png").read_bytes()
    assert "<script>" not in html and "&lt;script&gt;" in html and "Title &amp; co" in html
    assert "<td>0.1235</td>" in html and "<td>\u2013</td>" in html and "<td>yes</td>" in html
    assert str(tmp_path) not in html and "one note" in html and "<caption>n=16</caption>" in html

    markdown = md_path.read_text(encoding="utf-8")
    assert markdown.startswith("# Title & co\n") and "![a grid](grid.png)" in markdown
    assert "![sub/second.png](sub/second.png)" in markdown
    assert "| note | a\\|b <script>x</script> |" in markdown and "- one note" in markdown
    assert markdown == render_markdown("Title & co", _sections(), subtitle="sub")


def test_bad_figures_and_tables_are_refused(tmp_path):
    for bad in (str(tmp_path / "grid.png"), "../grid.png", ""):
        with pytest.raises(ValueError, match="relative to the report folder"):
            Figure(bad)
    with pytest.raises(ValueError, match="2 cells, the header 3"):
        Table(("a", "b", "c"), [(1, 2)])
    with pytest.raises(FileNotFoundError, match="not found"):
        write_report(tmp_path, "t", [Section("s", figures=[Figure("absent.png")])])
    assert format_value(float("nan")) == "nan" and format_value(float("inf")) == "inf"
    assert format_value({"a": 1.0, "b": [1, 2]}) == "a: 1, b: 1, 2"
