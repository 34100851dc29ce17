"""The status page in a real browser while a real daemon converts: Debian's chromium, Selenium.

``bonect-daemon start`` runs as a subprocess with ``[web] enabled`` and the bundled phantom
model promoted in its registry; DCMTK ``storescu`` sends it two bone-MR series and a corrupt
one on one association, so that all three settle at once and one waits ``queued`` while the
other converts; Orthanc is the PACS. Chromium (headless, a fresh profile, nothing downloaded:
Selenium is given the Debian driver, and ``SE_OFFLINE`` keeps Selenium Manager off the
network) reads the pages as a person would. Waiting is a bounded poll of the page, never a
fixed sleep.

Screenshots of every page are saved for the README: into ``docs/screenshots`` when
``BONECT_UPDATE_SCREENSHOTS=1``, else into the test's temporary folder (so a test run leaves
the checkout as it was).
"""

from __future__ import annotations

import io
import os
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from bonect import registry
from dicom_peers import LOCALHOST, OrthancServer, free_port
from e2e.conftest import (
    PEERS_MISSING,
    Series,
    StartDaemon,
    copy_series,
    storescu_background,
    wait_for,
)
from web.conftest import BUNDLED_MODEL

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOTS = Path(__file__).parents[2] / "docs" / "screenshots"
WINDOW = (1280, 1000)

