"""Self-contained reports: one HTML file (images inlined as base64 data URIs) and the same content
as Markdown (images as relative links), rendered from a list of :class:`Section`.

The HTML needs nothing beside it: it can be mailed, attached to an issue or opened from any
folder. The Markdown reads well on GitHub next to its PNGs. Figures are named relative to the
report folder, so neither output holds a path of the machine that wrote it.
"""

from __future__ import annotations

import base64
import math
import mimetypes
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import jinja2

__all__ = ["Figure", "Section", "Table", "data_uri", "format_value", "render_html", "render_markdown",
           "write_report"]


@dataclass(frozen=True)
class Table:
    """A table: ``header`` names the columns, each row holds one value per column (formatted by
    :func:`format_value`)."""

    header: Sequence[str]
    rows: Sequence[Sequence[Any]]
    caption: str | None = None

    def __post_init__(self) -> None:
        for row in self.rows:
            if len(row) != len(self.header):
                raise ValueError(f"table row {list(row)!r} has {len(row)} cells, the header {len(self.header)}")


@dataclass(frozen=True)
class Figure:
    """An image file inside the report folder, named relative to it (``"grid.png"``)."""

    file: str
    caption: str | None = None

    def __post_init__(self) -> None:
        path = PurePosixPath(self.file.replace("\\", "/"))
        if path.is_absolute() or Path(self.file).is_absolute() or ".." in path.parts or not path.parts:
            raise ValueError(f"figure file {self.file!r} must be a path relative to the report folder, "
                             "inside it (e.g. 'grid.png')")


@dataclass(frozen=True)
class Section:
    """A titled part of a report: paragraphs of plain text, then tables, then figures."""

    title: str
    paragraphs: Sequence[str] = ()
    tables: Sequence[Table] = ()
    figures: Sequence[Figure] = ()
    notes: Sequence[str] = field(default_factory=tuple)


def format_value(value: Any) -> str:
    """A table cell: floats with 4 significant digits, ``None`` as an en dash, lists comma-joined."""
    if value is None:
        return "\u2013"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(format_value(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}: {format_value(v)}" for k, v in value.items())
    return str(value)


def data_uri(path: str | Path) -> str:
    """The file as a ``data:<mime>;base64,...`` URI."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"report figure {path} not found: write it before rendering the report")
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


_HTML = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1100px;
       padding: 0 1em; color: #1d2329; line-height: 1.45; }
h1 { font-size: 1.6em; border-bottom: 2px solid #d0d7de; padding-bottom: .3em; }
h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #d0d7de; padding-bottom: .2em; }
.subtitle { color: #57606a; }
table { border-collapse: collapse; margin: 1em 0; font-size: .92em; }
caption { caption-side: top; text-align: left; font-weight: 600; padding-bottom: .3em; }
th, td { border: 1px solid #d0d7de; padding: .3em .7em; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
td { font-variant-numeric: tabular-nums; }
figure { margin: 1em 0; }
figure img { max-width: 100%; image-rendering: pixelated; border: 1px solid #d0d7de; }
figcaption { color: #57606a; font-size: .9em; }
.notes { color: #57606a; font-size: .9em; }
</style>
</head>
<body>
<h1>{{ title }}</h1>
{% if subtitle %}<p class="subtitle">{{ subtitle }}</p>{% endif %}
{% for section in sections %}
<section>
<h2>{{ section.title }}</h2>
{% for paragraph in section.paragraphs %}<p>{{ paragraph }}</p>
{% endfor %}
{% for table in section.tables %}
<table>
{% if table.caption %}<caption>{{ table.caption }}</caption>{% endif %}
<thead><tr>{% for name in table.header %}<th>{{ name }}</th>{% endfor %}</tr></thead>
<tbody>
{% for row in table.rows %}<tr>{% for cell in row %}<td>{{ cell }}</td>{% endfor %}</tr>
{% endfor %}
</tbody>
</table>
{% endfor %}
{% for figure in section.figures %}
<figure><img src="{{ figure.uri }}" alt="{{ figure.caption or figure.file }}">
{% if figure.caption %}<figcaption>{{ figure.caption }}</figcaption>{% endif %}</figure>
{% endfor %}
{% if section.notes %}<ul class="notes">{% for note in section.notes %}<li>{{ note }}</li>{% endfor %}</ul>{% endif %}
</section>
{% endfor %}
</body>
</html>
"""

_ENVIRONMENT = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                                  lstrip_blocks=True)


def _table_context(table: Table) -> dict[str, Any]:
    return {"caption": table.caption, "header": [str(h) for h in table.header],
            "rows": [[format_value(c) for c in row] for row in table.rows]}


def render_html(title: str, sections: Sequence[Section], folder: str | Path, subtitle: str | None = None) -> str:
    """The report as one HTML document; figures are read from ``folder`` and inlined."""
    folder = Path(folder)
    context = [{"title": s.title, "paragraphs": list(s.paragraphs), "notes": list(s.notes),
                "tables": [_table_context(t) for t in s.tables],
                "figures": [{"file": f.file, "caption": f.caption, "uri": data_uri(folder / f.file)}
                            for f in s.figures]}
               for s in sections]
    return _ENVIRONMENT.from_string(_HTML).render(title=title, subtitle=subtitle, sections=context)


def _md_cell(value: Any) -> str:
    return format_value(value).replace("|", "\\|").replace("\n", " ")


def render_markdown(title: str, sections: Sequence[Section], subtitle: str | None = None) -> str:
    """The report as Markdown; figures are relative links, so the PNGs must sit beside it."""
    lines = [f"# {title}", ""]
    if subtitle:
        lines += [subtitle, ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        for paragraph in section.paragraphs:
            lines += [paragraph, ""]
        for table in section.tables:
            if table.caption:
                lines += [f"**{table.caption}**", ""]
            lines.append("| " + " | ".join(_md_cell(h) for h in table.header) + " |")
            lines.append("|" + "---|" * len(table.header))
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.rows]
            lines.append("")
        for figure in section.figures:
            lines += [f"![{figure.caption or figure.file}]({PurePosixPath(figure.file.replace(chr(92), '/'))})", ""]
            if figure.caption:
                lines += [f"*{figure.caption}*", ""]
        for note in section.notes:
            lines.append(f"- {note}")
        if section.notes:
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def write_report(folder: str | Path, title: str, sections: Sequence[Section], subtitle: str | None = None,
                 stem: str = "report") -> tuple[Path, Path]:
    """Write ``<stem>.html`` (self-contained) and ``<stem>.md`` into ``folder``; returns both paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    html_path, md_path = folder / f"{stem}.html", folder / f"{stem}.md"
    html_path.write_text(render_html(title, sections, folder, subtitle), encoding="utf-8")
    md_path.write_text(render_markdown(title, sections, subtitle), encoding="utf-8")
    return html_path, md_path
