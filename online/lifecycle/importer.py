"""Bring a classifier the user already fine-tuned: a local ``AutoModelForSequenceClassification``
directory becomes a version, through the same gate, registry and promotion as a trained one.

Its ``id2label`` becomes the label set; its own pooling and classifier are kept (BERT-style: the pooler
layer and a linear classifier; RoBERTa/XLM-R-style: dense + tanh on the first token, then ``out_proj``),
and the converted model is checked to give the original's logits before anything is published. Its
config and tokenizer files are copied into the model store, so the version does not depend on the
directory it came from. Continual rounds then grow its classifier for new labels like any version's.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from online.events import label_ok
from online.examples import Example
from online.lifecycle.gate import Gate, GoldenSet
from online.lifecycle.registry import Manifest, ModelRegistry
from online.lifecycle.release import JudgedVersion, release
from online.model import TextClassifier
from online.reports import GateReport, ImportStats
from online.settings import Settings

log = logging.getLogger("online.lifecycle.importer")

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".ot", ".onnx", ".ckpt")
BASES_DIR = "bases"


class ImportRefused(ValueError):
    """The directory is not a classifier this product can serve as it is, or the gate refused it."""


def convert(path: Path, store: Path) -> TextClassifier:
    """The classifier in ``path`` as a :class:`TextClassifier` whose ``base_model`` is a copy of its
    config and tokenizer under ``store``. Raises :class:`ImportRefused` with the reason."""
    path = Path(path)
    try:
        config = AutoConfig.from_pretrained(path)
        original = AutoModelForSequenceClassification.from_pretrained(path).eval()
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, KeyError) as exc:
        raise ImportRefused(f"{path}: not a local sequence-classification model with its tokenizer ({exc})") from None
    labels = [str(config.id2label[i]) for i in range(config.num_labels)]
    if len(set(labels)) != len(labels):
        raise ImportRefused(f"{path}: id2label names a label twice: {labels}")
    if all(lab == f"LABEL_{i}" for i, lab in enumerate(labels)):
        raise ImportRefused(f"{path}: config.json has no label names (id2label is LABEL_0, LABEL_1, ...): set them")
    bad = [lab for lab in labels if not label_ok(lab)]
    if bad:
        raise ImportRefused(
            f"{path}: labels feedback events cannot carry: {bad[:5]} (letters, digits, _ . : / - space)"
        )
    encoder, head = _encoder_and_head(original, config)
    model = TextClassifier(encoder, labels, str(path), "pooler")
    model.head = head
    model.eval()
    _check_same_logits(original, model, tokenizer, path)
    model.base_model = str(_copy_base(path, store))  # only once it is known to be served as it was
    return model


def _encoder_and_head(original: nn.Module, config) -> tuple[nn.Module, nn.Linear]:
    """BERT-style: the encoder with its pooler + the linear classifier. RoBERTa-style: the classifier's
    dense layer becomes the encoder's pooler (the same dense + tanh on the first token), ``out_proj`` the head."""
    classifier = getattr(original, "classifier", None)
    body = original.base_model
    if isinstance(classifier, nn.Linear) and getattr(body, "pooler", None) is not None:
        head = nn.Linear(classifier.in_features, classifier.out_features)
        head.load_state_dict(classifier.state_dict())
        return body, head
    if isinstance(getattr(classifier, "dense", None), nn.Linear) and isinstance(
        getattr(classifier, "out_proj", None), nn.Linear
    ):
        encoder = AutoModel.from_config(config)  # the same encoder, with a pooler layer
        if getattr(encoder, "pooler", None) is None:
            raise ImportRefused(f"{type(original).__name__}: its encoder has no pooler layer to carry the classifier")
        missing, unexpected = encoder.load_state_dict(body.state_dict(), strict=False)
        if unexpected or any(not k.startswith("pooler.") for k in missing):
            raise ImportRefused(f"{type(original).__name__}: encoder weights do not fit ({missing}, {unexpected})")
        encoder.pooler.dense.load_state_dict(classifier.dense.state_dict())
        head = nn.Linear(classifier.out_proj.in_features, classifier.out_proj.out_features)
        head.load_state_dict(classifier.out_proj.state_dict())
        return encoder, head
    raise ImportRefused(
        f"{type(original).__name__}: classifier layout not supported (supported: BERT-style pooler + linear "
        "classifier, RoBERTa-style dense + tanh + out_proj)"
    )


@torch.inference_mode()
def _check_same_logits(original: nn.Module, model: TextClassifier, tokenizer, path: Path) -> None:
    texts = ["a short text", "ein anderer Satz, etwas länger als der erste", "退款什么时候到账"]
    enc = tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    want = original(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
    got = model(enc["input_ids"], enc["attention_mask"])
    if not torch.allclose(want, got, atol=1e-4, rtol=1e-3):
        raise ImportRefused(f"{path}: the converted model does not reproduce the original's logits")


def _copy_base(path: Path, store: Path) -> Path:
    """Config and tokenizer files (every top-level file but weights) into ``store/bases/<name>-<digest>``."""
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.endswith(WEIGHT_SUFFIXES))
    digest = hashlib.sha256()
    for p in files:
        digest.update(p.name.encode() + b"\0" + p.read_bytes())
    target = Path(store) / BASES_DIR / f"{path.resolve().name}-{digest.hexdigest()[:12]}"
    if not target.is_dir():
        tmp = target.with_name(f"{target.name}.{uuid.uuid4().hex[:8]}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for p in files:
            shutil.copy2(p, tmp / p.name)
        try:
            tmp.rename(target)
        except OSError:  # another import of the same directory got there first
            shutil.rmtree(tmp, ignore_errors=True)
    return target.resolve()


def import_classifier(
    settings: Settings,
    registry: ModelRegistry,
    path: Path,
    test: Sequence[Example] = (),
    reason: str = "",
    fence: Callable[[], None] | None = None,
) -> tuple[Manifest, GateReport]:
    """Convert, judge and publish ``path``; promote it when it passed. ``test``: labelled texts of its
    labels: the golden set when none is frozen yet, else a holdout the import must do as well on as live.

    With nothing live, the import is version 1 (its gate report is a baseline); otherwise it is a
    candidate against live, judged on the frozen golden set like any round's."""
    model = convert(path, registry.store.local)
    registry.fetch_golden()
    live = registry.live()
    if live is None and not GoldenSet.exists(settings) and not test:
        raise ImportRefused("no golden set yet: give labelled test texts of the model's labels (--test FILE)")
    unknown = sorted({lab for _, lab in test} - set(model.labels))
    if unknown:  # checked before a golden set is frozen from these texts
        raise ImportRefused(f"the test texts use labels the model does not have: {', '.join(unknown[:10])}")
    golden = GoldenSet.for_settings(settings, list(test) if live is None else None)
    gate = Gate(settings, golden)
    if live is None:
        report = gate.baseline(model)
    else:
        live_model, live_manifest = registry.load(live)
        report = gate.evaluate(model, live_model, live_manifest.gate, list(test))
    released = release(
        registry,
        settings,
        JudgedVersion(
            model=model,
            report=report,
            parent=live,
            trained_on=list(test) or golden.examples,
            calibration=golden.examples,
            golden=golden.examples,
            metrics={"golden_accuracy": report.golden_accuracy},
        ),
        ImportStats(source=str(Path(path).resolve()), labels=len(model.labels)),
        reason=reason or f"imported from {Path(path).name}",
        fence=fence,
    )
    if not report.passed:
        log.warning(
            "import of %s refused by the gate (%s): version %d rejected", path, report.failed(), released.manifest.version
        )
    return released.manifest, report