pytestmark = [
    pytest.mark.skipif(
        not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
        reason="needs Debian's chromium and chromium-driver",
    ),
    pytest.mark.skipif(PEERS_MISSING, reason="needs Debian's dcmtk and orthanc"),
]


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WebDriver]:
    """Headless Debian chromium with a fresh profile, driven through Debian's chromedriver."""
    monkeypatch.setenv("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver: WebDriver, name: str, tmp_path: Path, height: int = WINDOW[1]) -> Path:
    """Save the window (``height`` pixels tall) as a small PNG (64 colours) for the README."""
    driver.set_window_size(WINDOW[0], height)
    folder = SCREENSHOTS if os.environ.get("BONECT_UPDATE_SCREENSHOTS") else tmp_path / "shots"
    folder.mkdir(parents=True, exist_ok=True)
    image = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    path = folder / f"{name}.png"
    image.quantize(64).save(path, optimize=True)
    driver.set_window_size(*WINDOW)
    return path


def rows(driver: WebDriver) -> dict[str, tuple[int, str]]:
    """The queue page's jobs: series UID -> (job id, state)."""
    found = {}
    for row in driver.find_elements(By.CSS_SELECTOR, "tr[data-series]"):
        series = str(row.get_attribute("data-series"))
        found[series] = (
            int(str(row.get_attribute("data-job"))),
            str(row.get_attribute("data-state")),
        )
    return found


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        data: bytes = response.read()
        return data


def test_the_status_page_follows_a_conversion_in_chromium(
    tmp_path: Path,
    pacs: OrthancServer,
    start_daemon: StartDaemon,
    coarse_mr: Series,
    browser: WebDriver,
) -> None:
    web_port = free_port()
    daemon = start_daemon(
        pacs_port=pacs.dicom_port,
        sections={
            "web": {"enabled": True, "port": web_port},
            "converter": {"model": "auto", "planes": ["axial"], "device": "cpu"},  # one: quick
        },
        start=False,
    )
    models = daemon.storage / "models"
    models.mkdir(parents=True)
    shutil.copytree(BUNDLED_MODEL, models / BUNDLED_MODEL.name)
    registry.promote(models, BUNDLED_MODEL.name, reason="the bundled phantom model, for the test")
    daemon.start()
    site = f"http://{LOCALHOST}:{web_port}"

    mid = len(coarse_mr) // 2

    def halve_pixels(k: int, ds: Dataset) -> None:
        if k == mid:  # a corrupt instance: the reader refuses the series
            ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]

    second = copy_series(coarse_mr, tmp_path / "second", SeriesNumber=7)
    corrupt = copy_series(coarse_mr, tmp_path / "corrupt", edit=halve_pixels, SeriesNumber=8)
    good = {coarse_mr.series_uid, second.series_uid}

    browser.get(site + "/")
    assert "No jobs yet" in browser.page_source
    sender = storescu_background(daemon.port, [*coarse_mr.files, *second.files, *corrupt.files])
    seen: dict[str, list[str]] = {}

    def finished() -> bool:
        browser.get(site + "/")
        for series, (_, state) in rows(browser).items():
            states = seen.setdefault(series, [])
            if not states or states[-1] != state:
                states.append(state)
        final = {s: states[-1] for s, states in seen.items()}
        expected = {coarse_mr.series_uid: "done", second.series_uid: "done"}
        return final == {**expected, corrupt.series_uid: "failed"}

    wait_for(finished, "two jobs done and one failed on the page", timeout=150, log=daemon.log)
    assert sender.wait(timeout=30) == 0, sender.stderr.read() if sender.stderr else ""
    waited = [series for series in good if seen[series][0] == "queued"]
    assert waited, f"no job was seen queued: {seen}"  # one waited while the other converted
    assert all(seen[series][-1] == "done" for series in waited)
    jobs = rows(browser)
    assert browser.find_element(By.ID, "count-done").text == "2"
    assert browser.find_element(By.ID, "count-failed").text == "1"
    shots = [screenshot(browser, "queue", tmp_path)]

    # a finished job: MR and sCT thumbnails drawn by the browser and not blank
    done_id = jobs[coarse_mr.series_uid][0]
    browser.get(f"{site}/jobs/{done_id}")
    assert browser.find_element(By.ID, "job").get_attribute("data-state") == "done"
    assert "phantom-light-unet" in browser.page_source
    for kind in ("mr", "sct"):
        for plane in ("axial", "coronal", "sagittal"):
            image = browser.find_element(By.ID, f"thumb-{kind}-{plane}")
            assert int(str(image.get_property("naturalWidth"))) > 0, (kind, plane)
            png = fetch(str(image.get_attribute("src")))
            pixels = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float64)
            assert pixels.var() > 0, (kind, plane)
    assert "Uncertainty: not recorded" in browser.page_source
    shots.append(screenshot(browser, "job", tmp_path, height=1250))

    # the failed series shows its reason, in the list and on its own page
    failed_id = jobs[corrupt.series_uid][0]
    browser.get(f"{site}/jobs/{failed_id}")
    reason = browser.find_element(By.ID, "reason").text
    assert "pixel" in reason.lower(), reason
    shots.append(screenshot(browser, "failed-job", tmp_path))

    # the model page: the bundled model in use, its manifest
    browser.get(f"{site}/models")
    manifest = registry.read_manifest(BUNDLED_MODEL)
    assert browser.find_element(By.ID, "model-in-use").text == manifest.label
    table = browser.find_element(By.CSS_SELECTOR, "#in-use table.manifest").text
    assert manifest.architecture in table and f"{manifest.input_size} × " in table
    assert "NOT FOR CLINICAL USE" in table and "phantom" in table
    shots.append(screenshot(browser, "models", tmp_path))

    browser.get(f"{site}/destinations")
    pacs_row = browser.find_element(By.ID, "destination-pacs").text
    assert f" {2 * len(coarse_mr)} 0 " in f" {pacs_row} "  # stored, then nothing pending
    shots.append(screenshot(browser, "destinations", tmp_path))

    header = pydicom.dcmread(coarse_mr.files[0], stop_before_pixels=True)
    secrets = {str(header.PatientID), *str(header.PatientName).split("^")} - {"", "PHANTOM"}
    for path in ("/", f"/jobs/{done_id}", f"/jobs/{failed_id}", "/models", "/destinations"):
        browser.get(site + path)
        assert not [s for s in secrets if s in browser.page_source], path
    assert all(shot.stat().st_size < 400_000 for shot in shots)
    assert daemon.stop() == 0
