"""Prompt and answer drift of a generating replica: the deployment's first prompts become the baseline
(shared through Redis), and a window of prompts unlike them raises the input-drift alerts in /v1/drift,
while a window like them does not."""

from __future__ import annotations

from tests.generate.helpers import generating_app
from tests.helpers import wait_for

WINDOW = 20


def _ask(client, prompts: list[str]) -> None:
    for p in prompts:
        assert client.post("/v1/generate", json={"prompt": p, "max_new_tokens": 4}).status_code == 200


def _latest(client) -> dict | None:
    replicas = client.get("/v1/drift").json()["replicas"]
    return replicas[0] if replicas else None


def test_prompts_unlike_the_first_ones_raise_drift_alerts(gen_settings):
    s = gen_settings.model_copy(update={"drift_window": WINDOW})
    like = [f"What is the weather like in city number {i} today?" for i in range(3 * WINDOW)]
    unlike = [f"zq {i} ## 0x{i:04x} ;; select * from t{i} where k = {i * 7} -- !!" for i in range(WINDOW)]
    with generating_app(s) as client:
        _ask(client, like[: 2 * WINDOW])  # the baseline
        _ask(client, like[2 * WINDOW :])  # a window like it (each prompt windowed after its own decode)
        first = wait_for(lambda: _latest(client), what="a first window compared with the baseline")
        signals = first["signals"]
        assert {"knn_rate", "mmd_p", "oos_rate", "answer_length_ratio", "cut_rate"} <= set(signals)
        assert not signals["mmd_p"]["alert"] and not signals["knn_rate"]["alert"], signals
        assert signals["answer_length_ratio"]["value"] > 0 and first["size"] == WINDOW
        _ask(client, unlike)
        shifted = wait_for(lambda: (w := _latest(client)) and w["at"] > first["at"] and w, what="a second window")
        assert shifted["signals"]["mmd_p"]["alert"] and shifted["signals"]["knn_rate"]["alert"], shifted["signals"]
        alerts = {a["signal"] for a in client.get("/v1/drift").json()["alerts"]}
        assert {"mmd_p", "knn_rate"} <= alerts
        assert 'online_drift_alert{signal="mmd_p"} 1.0' in client.get("/metrics").text
