#!/usr/bin/env python
"""The offline report of a real audit of the 500 imagenet-sample images (EfficientNet-Lite0, Grad-CAM, the
recognizer judge), measured in one run:

1. build time and size of `localjudge report` (thumbnails, data, page);
2. in headless Chromium (Debian's, /usr/bin/chromium): time to first render (the page's own mark when its first
   page of cards is in the document, and the browser's first contentful paint), and the time the WH filter takes;
3. the same page with its data repeated 20 times (10,000 samples, the same thumbnails) to show it stays responsive;
4. screenshots of the report and of the rating page, for people to look at.

    python scripts/bench_report.py [--db audit.db] [--out DIR] [--images 500]

With --db of an existing audit nothing is computed but the report. Screenshots land in OUT/screenshots/.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from sample_data import imagenet_manifest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]
PREFIX = "window.LOCALJUDGE_REPORT = "


def localjudge(*args) -> str:
    result = subprocess.run([sys.executable, "-m", "localjudge", *map(str, args)], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"localjudge {' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def folder_bytes(folder: Path, pattern: str = "*") -> int:
    return sum(p.stat().st_size for p in folder.rglob(pattern) if p.is_file())


def measure_page(browser, folder: Path, screenshot: Path | None = None) -> dict:
    """Load the report cold, read its timings, then time the WH filter."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    started = time.perf_counter()
    page.goto((folder / "index.html").as_uri())
    page.wait_for_selector("body[data-ready='1']")
    wall = time.perf_counter() - started
    timings = page.evaluate("""() => ({
        first_render_ms: window.LOCALJUDGE_FIRST_RENDER_MS,
        first_contentful_paint_ms: (performance.getEntriesByName('first-contentful-paint')[0] || {}).startTime,
        dom_content_loaded_ms: performance.timing.domContentLoadedEventEnd - performance.timing.navigationStart,
        samples: Number(document.body.dataset.selected)})""")
    if screenshot:
        page.screenshot(path=str(screenshot))
    started = time.perf_counter()
    page.select_option("#quadrant", "WH")
    page.wait_for_selector("#matrix td.WH.active")
    filter_ms = 1000 * (time.perf_counter() - started)
    selected = int(page.get_attribute("body", "data-selected"))
    if screenshot:
        page.screenshot(path=str(screenshot.with_name(screenshot.stem + "-wh.png")))
    context.close()
    return {**timings, "wall_to_ready_ms": 1000 * wall, "wh_filter_ms": filter_ms, "wh_samples": selected}


def repeated(folder: Path, times: int, into: Path) -> Path:
    """The report with its data repeated `times` times (ids made unique), sharing the original's thumbnails."""
    into.mkdir(parents=True, exist_ok=True)
    for name in ("index.html", "report.js", "report.css"):
        shutil.copyfile(folder / name, into / name)
    if not (into / "thumbs").exists():
        (into / "thumbs").symlink_to((folder / "thumbs").resolve())
    text = (folder / "data.js").read_text()
    data = json.loads(text[len(PREFIX):].rstrip().rstrip(";"))
    rows = data["rows"]
    data["rows"] = [[f"{row[0]}-{n}", *row[1:]] for n in range(times) for row in rows]
    data["meta"]["samples"] = len(data["rows"])
    (into / "data.js").write_text(PREFIX + json.dumps(data, separators=(",", ":")) + ";\n")
    return into


def rating_screenshot(browser, db: Path, path: Path) -> None:
    from localjudge.rating import RatingServer

    server = RatingServer(db, port=0, rater="auditor")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        page = browser.new_page(viewport={"width": 1300, "height": 1000})
        page.goto(server.url)
        page.wait_for_selector("body[data-view]:not([data-view=''])")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not page.locator("#picture").evaluate(
                "img => img.complete ? img.naturalWidth : 0"):
            time.sleep(0.1)
        page.screenshot(path=str(path))
        page.close()
    finally:
        server.shutdown()
        server.server_close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", type=Path, help="An existing audit (default: audit imagenet-sample first).")
    parser.add_argument("--out", type=Path, default=Path("bench-report"))
    parser.add_argument("--images", type=int, default=500)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    out = args.out.resolve()
    if out.exists():
        shutil.rmtree(out)
    (out / "screenshots").mkdir(parents=True)
    db = args.db
    audit_seconds = None
    if db is None:
        db = out / "audit.db"
        manifest = imagenet_manifest(Path(tempfile.mkdtemp()) / "imagenet.csv", args.images)
        started = time.perf_counter()
        localjudge("run", manifest, "--db", db, "--device", "cpu")
        audit_seconds = time.perf_counter() - started

    report = out / "report"
    written = json.loads(localjudge("report", "--db", db, "--out", report, "--json"))
    rebuilt = json.loads(localjudge("report", "--db", db, "--out", report, "--json"))  # thumbnails there already

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page_500 = measure_page(browser, report, out / "screenshots" / "report.png")
        page_500_warm = measure_page(browser, report)
        big = repeated(report, 20, out / "report-10000")
        page_10k = measure_page(browser, big)
        rating_screenshot(browser, db, out / "screenshots" / "rating.png")
        version = browser.version
        browser.close()

    result = {
        "audit_seconds": audit_seconds,
        "samples": written["samples"], "images": written["images"],
        "build_seconds": written["seconds"], "rebuild_seconds": rebuilt["seconds"],
        "total_bytes": written["total_bytes"], "thumbnails": written["thumbnails"],
        "thumbnail_bytes": written["thumbnail_bytes"], "data_bytes": written["data_bytes"],
        "page_code_bytes": sum((report / n).stat().st_size for n in ("index.html", "report.js", "report.css")),
        "chromium": version, "page_500": page_500, "page_500_again": page_500_warm, "page_10000": page_10k,
        "data_bytes_10000": (big / "data.js").stat().st_size,
        "screenshots": sorted(str(p) for p in (out / "screenshots").glob("*.png")),
    }
    print(json.dumps(result, indent=2))
    print(f"\nreport of {result['samples']} samples ({result['images']} images): built in "
          f"{result['build_seconds']:.1f} s (again: {result['rebuild_seconds']:.1f} s), "
          f"{result['total_bytes'] / 1e6:.2f} MB = {result['thumbnails']} thumbnails "
          f"{result['thumbnail_bytes'] / 1e6:.2f} MB + data {result['data_bytes'] / 1e3:.0f} kB + page "
          f"{result['page_code_bytes'] / 1e3:.0f} kB")
    for name, key in (("500 samples", "page_500"), ("500 again", "page_500_again"), ("10,000 samples", "page_10000")):
        p = result[key]
        print(f"{name:>15}: first render {p['first_render_ms']:.0f} ms, first contentful paint "
              f"{p['first_contentful_paint_ms'] or float('nan'):.0f} ms, ready {p['wall_to_ready_ms']:.0f} ms, "
              f"WH filter {p['wh_filter_ms']:.0f} ms ({p['wh_samples']} WH)")


if __name__ == "__main__":
    main()
