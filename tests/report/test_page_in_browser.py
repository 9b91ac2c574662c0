"""report.html in a real browser: headless Chromium (Debian's chromium + chromium-driver) driven by selenium renders
the reports of a cpu, an mcu, a quantized and a pruned build; each page loads with no console errors, shows the
sections and plots its build has, and its tables sort."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

import nasc

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "examples" / "digits_cnn.onnx"
CALIB = ROOT / "examples" / "digits_test.npz"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

#: build name -> (target, passes, sections its page must have, plots that must be drawn)
BUILDS = {
    "cpu": ("cpu", "simplify,fuse", {"summary", "passes", "layers", "latency"}, {"kernel-latency"}),
    "mcu": ("mcu:stm32f411", "simplify,fuse", {"summary", "passes", "layers", "mcu"},
            {"mcu-live", "mcu-arena", "mcu-flash"}),
    "quantized": ("onnx", "simplify,fuse,quant-policy{bits=8,4 flash=6KB},quantize", {"summary", "layers",
                                                                                      "quantization"},
                  {"quant-policy"}),
    "pruned": ("onnx", "simplify,fuse,prune{macs=0.7 reconstruct=true},recover{steps=40 eval-every=10}",
               {"summary", "layers", "pruning", "recovery"}, {"prune-groups", "recover-history"}),
}
SECTIONS = {"summary", "passes", "layers", "mcu", "latency", "quantization", "pruning", "tying", "recovery", "search"}


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,900"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("reports")
    dirs = {}
    for name, (target, passes, _, _) in BUILDS.items():
        dirs[name] = nasc.compile(DIGITS, target, out / name, passes=passes, calib=str(CALIB)).out
    return dirs


@pytest.mark.parametrize("name", list(BUILDS))
def test_page_loads_with_its_sections_and_plots(name: str, builds: dict[str, Path], browser: object,
                                                tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    _, _, sections, figures = BUILDS[name]
    page = builds[name] / "report.html"
    assert page.is_file()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page.read_text())  # nothing fetched
    browser.get(page.as_uri())  # type: ignore[attr-defined]
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]  # type: ignore[attr-defined]
    assert errors == []
    shown = {e.get_attribute("data-section") for e in browser.find_elements(By.CSS_SELECTOR, "section[data-section]")}  # type: ignore[attr-defined]
    assert sections <= shown and shown <= SECTIONS
    assert not ({"mcu", "latency"} - sections) & shown  # a section the build has no data for is left out
    for key in figures:
        svg = browser.find_element(By.CSS_SELECTOR, f"figure[data-plot='{key}'] svg")  # type: ignore[attr-defined]
        assert svg.size["width"] > 200 and svg.size["height"] > 50
        assert len(svg.find_elements(By.CSS_SELECTOR, "path, rect, use")) > 5  # something is drawn
    for table in browser.find_elements(By.CSS_SELECTOR, "table[data-table]"):  # type: ignore[attr-defined]
        assert table.find_elements(By.CSS_SELECTOR, "tbody tr"), table.get_attribute("data-table")
    shot = tmp_path / f"{name}.png"
    assert browser.save_screenshot(str(shot))  # type: ignore[attr-defined]
    assert shot.read_bytes()[:4] == b"\x89PNG"


def test_the_layer_table_sorts_by_a_click(builds: dict[str, Path], browser: object) -> None:
    from selenium.webdriver.common.by import By

    browser.get((builds["mcu"] / "report.html").as_uri())  # type: ignore[attr-defined]
    table = browser.find_element(By.CSS_SELECTOR, "table[data-table='layers']")  # type: ignore[attr-defined]
    col = [h.text.split()[0] for h in table.find_elements(By.CSS_SELECTOR, "th")].index("MACs")

    def macs() -> list[int]:
        return [int(r.find_elements(By.CSS_SELECTOR, "td")[col].text.replace(",", ""))
                for r in table.find_elements(By.CSS_SELECTOR, "tbody tr")]

    header = table.find_elements(By.CSS_SELECTOR, "th")[col]
    header.click()
    assert macs() == sorted(macs())
    header.click()
    assert macs() == sorted(macs(), reverse=True)
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []  # type: ignore[attr-defined]
