"""`python -m bench.gpu`: its argument handling and its report, checked on CPU with a tiny random encoder."""

from __future__ import annotations

import json

import pytest
import torch

from bench.gpu import main

KEYS = {
    "device", "gpu", "versions", "model", "stored_dtype", "parameters", "data", "seconds_per_cell", "forward",
    "onnx", "parity", "training", "tests", "not_measured", "stage_s",
}  # fmt: skip


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the check would run")
def test_cuda_asked_without_cuda_exits_2_with_the_reason(tmp_path, capsys):
    assert main(["--device", "cuda", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--device cuda" in err and "no CUDA device" in err and "--device cpu" in err
    assert not (tmp_path / "gpu.json").exists()


def test_an_unknown_device_or_no_out_is_a_usage_error(tmp_path):
    for argv in (["--device", "tpu", "--out", str(tmp_path)], ["--device", "cpu"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2


def test_a_tiny_cpu_run_writes_every_figure(tmp_path, capsys):
    assert main(["--device", "cpu", "--tiny", "--seconds", "1", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert set(report) == KEYS and report["device"] == "cpu" and report["gpu"] is None
    assert report["parameters"] > 0 and report["stored_dtype"] == "F32" and "synthetic" in report["data"]

    cells = {(c["path"], c["precision"], c["batch"]): c for c in report["forward"]}
    assert set(cells) == {(p, q, b) for p in ("predictor", "direct") for q in ("fp32", "bf16", "fp16") for b in (1, 32)}
    for key, cell in cells.items():
        if cell["error"] is None:
            assert cell["calls"] >= 5 and cell["texts_per_s"] > 0 and 0 < cell["p50_ms"] <= cell["p99_ms"], key
    assert all(cells[(p, "fp32", b)]["error"] is None for p in ("predictor", "direct") for b in (1, 32))

    parity = {p["precision"]: p for p in report["parity"]}
    assert set(parity) == {"fp32", "bf16", "fp16"} and parity["fp32"]["max_abs_prob_diff"] < 1e-6
    assert all(0.0 <= p["argmax_agreement"] <= 1.0 for p in parity.values())

    training = report["training"]
    assert training["examples"] == 120 and training["held_out"] == 80 and training["epochs"] == 3
    assert training["seconds"] > 0 and training["examples_per_s"] > 0
    assert 0.0 <= training["accuracy_before"] <= 1.0 and 0.0 <= training["accuracy_after"] <= 1.0

    tests = report["tests"]  # without CUDA the CUDA tests are collected and skipped, not failed
    assert tests["returncode"] == 0 and tests["counts"].get("skipped", 0) >= 1 and "failed" not in tests["counts"]
    assert "-k" in tests["command"] and any(arg.startswith("tests/") for arg in tests["command"])
    assert report["not_measured"] and set(report["stage_s"]) >= {"load", "forward", "tests"}

    table = capsys.readouterr().out
    assert "predictor" in table and "direct" in table and "training:" in table
