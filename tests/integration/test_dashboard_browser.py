"""The dashboard in a real headless browser: Debian's chromium, driven through its own chromedriver by
selenium, reads a dashboard pointed at the embedded local cluster after a real promoted digits
rollout (the quick profile of ``kondense demo``: real compression Jobs, ``kondense serve`` pods,
the operator process, Prometheus scraping the pods). The cluster is the session's shared ``kondense up``
cluster (``promoted_up``, tests/conftest.py), which tests/localcluster/test_up_lifecycle.py also reads.

It checks what a person looks at: the model list, the canary timeline with its weight steps and the
promotion decision, the SLI series from Prometheus, one Pareto point per evaluated variant; and keeps
a screenshot (``build/artifacts/dashboard.png``, git-ignored, and in the test's tmp dir).

selenium rather than playwright: it is the smaller dependency (a pure-Python wheel; playwright ships
its own Node.js driver) and it talks WebDriver to the chromedriver built from the same Debian source
as chromium, so the two always match (playwright's protocol is tied to its own browser builds).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kondense.dashboard.data import kubeconfig_client_factory
from kondense.dashboard.server import RunningDashboard, start
from kondense_testing.paths import REPO
from kondense_testing.tools import find_tool
from kondense_testing.upcluster import UpCluster

# the first test of the shared cluster waits for its rollout (tests/localcluster/test_up_lifecycle.py's
# budget)
pytestmark = [pytest.mark.localcluster, pytest.mark.slow, pytest.mark.timeout(1500)]
ARTIFACT = REPO / "build" / "artifacts" / "dashboard.png"


@pytest.fixture
def promoted(promoted_up: UpCluster) -> UpCluster:
    """The local cluster after the digits example was promoted (left running for the browser)."""
    return promoted_up


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = find_tool("chromium")
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in a container: chromium's sandbox needs user namespaces
        "--disable-dev-shm-usage",
        "--no-proxy-server",
        "--disable-gpu",
        "--window-size=1280,1000",
        f"--user-data-dir={tmp_path / 'chromium'}",
    ):
        options.add_argument(argument)
    service = Service(
        executable_path=find_tool("chromedriver"), log_output=str(tmp_path / "chromedriver.log")
    )
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def dashboard(promoted: UpCluster) -> Iterator[RunningDashboard]:
    running = start(
        kubeconfig_client_factory(str(promoted.kubeconfig)),
        promoted.prometheus,
        port=0,
        refresh_seconds=None,  # a page that reloads itself would change under the assertions
    )
    try:
        yield running
    finally:
        running.stop()


def wait_for(what: str, predicate: Callable[[], Any], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def test_dashboard_shows_the_promoted_rollout(
    promoted: UpCluster, dashboard: RunningDashboard, browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    status = promoted.compressed_model("digits")["status"]
    browser.get(f"{dashboard.url}/")
    rows = browser.find_elements(By.CSS_SELECTOR, "#models tr.model")
    assert [r.get_attribute("data-name") for r in rows] == ["digits"], browser.page_source[:2000]
    assert "Promoted" in rows[0].find_element(By.CSS_SELECTOR, ".phase-cell").text
    assert rows[0].find_element(By.CSS_SELECTOR, ".variant-cell").text == status["selectedVariant"]
    assert rows[0].find_element(By.CSS_SELECTOR, ".stable-cell").text == status["stable"]["variant"]
    assert browser.find_elements(By.CSS_SELECTOR, ".banner") == []

    rows[0].find_element(By.LINK_TEXT, "digits").click()
    wait_for("the model page", lambda: browser.find_elements(By.ID, "timeline"))
    assert browser.find_elements(By.CSS_SELECTOR, ".banner") == [], [
        b.text for b in browser.find_elements(By.CSS_SELECTOR, ".banner")
    ]

    # the timeline: the weight steps of the quick profile (50 %, then 100 %) and the decision
    weights = [
        g.get_attribute("data-weight")
        for g in browser.find_elements(By.CSS_SELECTOR, "#timeline g.weight-step")
    ]
    assert weights[:1] == ["50"] and weights[-1] == "100", weights
    reasons = [
        li.get_attribute("data-reason") for li in browser.find_elements(By.CSS_SELECTOR, "#decisions li")
    ]
    assert "CanaryStarted" in reasons and reasons[-1] == "Promoted", reasons
    promoted_item = browser.find_elements(By.CSS_SELECTOR, '#decisions li[data-reason="Promoted"]')[-1]
    assert f"{status['stable']['variant']} is now stable" in promoted_item.text
    assert browser.find_elements(By.CSS_SELECTOR, '#timeline g.decision[data-reason="Promoted"]')
    # each gated SLI from Prometheus (query_range with the operator's PromQL) against its threshold
    panels = browser.find_elements(By.CSS_SELECTOR, "#timeline g.sli")
    by_sli = {p.get_attribute("data-sli"): p for p in panels}
    assert {"p99LatencyMs", "errorRate", "accuracyDelta"} <= set(by_sli), list(by_sli)
    assert by_sli["p99LatencyMs"].find_elements(By.CSS_SELECTOR, "polyline.series"), "no p99 series drawn"
    assert by_sli["p99LatencyMs"].find_elements(By.CSS_SELECTOR, "line.threshold")
    assert browser.find_elements(By.CSS_SELECTOR, "#timeline circle.check")

    # the Pareto plot: one point per variant the status has metrics for, the selected one marked
    evaluated = sorted(
        v["name"]
        for v in status["variants"]
        if (v.get("metrics") or {}).get("sizeRatio") is not None
        and (v.get("metrics") or {}).get("accuracyDelta") is not None
    )
    points = browser.find_elements(By.CSS_SELECTOR, "#pareto circle.variant")
    assert sorted(p.get_attribute("data-variant") for p in points) == evaluated
    assert len(evaluated) == len(status["variants"]) == 2
    selected = browser.find_elements(By.CSS_SELECTOR, "#pareto circle.selected")
    assert [s.get_attribute("data-variant") for s in selected] == [status["selectedVariant"]]

    # compression progress and the Events
    progress = browser.find_element(By.ID, "progress")
    assert progress.get_attribute("data-done") == progress.get_attribute("data-total") == "3"
    assert len(browser.find_elements(By.CSS_SELECTOR, "#jobs tr.job")) == 3
    assert browser.find_elements(By.CSS_SELECTOR, '#events tr.event[data-reason="Promoted"]')

    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1280, min(int(height) + 40, 6000))
    shot = tmp_path / "dashboard.png"
    assert browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(shot, ARTIFACT)


def test_prometheus_down_is_a_banner_and_the_page_still_renders(promoted: UpCluster, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    from kondense.localcluster.prometheus import free_port

    nowhere = f"http://127.0.0.1:{free_port()}"
    running = start(
        kubeconfig_client_factory(str(promoted.kubeconfig)), nowhere, port=0, refresh_seconds=None
    )
    try:
        browser.get(f"{running.url}/models/default/digits")
        banners = [b.text for b in browser.find_elements(By.CSS_SELECTOR, ".banner")]
        assert len(banners) == 1 and f"Prometheus at {nowhere} is unreachable" in banners[0], banners
        assert browser.find_elements(By.CSS_SELECTOR, "#timeline g.weight-step")  # from the Events
        assert browser.find_elements(By.CSS_SELECTOR, "#pareto circle.variant")
        assert "Traceback" not in browser.page_source
    finally:
        running.stop()
