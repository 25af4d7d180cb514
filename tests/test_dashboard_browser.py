"""The dashboard in headless Chromium (Debian's chromium + chromium-driver, driven by Selenium).

Each page is opened in a real browser against a real uvicorn server over the store that
``test_dashboard.fill_store`` builds with the store's API; the numbers the page shows are
compared with what the store says, plotly.js must have drawn the figures (served locally, no
network), the console must stay free of errors, and a screenshot of each page is saved
(``$CRYSTALLOOP_TEST_ARTEFACTS`` or a pytest temporary folder). The last test adds a DFT result
to the store while the campaign page is open and waits for the page to show it without a
reload. ``CRYSTALLOOP_DASHBOARD_SCREENSHOT=docs/dashboard.png`` also writes the README's
screenshot of the campaign page.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from agent.store import Store

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None or DRIVER is None,
        reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
    ),
]
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory, perov_csv):
    """A filled store in its own CRYSTALLOOP_HOME and a dashboard server refreshing every 1 s."""
    import uvicorn
    from test_dashboard import fill_store

    from agent.dashboard.app import create_app

    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CRYSTALLOOP_HOME", str(home))
        filled = fill_store(perov_csv, tmp_path_factory.mktemp("work"))
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(refresh=1.0), host="127.0.0.1", port=port, log_level="warning"
            )
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.started, "uvicorn did not start"
        yield {"url": f"http://127.0.0.1:{port}", **filled}
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def browser():
    pytest.importorskip("selenium")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1400,1100",
        "--use-angle=swiftshader",
        "--enable-unsafe-swiftshader",
        "--ignore-gpu-blocklist",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = os.environ.get("CRYSTALLOOP_TEST_ARTEFACTS")
    path = Path(folder) / "dashboard" if folder else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def open_page(driver, url: str, figures: list[str] = ()) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    wait = WebDriverWait(driver, 30)
    wait.until(lambda d: d.execute_script("return document.body.getAttribute('data-ready')") == "1")
    for name in figures:  # plotly.js adds this class once it has drawn into the div
        wait.until(
            lambda d, n=name: d.execute_script(
                f"var g = document.getElementById('g-{n}'); return !!(g && g._fullLayout);"
            ),
            f"figure {name} not drawn",
        )


def wait_for_url(driver, part: str) -> None:
    """A click navigates asynchronously: wait until the browser is on the new URL."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 30).until(lambda d: part in d.current_url)


def field(driver, key: str) -> str:
    return driver.find_element("id", f"f-{key}").text


def rows(driver, table: str) -> list[list[str]]:
    body = driver.find_element("id", f"t-{table}").find_element("tag name", "tbody")
    return [
        [td.text for td in tr.find_elements("tag name", "td")]
        for tr in body.find_elements("tag name", "tr")
        if "empty" not in (tr.get_attribute("class") or "")
    ]


def console_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def store_numbers() -> dict:
    with Store.connect() as store:
        return {
            "counts": store.count_by_status("demo"),
            "completed": store.find_calculations("demo", "completed"),
            "models": store.list_models("demo"),
            "campaign": store.get_campaign("demo"),
        }


def test_campaigns_page(site, browser, shots):
    open_page(browser, site["url"] + "/")
    truth = store_numbers()
    (row,) = rows(browser, "campaigns")
    counts = [str(truth["counts"][s]) for s in truth["counts"]]
    assert row[0] == "demo" and row[3] == str(truth["campaign"]["cycle"])
    assert row[4:12] == counts
    used = sum(truth["counts"][s] for s in ("submitted", "running", "completed", "failed"))
    assert row[12] == f"{used} / 10"
    assert row[13] == str(sum(1 for c in truth["completed"] if c.get("discovery")))
    assert browser.save_screenshot(str(shots / "campaigns.png"))
    assert console_errors(browser) == []


def test_campaign_page(site, browser, shots):
    figs = ["cycles", "rejections", "funnel", "best", "parity", "hull", "generators"]
    open_page(browser, site["url"] + "/campaign/demo", figs)
    truth = store_numbers()
    assert field(browser, "dft_completed") == str(truth["counts"]["completed"])
    assert field(browser, "dft_failed") == str(truth["counts"]["failed"])
    assert field(browser, "candidates") == str(sum(truth["counts"].values()))
    for status, n in truth["counts"].items():
        assert field(browser, f"count_{status}") == str(n)
    points = browser.execute_script("return document.getElementById('g-parity').data[0].y")
    assert sorted(points) == sorted(c["formation_energy_per_atom"] for c in truth["completed"])
    best = min(truth["completed"], key=lambda c: c["formation_energy_per_atom"])
    assert field(browser, "best") == f"{best['formula']} {best['formation_energy_per_atom']:.3f}"
    assert browser.save_screenshot(str(shots / "campaign.png"))
    target = os.environ.get("CRYSTALLOOP_DASHBOARD_SCREENSHOT")
    if target:  # the whole page, for the README
        (REPO / target).parent.mkdir(parents=True, exist_ok=True)
        browser.set_window_size(1400, 2300)
        time.sleep(1.5)  # plotly redraws responsive figures after a resize
        assert browser.save_screenshot(str(REPO / target))
        browser.set_window_size(1400, 1100)
    assert console_errors(browser) == []


