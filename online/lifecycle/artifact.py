"""A version's int8 serving artifact: exported and quantised once, at publish, then checked by the gate.

The trainer (and version 1, and an import) export the candidate to ONNX with torch's maintained
exporter (``torch.export`` based, dynamic batch and sequence axes), quantise its weights to int8 with
ONNX Runtime's ``quantize_dynamic`` (QInt8, activations quantised per batch at run time) and judge the
result on the golden set against the same model in fp32: accuracy within ``engine_max_drop`` and argmax
agreement at least ``engine_min_agreement``. Only an artifact that passed is stored in the registry
(sha256 in the manifest); a version without one is served by torch, and the reason is in its gate report.
Replicas never export: they verify and load.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from online.engines import INT8_FILE
from online.examples import Example
from online.model import TextClassifier
from online.predictor import Predictor, int8_predictor
from online.reports import EngineCheck
from online.settings import Settings

log = logging.getLogger("online.lifecycle.artifact")


class _Served(torch.nn.Module):
    """What the artifact computes: probabilities and the sentence embedding, like the torch engine."""

    def __init__(self, model: TextClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = self.model.embed(input_ids, attention_mask)
        return torch.softmax(self.model.head(pooled), dim=-1), pooled


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Only errors from one library's loggers for a while; ``""``: drop what is logged on the root logger
    itself (a filter there: lowering its level would silence every logger that inherits it)."""
    logger = logging.getLogger(name or None)
    was = logger.level
    drop_all = logging.Filter("\0")  # matches no logger name: every record is dropped
    if name:
        logger.setLevel(logging.ERROR)
    else:
        logger.addFilter(drop_all)
    try:
        yield
    finally:
        logger.setLevel(was)
        logger.removeFilter(drop_all)


def export_int8(model: TextClassifier, target: Path) -> None:
    """Export ``model`` (a CPU fp32 copy; the original is untouched) to ONNX and quantise it to ``target``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    served = _Served(copy.deepcopy(model).float().cpu().eval())
    example = (torch.ones(4, 12, dtype=torch.long), torch.ones(4, 12, dtype=torch.long))
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq", max=4096)
    with tempfile.TemporaryDirectory(prefix="online-export-") as tmp:
        fp32 = Path(tmp) / "model.onnx"
        # The exporter reports its passes on stdout and warns about its own internals: neither is ours.
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            _quiet("torch.onnx"),
            _quiet("onnxscript"),  # its optimiser logs every pass at INFO
            _quiet("onnx_ir"),
        ):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                served,
                example,
                input_names=["input_ids", "attention_mask"],
                output_names=["probabilities", "embeddings"],
                dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
                dynamo=True,
                optimize=True,
                verbose=False,
            )
            program.save(str(fp32), external_data=True)
            with _quiet(""):  # quantize_dynamic logs a pre-processing hint on the root logger at every call
                quantize_dynamic(fp32, target, weight_type=QuantType.QInt8)


def check_int8(
    model: TextClassifier, path: Path, golden: Sequence[Example], settings: Settings
) -> tuple[float, float, float]:
    """(int8 accuracy, fp32 accuracy, argmax agreement) on ``golden``."""
    texts = [t for t, _ in golden]
    int8 = int8_predictor(path, 0, model.labels, model.base_model, settings)
    fp32 = Predictor(model, 0, device="cpu", precision="fp32", max_seq_len=settings.max_seq_len)  # the CPU reference
    a = int8.probabilities(texts).argmax(-1)
    b = fp32.probabilities(texts).argmax(-1)
    gold = torch.tensor([model.labels.index(lab) if lab in model.labels else -1 for _, lab in golden])
    n = max(len(texts), 1)
    return float((a == gold).sum()) / n, float((b == gold).sum()) / n, float((a == b).sum()) / n


def build_int8(
    model: TextClassifier, golden: Sequence[Example], settings: Settings, workdir: Path
) -> tuple[Path | None, EngineCheck | None]:
    """Build and judge the int8 artifact in ``workdir``; the path only when it passed (else torch serves
    the version). ``(None, None)`` when the engine setting is ``torch``: nothing to build."""
    if settings.engine == "torch":
        return None, None
    started = time.perf_counter()
    target = workdir / INT8_FILE
    limits = {"max_drop": settings.engine_max_drop, "min_agreement": settings.engine_min_agreement}
    step = "export"
    try:
        export_int8(model, target)
        step = "check"
        acc, fp32_acc, agreement = check_int8(model, target, golden, settings)
    except Exception as exc:  # an architecture the exporter or ONNX Runtime cannot handle: torch serves it
        log.warning("int8 artifact failed its %s (%r): the version will be served by torch", step, exc)
        detail = f"{step} failed: {exc!r}"[:500]
        return None, EngineCheck(passed=False, build_s=time.perf_counter() - started, detail=detail, **limits)
    passed = fp32_acc - acc <= settings.engine_max_drop and agreement >= settings.engine_min_agreement
    check = EngineCheck(
        passed=passed,
        accuracy=acc,
        fp32_accuracy=fp32_acc,
        agreement=agreement,
        build_s=time.perf_counter() - started,
        detail=f"golden {len(golden)} texts: int8 {acc:.4f} vs fp32 {fp32_acc:.4f}, agreement {agreement:.4f}",
        **limits,
    )
    if not passed:
        log.warning("int8 artifact refused (%s): the version will be served by torch", check.detail)
        return None, check
    return target, check
