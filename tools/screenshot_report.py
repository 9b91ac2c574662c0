"""A screenshot of report.html for the docs: the digits CNN pruned and quantized for an STM32F411, its page rendered
by headless Chromium (Debian's chromium + chromium-driver, through selenium) at full height.

    python tools/screenshot_report.py [--out docs/report-mcu.png] [--keep DIR]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PASSES = "simplify,fuse,prune{macs=0.7 reconstruct=true},quant-policy{bits=8,4 flash=5KB},quantize"


def main() -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "report-mcu.png")
    p.add_argument("--keep", type=Path, default=None, help="also keep the build directory here")
    p.add_argument("--width", type=int, default=1100)
    args = p.parse_args()
    import nasc

    with tempfile.TemporaryDirectory() as td:
        build = Path(td) / "build"
        nasc.compile(ROOT / "examples" / "digits_cnn.onnx", "mcu:stm32f411", build, passes=PASSES,
                     calib=str(ROOT / "examples" / "digits_test.npz"))
        shoot(build / "report.html", args.out, args.width)
        if args.keep:
            shutil.copytree(build, args.keep, dirs_exist_ok=True)
    print(f"wrote {args.out}")
    return 0


def shoot(page: Path, out: Path, width: int) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--window-size={width},900"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=opts)
    try:
        driver.get(page.resolve().as_uri())
        height = int(driver.execute_script("return document.documentElement.scrollHeight"))
        driver.set_window_size(width, height + 40)
        out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(out))
    finally:
        driver.quit()


if __name__ == "__main__":
    raise SystemExit(main())
