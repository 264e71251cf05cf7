"""A full-page picture of a run's report.html, drawn by headless Chromium.

    python docs/report_screenshot.py RUN_DIR [--output docs/_static/report_kang.png]

RUN_DIR is a finished run's inference output folder (or checkpoint folder); its report.html
is rebuilt first with ``scarkids report RUN_DIR`` when it is missing (run this from the
folder the run was started in, so that the paths the run recorded resolve). The page is
drawn 1280 pixels wide in a tall window and the blank space below it is cut off.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

DOCS = Path(__file__).resolve().parent


def browser() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    sys.exit("no chromium on PATH: apt-get install chromium")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("run_dir", type=Path)
    p.add_argument("--output", type=Path, default=DOCS / "_static" / "report_kang.png")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=16000, help="window height (cut to the page)")
    args = p.parse_args()
    page = args.run_dir / "report.html"
    if not page.exists():
        subprocess.run([sys.executable, "-m", "scarkids", "report", str(args.run_dir)], check=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                browser(),
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                "--host-resolver-rules=MAP * ~NOTFOUND",
                "--virtual-time-budget=10000",
                f"--window-size={args.width},{args.height}",
                f"--screenshot={args.output.resolve()}",
                page.resolve().as_uri(),
            ],
            check=True,
            capture_output=True,
        )
    crop_blank_bottom(args.output)
    print(f"Wrote {args.output}")


def crop_blank_bottom(path: Path, margin: int = 40) -> None:
    """Cut the white rows below the page's last content (plus ``margin`` pixels)."""
    import numpy as np
    from PIL import Image

    image = Image.open(path).convert("RGB")
    rows = np.flatnonzero((np.asarray(image) < 250).any(axis=(1, 2)))
    if len(rows):
        bottom = min(image.height, int(rows[-1]) + margin)
        image.crop((0, 0, image.width, bottom)).save(path, optimize=True)


if __name__ == "__main__":
    main()
