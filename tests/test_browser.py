"""report.html in a real browser: Debian's chromium, headless, at a desktop's width (1280×800) and a phone's
(390×844), on a results directory of 13 strategies (every registered one, two with options of their own).

A script measures the laid-out page once it has loaded and writes the figures into the DOM, which `--dump-dom`
prints: the page must not scroll sideways, every table must sit in a box that scrolls it,
no interval may break across lines, every figure must fit the page. The screenshots (the viewport at each size) are
kept under results/browser/ for a person to look at (CI keeps them as artefacts).

Skipped where no chromium is installed; `.ci/run` installs Debian's `chromium` where it can.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ambig_bench.report import report
from tests.conftest import short_tmpdir
from tests.test_report import MANY, plant_many

BROWSER = next((path for name in ("chromium", "chromium-browser", "google-chrome") if (path := shutil.which(name))),
               None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no chromium, chromium-browser or google-chrome on PATH "
                                                        "(.ci/run installs Debian's chromium with apt as root)")

SCREENSHOTS = Path(__file__).resolve().parents[1] / "results" / "browser"
SIZES = {"desktop": (1280, 800), "phone": (390, 844)}

# Chromium's headless window is at least 500 px wide, so the report is shown in a frame of exactly the size (its own
# viewport: the page lays out at the frame's width as on a phone's screen). Once the frame has loaded, the script
# measures inside it and writes the answer into the outer page, which `--dump-dom` prints.
FRAME = """<!DOCTYPE html><html><head><meta charset="utf-8"><style>body{{margin:0}}iframe{{border:0;display:block}}
</style></head><body><iframe width="{width}" height="{height}" srcdoc="{report}"></iframe><script>
addEventListener("load", () => {{
  const frame = document.querySelector("iframe"), doc = frame.contentDocument;
  const style = (element) => frame.contentWindow.getComputedStyle(element);
  const page = doc.documentElement, width = page.clientWidth;
  const out = (element) => Math.round(element.getBoundingClientRect().right) > width;
  const answer = document.createElement("pre");
  answer.id = "measured";
  answer.hidden = true;  // out of the layout and the screenshot
  answer.textContent = JSON.stringify({{
    width, scrollWidth: page.scrollWidth,
    tables: doc.querySelectorAll("table").length,
    unboxed: [...doc.querySelectorAll("table")].filter(t => {{
      const box = t.parentElement;
      return !box.classList.contains("scroll") || style(box).overflowX !== "auto" || out(box);
    }}).length,
    scrolling: [...doc.querySelectorAll(".scroll")].filter(box => box.scrollWidth > box.clientWidth).length,
    intervals: doc.querySelectorAll(".n").length,
    broken: [...doc.querySelectorAll(".n")].filter(e => e.getClientRects().length > 1).map(e => e.textContent),
    figures: [...doc.images].map(i => ({{loaded: i.complete && i.naturalWidth > 0, out: out(i)}})),
    outside: [...doc.body.querySelectorAll("h1, h2, h3, p, li")].filter(out).map(e => e.textContent.slice(0, 60)),
  }});
  document.body.append(answer);
}});</script></body></html>"""


@pytest.fixture(scope="module")
def report_html(tmp_path_factory) -> str:
    """report.html of 13 strategies × 3 seeds."""
    out = tmp_path_factory.mktemp("browser") / "many"
    plant_many(out)
    report(out)
    return (out / "report.html").read_text()


def open_in_browser(report_html: str, size: tuple[int, int], page: Path, screenshot: Path) -> dict:
    """What the script measured with the report laid out at `size` (the frame written to `page`); the screenshot of it
    saved to `screenshot`."""
    page.write_text(FRAME.format(width=size[0], height=size[1], report=html.escape(report_html)))
    command = [BROWSER, "--headless=new", "--no-sandbox", "--disable-gpu", f"--window-size={size[0]},{size[1]}",
               "--virtual-time-budget=5000", f"--screenshot={screenshot}", "--dump-dom", page.as_uri()]
    # chromium's singleton socket lives under TMPDIR: a long TMPDIR makes its path too long for a Unix socket.
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False, env=short_tmpdir())
    found = re.search(r'<pre id="measured"[^>]*>(.*?)</pre>', done.stdout, re.S)
    assert found, f"{BROWSER} exited {done.returncode} without the page's measurements: {done.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1)))


@pytest.mark.parametrize("size", SIZES)
def test_report_fits_the_page_in_a_real_browser(report_html, size, tmp_path):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    screenshot = SCREENSHOTS / f"report-{size}-{SIZES[size][0]}x{SIZES[size][1]}.png"
    screenshot.unlink(missing_ok=True)
    m = open_in_browser(report_html, SIZES[size], tmp_path / "frame.html", screenshot)
    assert SIZES[size][0] - 20 <= m["width"] <= SIZES[size][0], "laid out at the window's width, less a scrollbar"
    assert m["scrollWidth"] <= m["width"], "the page scrolls sideways"
    assert m["tables"] >= 9 and m["unboxed"] == 0, "every table scrolls in a box of its own, inside the page"
    assert m["intervals"] >= 10 * len(MANY) and m["broken"] == [], "an interval broke across lines"
    assert len(m["figures"]) == 5 and all(f["loaded"] and not f["out"] for f in m["figures"])
    assert m["outside"] == [], "text runs past the page's edge"
    if size == "phone":
        assert m["scrolling"] > 0, "at a phone's width the widest tables scroll inside their boxes"
    assert screenshot.read_bytes()[:4] == b"\x89PNG"
