"""The dashboard in a real browser: headless Chromium loads /dashboard from a running API process, every
plot renders with data, and a screenshot is kept as a test artifact (test-artifacts/dashboard.png)."""

from __future__ import annotations

import os
import random
import shutil
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from online.feedback.buffer import Incoming
from online.feedback.review_queue import ReviewItem
from online.lifecycle import canary, promotion
from online.monitoring.live_accuracy import Judgement
from online.reports import RoundStats
from online.wiring.stores import Stores
from services.supervisor import api_process
from tests import helpers
from tests.helpers import wait_for

ARTIFACTS = Path(os.environ.get("ONLINE_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts"))
PLOTS = ["accuracy", "timeline", "rates", "pvalues", "labels", "volume", "held", "rounds", "queues", "buffer", "canary"]


def _chromium() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not (browser and driver):
        message = "headless Chromium not found: apt-get install chromium chromium-driver (.ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return browser, driver


@pytest.mark.slow
def test_dashboard_renders_every_plot_with_data(kafka_settings, tmp_path):
    browser, driver_path = _chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    golden = helpers.write_golden(tmp_path / "golden.jsonl", helpers.examples(helpers.OLD, 40, seed=7))
    s = kafka_settings.model_copy(update={"golden_path": golden, "drift_window": 40, "model_poll_s": 0.5})
    stores = Stores.from_settings(s)
    registry = stores.registry
    model, v1 = helpers.train_v1(s, registry)
    round_stats = RoundStats(new=40, holdout=4, rehearsed=120, quarantined=1, duration_s=12.5, train_s=9.0,
                             added_labels=["music"])  # fmt: skip
    v2 = registry.publish(model, parent=v1.version, round_stats=round_stats, gate=v1.gate).version
    registry.promote(v2, reason="round passed the gate")
    rejected = v1.gate.model_copy(update={"passed": False})
    registry.publish(model, parent=v2, round_stats=round_stats.model_copy(update={"new": 8}), gate=rejected, status="rejected")
    promotion.rollback(registry, reason="operator")
    v3 = registry.publish(model, parent=v1.version).version  # a candidate (not a round) for the canary
    live_acc = stores.live_accuracy
    now = time.time()
    live_acc.record([Judgement(f"a{i}", v1.version, i % 10 != 0, now - 60 * (i % 3)) for i in range(60)])
    live_acc.record([Judgement(f"b{i}", v2, i % 2 == 0, now) for i in range(40)])
    live_acc.record([Judgement(f"c{i}", v3, i % 4 != 0, now) for i in range(12)])  # the canary's own
    stores.buffer.add([Incoming("m1", "a rain forecast", "music", "mallory", now)])  # held by the screen
    stores.review.add(
        [ReviewItem("p1", "is it going to pour", "weather", 0.4, 0.05, None, False, 0.95, 1, now, np.ones(4))]
    )
    stores.sources.quarantine("mallory")
    stores.buffer.quarantine([(s.sid, "source quarantined") for s in stores.buffer.samples()])
    waiting = [Incoming(f"k{i}", t, lab, "alice", now) for i, (t, lab) in enumerate(helpers.examples(helpers.OLD, 3, 11))]
    stores.buffer.add(waiting)  # after the screen's verdict: these wait for the next round

    with api_process(s) as url:
        texts = [t for t, _ in helpers.examples(helpers.OLD, 40, seed=3)]
        random.Random(0).shuffle(texts)
        with httpx.Client(base_url=url) as client:
            for start in range(0, len(texts), 20):
                client.post("/v1/predict", json={"texts": texts[start : start + 20]}).raise_for_status()
            resp = client.post(
                "/v1/feedback", json={"kind": "label", "text": "rain", "label": "weather", "source": "t"}
            )
            assert resp.status_code == 202, resp.text
            wait_for(
                lambda: len(client.get("/v1/drift", params={"history": 10}).json()["history"]) >= 3,
                what="three drift windows",
            )

        canary.start(registry, v3, s, "a canary in progress", share=0.2)  # on 20% of traffic beside live v1
        options = webdriver.ChromeOptions()
        options.binary_location = browser
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,2100"):
            options.add_argument(arg)
        driver = webdriver.Chrome(service=Service(driver_path), options=options)
        try:
            driver.get(f"{url}/dashboard")  # a canary in progress on it
            wait_for(
                lambda: driver.execute_script("return Number(document.body.dataset.rendered || 0)") >= 1,
                timeout=60,
                what="the dashboard's first render",
            )
            for plot in PLOTS:
                points = driver.execute_script(
                    "const d = document.getElementById(arguments[0]).data || [];"
                    "return d.reduce((n, tr) => n + ((tr.y || []).filter((v) => v !== null).length), 0);",
                    plot,
                )
                assert points > 0, f"plot {plot} has no data"
                assert (
                    driver.execute_script(
                        "return document.querySelectorAll('#' + arguments[0] + ' .main-svg').length", plot
                    )
                    > 0
                ), f"plot {plot} not drawn"
            status = driver.find_element("id", "status").text
            assert "live version 1" in status and f"canary v{v3} on 20%" in status, status
            canary_plot = driver.execute_script("return document.getElementById('canary').layout.title.text")
            assert canary_plot.startswith(f"canary v{v3} vs live v1: 20% → 25% → 50% → promoted"), canary_plot
            assert "too little evidence" in canary_plot, canary_plot
            titles = driver.execute_script(
                "return ['rounds', 'queues', 'buffer'].map((id) => document.getElementById(id).layout.title.text)"
            )
            assert titles[0] == "training rounds: 1 passed, 1 rejected" and "9 of" in titles[2], titles
            waiting = driver.execute_script("return document.getElementById('queues').data[0].y")
            # review queue (ours and the uncertain predictions above), held, new for the next round
            assert waiting[0] >= 1 and waiting[1:] == [1, 9], waiting
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            shot = ARTIFACTS / "dashboard.png"
            driver.save_screenshot(str(shot))
            assert shot.stat().st_size > 10_000
        finally:
            driver.quit()
