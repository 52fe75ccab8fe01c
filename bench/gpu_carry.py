"""`python -m bench.gpu_carry`: what `bench/gpu.py` needs on a bare, offline GPU machine, made here.

The device machine has torch and transformers but not the project's model wheel, pydantic-settings, or
network access, and at most 64 MiB travels with the working tree. This writes two ignored folders to
carry there: ``.gpumodel/`` (MiniLM with its weights in fp16, upcast to fp32 there, its tokenizer; a
CLINC150 sample of 15 labels, 40 train and 20 test texts each) and ``.whl/`` (Python 3.12 wheels of the
few pure-Python packages the imported modules need). Then one device call runs the check:
``pip install --target /tmp/site .whl/*.whl; PYTHONPATH=/tmp/site:. python3 -m bench.gpu --out $OUT``.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WHEELS = [  # pydantic + pydantic-settings: online.settings and online.versioned import them
    "pydantic==2.14.4", "pydantic_core==2.50.5", "annotated-types==0.8.0", "typing-inspection==0.4.5",
    "pydantic-settings==2.16.3", "python-dotenv==1.2.4", "typing_extensions==4.16.0",
]  # fmt: skip
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]


def model_copy(target: Path) -> None:
    """MiniLM (the default base model) with fp16 weights: half the bytes of the wheel's fp32 file."""
    from safetensors.torch import load_file, save_file

    from online.model import default_base_model

    source = Path(default_base_model())
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "onnx", "openvino"))
    state = load_file(str(source / "model.safetensors"))
    save_file({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, str(target / "model.safetensors"))


def clinc_sample(data_dir: Path, target: Path, labels: int = 15, train: int = 40, test: int = 20) -> None:
    full = json.loads((data_dir / "data_full.json").read_text())
    chosen = set(random.Random(0).sample(sorted({lab for _, lab in full["train"]}), labels))

    def take(split: str, n: int) -> list[list[str]]:
        seen = dict.fromkeys(chosen, 0)
        rows = []
        for text, lab in full[split]:
            if lab in chosen and seen[lab] < n:
                seen[lab] += 1
                rows.append([text, lab])
        return rows

    sample = {"source": "CLINC150 (Larson et al., 2019, CC BY 3.0)", "train": take("train", train), "test": take("test", test)}
    target.write_text(json.dumps(sample))


def main() -> int:
    from online.settings import Settings

    carried = ROOT / ".gpumodel"
    carried.mkdir(exist_ok=True)
    model_copy(carried / "minilm")
    clinc_sample(Settings().data_dir, carried / "clinc_sample.json")
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
         "--implementation", "cp", *platforms, "-d", str(ROOT / ".whl"), *WHEELS],
        check=True,
    )  # fmt: skip
    exclude = ROOT / ".git" / "info" / "exclude"
    lines = exclude.read_text().splitlines() if exclude.is_file() else []
    exclude.write_text("\n".join([*lines, *(p for p in ("/.gpumodel/", "/.whl/") if p not in lines)]) + "\n")
    size = sum(f.stat().st_size for d in (carried, ROOT / ".whl") for f in d.rglob("*") if f.is_file())
    print(f"carry .gpumodel and .whl ({size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
