"""Open a page in headless Chromium (Debian's ``chromium``, installed by `scripts/setup.sh --dev`) and
report what rendered: figures with an SVG and drawn paths, console and page errors, whether an
injected payload ran, and whether a screenshot is blank."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ERRORS = (
    "<script>window.__errors=[];window.addEventListener('error',e=>"
    "window.__errors.push(String(e.message)));const ce=console.error;console.error="
    "(...a)=>{window.__errors.push(a.join(' '));ce(...a)};</script>"
)
REPORT = (
    "<script>window.addEventListener('load',()=>setTimeout(()=>{"
    "const figs=[...document.querySelectorAll('.fig .js-plotly-plot')];"
    "const ok=figs.filter(f=>f.querySelector('svg.main-svg')&&"
    "f.querySelectorAll('path').length>5).length;"
    "document.body.setAttribute('data-figs',figs.length);"
    "document.body.setAttribute('data-ok',ok);"
    "document.body.setAttribute('data-errors',window.__errors.length);"
    "document.body.setAttribute('data-errtext',window.__errors.join(' | ').slice(0,500));"
    "document.body.setAttribute('data-pwned',String(window.__pwned||0));},1500));"
    "</script></body>"
)


def chromium() -> str | None:
    return next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
    )


needs_chromium = pytest.mark.skipif(
    chromium() is None, reason="no Chromium on this machine (README set-up installs it)"
)


def _chrome(*args: str) -> subprocess.CompletedProcess[str]:
    exe = chromium()
    assert exe is not None
    return subprocess.run(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=8000", *args],
        capture_output=True,
        text=True,
        timeout=180,
    )


def render(page: Path, tmp: Path) -> dict[str, Any]:
    """Load ``page`` (a copy with an error collector and a report script) and screenshot it."""
    probe = tmp / "probe.html"
    probe.write_text(
        page.read_text().replace("<head>", "<head>" + ERRORS, 1).replace("</body>", REPORT)
    )
    out = _chrome("--dump-dom", probe.as_uri())
    dom = out.stdout

    def attr(name: str) -> str:
        m = re.search(rf'data-{name}="([^"]*)"', dom)
        assert m, f"the page never reported {name}: {out.stderr[-2000:]}"
        return m.group(1)

    shot = tmp / "shot.png"
    _chrome(f"--screenshot={shot}", "--window-size=1200,2000", page.as_uri())
    from PIL import Image

    lo, hi = Image.open(shot).convert("L").getextrema()
    return {
        "figs": int(attr("figs")),
        "ok": int(attr("ok")),
        "errors": int(attr("errors")),
        "errtext": attr("errtext"),
        "pwned": attr("pwned"),
        "contrast": hi - lo,
        "dom": dom,
    }
