"""What the Docker image relies on: the CLI without the development-only bench/ package, pinned installs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_cli_imports_without_the_bench_package():
    # The image copies online/, consumers/ and services/ only: bench/ must never be needed at import.
    code = "import sys; sys.modules['bench'] = None; import services.cli; services.cli.app"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_dockerfile_installs_with_the_constraints_file():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "COPY pyproject.toml README.md constraints.txt" in dockerfile and "-c constraints.txt" in dockerfile
    pins = [line for line in (ROOT / "constraints.txt").read_text().splitlines() if "==" in line]
    pinned = {line.split("==")[0].lower() for line in pins}
    assert {"transformers", "kafka-python", "redis", "fastapi", "onnxruntime", "uvicorn"} <= pinned
