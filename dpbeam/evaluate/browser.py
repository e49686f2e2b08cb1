"""Rendering the report in a real headless browser (Chromium): the DOM after load, and a screenshot.

Used by the report test (every plot decoded, no script error) and by the benchmark (a screenshot).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser() -> str | None:
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _args(browser: str) -> list[str]:
    args = [browser, "--headless", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=10000",
            "--disable-dev-shm-usage", "--no-first-run"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        args.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
    return args


def dump_dom(html_path: str | Path, timeout: float = 120) -> str:
    """The DOM of the page after its load handlers ran."""
    browser = find_browser()
    if browser is None:
        raise FileNotFoundError("no Chromium found; install it (apt-get install chromium)")
    url = Path(html_path).resolve().as_uri()
    out = subprocess.run(_args(browser) + ["--dump-dom", url], capture_output=True, text=True, timeout=timeout,
                         check=True)
    return out.stdout


def screenshot(html_path: str | Path, png_path: str | Path, width: int = 1200, height: int = 2400,
               timeout: float = 120) -> Path:
    browser = find_browser()
    if browser is None:
        raise FileNotFoundError("no Chromium found; install it (apt-get install chromium)")
    png = Path(png_path).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(_args(browser) + [f"--screenshot={png}", f"--window-size={width},{height}",
                                     Path(html_path).resolve().as_uri()],
                   capture_output=True, text=True, timeout=timeout, check=True)
    return png


def render_check(dom: str) -> dict[str, int]:
    """The marks the report's load script wrote on <body>: images, images decoded, script errors."""
    body = re.search(r"<body([^>]*)>", dom)
    attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', body.group(1))) if body else {}
    return {"images": int(attrs.get("data-images", -1)), "images_ok": int(attrs.get("data-images-ok", -1)),
            "errors": int(attrs.get("data-errors", 0)), "marker": int("id=\"render-check\"" in dom)}
