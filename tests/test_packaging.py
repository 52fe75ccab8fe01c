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


def test_every_floor_is_the_tested_release_line():
    """A declared floor below what the suite ran with would promise versions nobody tested: each floor
    in pyproject.toml has the major.minor of its pin in constraints.txt (torch: the README's pin)."""
    import re
    import tomllib

    from packaging.requirements import Requirement
    from packaging.version import Version

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {
        name.lower().replace("_", "-"): Version(version)
        for name, version in re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M)
    }
    pins["torch"] = Version(re.search(r"torch==([\d.]+)", (ROOT / "README.md").read_text()).group(1))
    declared = [*project["dependencies"], *(d for ds in project["optional-dependencies"].values() for d in ds)]
    checked = []
    for line in declared:
        req = Requirement(line)
        floors = [Version(s.version) for s in req.specifier if s.operator == ">="]
        if not floors or req.name == "online":
            continue
        pin = pins.get(req.name.lower())
        assert pin is not None, f"{req.name} has a floor but no tested pin in constraints.txt"
        assert floors[0] <= pin and floors[0].release[:2] == pin.release[:2], (
            f"{req.name}: floor {floors[0]} is not the tested line {pin.major}.{pin.minor} (constraints.txt)"
        )
        checked.append(req.name)
    assert {"transformers", "kafka-python", "redis", "fastapi"} <= set(checked)
