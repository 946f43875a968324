"""Render a ``medaug evaluate`` (or ``medaug study``) HTML report in headless Chromium and screenshot it.

The report is self-contained (figures inlined), so the browser loads it from disk with network
access off; the screenshot proves it renders as a page, not only as a file a test parsed. Prints
one JSON line: the PNG written, its size, and how much of it is not page background (a blank or
broken render is almost all background). Exit code 1 when the render looks blank.

    python benchmarks/report_screenshot.py runs/eval/report.html --out runs/eval/report.png
    CHROMIUM=/path/to/chrome python benchmarks/report_screenshot.py REPORT.html

Needs a Chromium or Chrome binary: ``$CHROMIUM``, else ``chromium``, ``chromium-browser``,
``google-chrome`` on ``PATH`` (on Debian/Ubuntu: ``apt-get install chromium``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from _common import emit

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
#: flags for a sandboxed CI machine: no GPU, no first-run or background connections (they would be
#: refused on a closed network and slow the start), a fresh profile.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--allow-file-access-from-files")


def find_browser() -> str | None:
    """The Chromium/Chrome binary to use, if any."""
    env = os.environ.get("CHROMIUM")
    if env:
        return env
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def screenshot(html: Path, out: Path, width: int = 1280, height: int = 4000, timeout: float = 120) -> Path:
    """Render ``html`` at ``width`` x ``height`` CSS pixels into the PNG ``out``."""
    browser = find_browser()
    if browser is None:
        raise FileNotFoundError("no Chromium or Chrome found: install one (apt-get install chromium) or set "
                                "CHROMIUM=/path/to/binary")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        cmd = [browser, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
               f"--screenshot={out.resolve()}", html.resolve().as_uri()]
        done = subprocess.run(cmd, check=False, capture_output=True, text=True, encoding="utf-8", errors="replace",
                              timeout=timeout)
    if not out.is_file():
        raise RuntimeError(f"{browser} wrote no screenshot (exit code {done.returncode}): {done.stderr[-800:]}")
    return out


def content_fraction(png: Path) -> float:
    """Share of pixels that differ from the most common colour (the page background)."""
    import matplotlib.image as mpimg

    pixels = (mpimg.imread(png)[..., :3] * 255).astype(np.uint8).reshape(-1, 3)
    colours, counts = np.unique(pixels, axis=0, return_counts=True)
    background = colours[counts.argmax()]
    return float((np.abs(pixels.astype(int) - background).sum(1) > 24).mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("html", type=Path, help="report.html (or the report folder)")
    parser.add_argument("--out", type=Path, default=None, help="PNG to write (default: beside the report)")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=4000)
    parser.add_argument("--min-content", type=float, default=0.02,
                        help="fail when less than this share of the page is not background")
    parser.add_argument("--results", default=None, help="also append the JSON line to this file")
    args = parser.parse_args(argv)
    html = args.html / "report.html" if args.html.is_dir() else args.html
    if not html.is_file():
        parser.error(f"{html} not found: pass the report.html that `medaug evaluate` wrote")
    out = args.out or html.with_suffix(".png")
    screenshot(html, out, args.width, args.height)
    fraction = content_fraction(out)
    ok = fraction >= args.min_content
    emit({"benchmark": "report_screenshot", "report": html.name, "png": str(out), "png_kb": round(out.stat().st_size
          / 1024, 1), "width": args.width, "height": args.height, "content_fraction": round(fraction, 4),
          "renders": ok}, args.results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