def test_candidates_page_sort_and_filter(site, browser, shots):
    open_page(browser, site["url"] + "/campaign/demo/candidates")
    truth = store_numbers()
    assert field(browser, "all") == str(sum(truth["counts"].values()))
    assert field(browser, "total") == field(browser, "all")
    browser.find_element("css selector", "input[name=status][value=pooled]").click()
    browser.find_element("css selector", "form.filters button").click()
    wait_for_url(browser, "status=pooled")
    open_page(browser, browser.current_url)
    assert field(browser, "total") == str(truth["counts"]["pooled"])
    assert {r[1] for r in rows(browser, "candidates")} == {"pooled"}
    browser.find_element("link text", "predicted").click()  # descending first
    wait_for_url(browser, "sort=predicted")
    open_page(browser, browser.current_url)
    shown = [float(r[6]) for r in rows(browser, "candidates")]
    assert shown == sorted(shown, reverse=True) and len(shown) == truth["counts"]["pooled"]
    assert browser.save_screenshot(str(shots / "candidates.png"))
    assert console_errors(browser) == []


def test_candidate_page_shows_both_structures(site, browser, shots):
    cid = site["ids"][8]
    open_page(browser, site["url"] + f"/candidate/{cid}", ["generated", "relaxed"])
    with Store.connect() as store:
        doc = store.get_candidate(cid)
        calc = store.calculations_for([cid])[cid]
    assert field(browser, "formula") == doc["formula"]
    assert field(browser, "dft") == f"{calc['formation_energy_per_atom']:.3f}"
    atoms = browser.execute_script(
        "return document.getElementById('g-generated').data"
        ".filter(function (t) { return t.mode === 'markers'; })"
        ".reduce(function (n, t) { return n + t.x.length; }, 0)"
    )
    assert atoms >= len(doc["structure"]["sites"])  # every site, plus its face images
    webgl = browser.execute_script("return document.querySelectorAll('#g-generated canvas').length")
    assert webgl > 0
    assert [r[1] for r in rows(browser, "attempts")] == ["scf_unconverged", "ok"]
    assert rows(browser, "events")[-1][3] == "completed"
    assert browser.save_screenshot(str(shots / "candidate.png"))
    assert [e for e in console_errors(browser) if "WebGL" not in e] == []


def test_queue_models_policies_pages(site, browser, shots):
    truth = store_numbers()
    open_page(browser, site["url"] + "/campaign/demo/queue")
    assert len(rows(browser, "running")) == truth["counts"]["running"]
    assert len(rows(browser, "failed")) == truth["counts"]["failed"]
    assert field(browser, "running") == str(truth["counts"]["running"])
    assert browser.save_screenshot(str(shots / "queue.png"))
    open_page(browser, site["url"] + "/campaign/demo/models", ["models"])
    assert [r[0] for r in rows(browser, "models")] == [m["version"] for m in truth["models"]]
    assert browser.save_screenshot(str(shots / "models.png"))
    open_page(browser, site["url"] + "/campaign/demo/policies", ["selection", "replay"])
    replay = json.loads((REPO / "benchmarks/results/replay.json").read_text())
    assert sorted(r[0] for r in rows(browser, "replay")) == sorted(replay["summary"])
    assert field(browser, "policy") == truth["campaign"]["config"]["acquisition"]["policy"]
    assert browser.save_screenshot(str(shots / "policies.png"))
    assert console_errors(browser) == []


def test_campaign_page_updates_without_reload(site, browser, shots):
    from selenium.webdriver.support.ui import WebDriverWait

    open_page(browser, site["url"] + "/campaign/demo", ["parity"])
    before = store_numbers()["counts"]
    assert field(browser, "dft_completed") == str(before["completed"])
    browser.execute_script("window.__notReloaded = 42;")
    cid = site["ids"][6]  # the running calculation completes
    with Store.connect() as store:
        store.save_calculation(
            cid, "demo", state="completed", formula=site["formulas"][6],
            formation_energy_per_atom=-2.9, predicted_formation_energy={"mean": -2.7, "std": 0.1},
            e_above_hull=0.0, discovery=True, cycle=1,
        )  # fmt: skip
        store.transition(cid, "running", "completed", dft={"formation_energy_per_atom": -2.9})
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: field(d, "dft_completed") == str(before["completed"] + 1))
    assert field(browser, "dft_running") == str(before["running"] - 1)
    wait.until(lambda d: field(d, "best") == f"{site['formulas'][6]} -2.900")
    points = browser.execute_script("return document.getElementById('g-parity').data[0].y")
    assert -2.9 in points
    assert browser.execute_script("return window.__notReloaded") == 42
    assert browser.save_screenshot(str(shots / "campaign-updated.png"))
