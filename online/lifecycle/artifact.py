"""A version's int8 serving artifact: exported and quantised once, at publish, then checked by the gate.

The trainer (and version 1, and an import) export the candidate to ONNX with torch's maintained
exporter (``torch.export`` based, dynamic batch and sequence axes), quantise its weights to int8 with
ONNX Runtime's ``quantize_dynamic`` (QInt8, activations quantised per batch at run time) and judge the
result on the golden set against the same model in fp32: accuracy within ``engine_max_drop`` and argmax
agreement at least ``engine_min_agreement``. Only an artifact that passed is stored in the registry
(sha256 in the manifest); a version without one is served by torch, and the reason is in its gate report.
Replicas never export: they verify and load.

A closed-form (lifted) head is not quantised: the encoder is exported and quantised alone, once per
encoder (a head round keeps the encoder, so its artifact is the cached encoder graph plus the new head:
well under a second instead of an export), and the lift, ReLU, solved head and softmax are appended in
fp32 (a ridge solution's weights cancel one another; rounded to int8 they would move answers).
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import tempfile
import time
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from online.engines import INT8_FILE
from online.examples import Example
from online.model import LiftedHead, TextClassifier, encoder_fingerprint
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


class _ServedEncoder(torch.nn.Module):
    """The encoder part of a lifted-head artifact: the sentence embedding alone."""

    def __init__(self, model: TextClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.embed(input_ids, attention_mask)


# encoder fingerprint -> its exported, quantised ONNX graph: the trainer's latest encoders (a head round's
# artifact reuses its live encoder's)
_ENCODERS: OrderedDict[str, bytes] = OrderedDict()
_ENCODERS_KEPT = 2


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
    if isinstance(model.head, LiftedHead):
        _export_lifted(model, target)
        return
    _export_quantized(_Served(copy.deepcopy(model).float().cpu().eval()), ["probabilities", "embeddings"], target)


def _export_quantized(served: torch.nn.Module, output_names: list[str], target: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

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
                output_names=output_names,
                dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
                dynamo=True,
                optimize=True,
                verbose=False,
            )
            program.save(str(fp32), external_data=True)
            with _quiet(""):  # quantize_dynamic logs a pre-processing hint on the root logger at every call
                quantize_dynamic(fp32, target, weight_type=QuantType.QInt8)


def _export_lifted(model: TextClassifier, target: Path) -> None:
    """The quantised encoder (cached per encoder fingerprint) and the lifted head in fp32 after it."""
    import onnx

    key = encoder_fingerprint(model)
    encoder = _ENCODERS.pop(key, None)
    if encoder is None:
        with tempfile.TemporaryDirectory(prefix="online-export-") as tmp:
            path = Path(tmp) / "encoder.onnx"
            _export_quantized(_ServedEncoder(copy.deepcopy(model).float().cpu().eval()), ["embeddings"], path)
            encoder = path.read_bytes()
    _ENCODERS[key] = encoder
    while len(_ENCODERS) > _ENCODERS_KEPT:
        _ENCODERS.popitem(last=False)
    graph = onnx.load_from_string(encoder)
    _append_lifted_head(graph, model.head)  # type: ignore[arg-type]
    onnx.save(graph, str(target))


def _append_lifted_head(proto, head: LiftedHead) -> None:
    """``probabilities = softmax(relu(e / max(|e|, 1e-12) @ lift^T) @ W^T + b)`` on the ``embeddings``
    output, in fp32: what :meth:`online.model.LiftedHead.forward` computes."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    graph = proto.graph
    embeddings = next(o for o in graph.output if o.name == "embeddings")
    batch = embeddings.type.tensor_type.shape.dim[0]
    p = "lifted_head/"

    def init(name: str, array: np.ndarray) -> str:
        graph.initializer.append(numpy_helper.from_array(array, p + name))
        return p + name

    lift_t = init("lift_t", np.ascontiguousarray(head.lift.detach().float().cpu().numpy().T))
    weight_t = init("weight_t", np.ascontiguousarray(head.weight.detach().float().cpu().numpy().T))
    bias = init("bias", head.bias.detach().float().cpu().numpy())
    eps = init("eps", np.array(1e-12, dtype=np.float32))
    axes = init("axes", np.array([-1], dtype=np.int64))
    e = "embeddings"
    graph.node.extend(
        [
            helper.make_node("Mul", [e, e], [p + "sq"]),
            helper.make_node("ReduceSum", [p + "sq", axes], [p + "sumsq"], keepdims=1),
            helper.make_node("Sqrt", [p + "sumsq"], [p + "norm"]),
            helper.make_node("Max", [p + "norm", eps], [p + "norm_eps"]),
            helper.make_node("Div", [e, p + "norm_eps"], [p + "unit"]),
            helper.make_node("MatMul", [p + "unit", lift_t], [p + "z"]),
            helper.make_node("Relu", [p + "z"], [p + "h"]),
            helper.make_node("MatMul", [p + "h", weight_t], [p + "mm"]),
            helper.make_node("Add", [p + "mm", bias], [p + "logits"]),
            helper.make_node("Softmax", [p + "logits"], ["probabilities"], axis=-1),
        ]
    )
    shape = [batch.dim_param or batch.dim_value or "batch", head.out_features]
    graph.output.insert(0, helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, shape))


def check_int8(
    model: TextClassifier, path: Path, golden: Sequence[Example], settings: Settings
) -> tuple[float, float, float]:
    """(int8 accuracy, fp32 accuracy, argmax agreement) on ``golden``."""
    texts = [t for t, _ in golden]
    int8 = int8_predictor(path, 0, model.labels, model.base_model, settings, reuse=model)
    # the CPU reference
    fp32 = Predictor(model, 0, device="cpu", precision="fp32", max_seq_len=settings.max_seq_len, reuse=True)
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
