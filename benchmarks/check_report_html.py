"""Open the ablation report's HTML page in headless Chromium and check that it reads as intended.

Usage: ``python benchmarks/check_report_html.py [--report results/workbook/report]``. Without
``--report`` it writes a report from made-up per-query results into a temporary folder first, so
the check runs without a finished workbook. It needs a ``chromium`` (or ``chromium-browser`` /
``google-chrome``) executable on PATH; it is not part of the test suite.

Checked in the browser, after the page and its images loaded: every plot image decoded, the
tables exist and are styled by the embedded stylesheet, and the visible text holds no literal
Markdown (``**``, ``| ---``). The page is also printed to PDF and screenshotted; both must be
non-empty files of their format. Writes results/benchmarks/report_html.json and exits 1 when a
check fails.
"""
from __future__ import annotations

import argparse
import html
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import write_result  # noqa: E402

BROWSERS = ("chromium", "chromium-browser", "google-chrome")

# Appended to a copy of the page: records what the browser made of it in a body attribute,
# which --dump-dom then prints.
PROBE = """<script>
window.addEventListener("load", () => {
  const images = [...document.images];
  const table = document.querySelector("table");
  const text = document.body.innerText;
  document.body.setAttribute("data-check", JSON.stringify({
    images: images.length,
    decoded: images.filter(i => i.complete && i.naturalWidth > 0).length,
    tables: document.querySelectorAll("table").length,
    border_collapse: table ? getComputedStyle(table).borderCollapse : null,
    literal_markdown: text.includes("**") || /\\|\\s*---/.test(text),
    has_noise_rule: text.includes("Noise rule"),
  }));
});
</script>
"""


def sample_report(folder: Path) -> Path:
    """A report of made-up studies (two baselines, one leave-one-out, one add-one-in)."""
    import numpy as np

    from xtfclip_lib.workbook.report import StudyResult, summarise, write_report

    def study(name, kind, p_hit, seeds, seed0):
        results = {}
        for s in range(seeds):
            rng = np.random.default_rng(seed0 + 100 * s)
            results[s] = {}
            for case, n in (("aerial_to_ground", 200), ("ground_to_aerial", 150)):
                first = np.where(rng.random(n) < p_hit, 1, rng.integers(2, 30, n))
                ap = np.clip(rng.random(n) * 0.3 + (first == 1) * 0.6, 0, 1)
                results[s][case] = {"first_rank": first, "ap": ap, "inp": ap * 0.8}
        return StudyResult(name, kind, None if kind == "baseline" else name, results)

    summary = summarise([study("tf_clip", "baseline", 0.3, 3, 0), study("x_tfclip", "baseline", 0.7, 3, 7),
                         study("loo_attention_pooling", "leave_one_out", 0.69, 1, 7),
                         study("aoi_attention_pooling", "add_one_in", 0.6, 1, 3)], num_bootstrap=200)
    write_report(summary, folder, {"dataset": "made-up per-query results (check_report_html)",
                                   "seeds": "tf_clip and x_tfclip: 3 seeds each; the other 2: 1 seed each"})
    return folder


def browser() -> str:
    for name in BROWSERS:
        if shutil.which(name):
            return shutil.which(name)
    raise SystemExit(f"no headless browser found on PATH (tried {', '.join(BROWSERS)})")


def run_browser(exe: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--virtual-time-budget=10000", *args], capture_output=True, text=True, timeout=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", default=None,
                        help="report folder holding ablation.html and its PNGs (default: a sample report)")
    args = parser.parse_args(argv)
    exe = browser()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "report"
        if args.report:
            shutil.copytree(args.report, work)
        else:
            sample_report(work)
        page = work / "ablation.html"
        probe = work / "probe.html"
        probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
        dom = run_browser(exe, "--dump-dom", probe.as_uri())
        found = re.search(r'data-check="([^"]*)"', dom.stdout)
        seen = json.loads(html.unescape(found.group(1))) if found else {}
        pdf, png = Path(tmp) / "report.pdf", Path(tmp) / "report.png"
        run_browser(exe, f"--print-to-pdf={pdf}", "--no-pdf-header-footer", page.as_uri())
        run_browser(exe, f"--screenshot={png}", "--window-size=1200,2400", page.as_uri())
        checks = {
            "page loaded (probe ran)": bool(seen),
            "every image decoded": bool(seen) and seen["images"] >= 2 and seen["decoded"] == seen["images"],
            "tables present": seen.get("tables", 0) >= 4,
            "stylesheet applied": seen.get("border_collapse") == "collapse",
            "no literal markdown in the visible text": seen.get("literal_markdown") is False,
            "noise rule stated": seen.get("has_noise_rule") is True,
            "no literal ** in the HTML source": "**" not in page.read_text(),
            "PDF written": pdf.is_file() and pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 10_000,
            "screenshot written": png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n",
        }
        sizes = {"pdf_bytes": pdf.stat().st_size if pdf.is_file() else 0,
                 "png_bytes": png.stat().st_size if png.is_file() else 0}
    for name, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
    path = write_result("report_html", {"report": args.report or "sample", "browser": exe,
                                        "browser_saw": seen, **sizes, "checks": checks})
    print(f"wrote {path}")
    if not found:
        print(dom.stderr[-2000:], file=sys.stderr)
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
