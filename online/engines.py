"""What runs the forward of a served version: torch, or ONNX Runtime on int8 weights.

Measured side by side on 2 cores (MiniLM, batches of 32, length-bucketed): torch bf16 548 texts/s, torch
fp32 343, ONNX Runtime fp32 425, ONNX Runtime int8 (``quantize_dynamic``, QInt8 weights) 791, at -0.18
point of accuracy. ``torch.ao`` dynamic int8 was close (757) but is deprecated; ONNX Runtime is the
maintained path. The int8 artifact is built once per version at publish (``online.lifecycle.artifact``)
and checked by the gate; a replica only loads it. On CUDA torch stays the engine (autocast bf16/fp16).

Both engines answer the same thing for a padded batch: softmax probabilities and the sentence
embedding (the head's input, which drift monitoring and the correction memory use), float32 on the CPU.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch

from online.model import LiftedHead, TextClassifier, resolve_device

log = logging.getLogger("online.serving.engines")

INT8_FILE = "model.int8.onnx"
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class Engine(Protocol):
    name: str  # what /readyz and the metrics show: "torch-bf16", "onnx-int8", ...
    hidden_size: int
    pin_memory: bool  # build batches in pinned host memory (CUDA: the copy overlaps the launch)
    torch_threads: int | None  # torch's CPU threads while it runs (None: as the process configured them)
    lanes: int  # batches it may run at once, each from its own thread (torch: 1)

    def __call__(self, input_ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Probabilities and embeddings of one padded batch, float32 on the CPU."""
        ...


def cpu_threads(threads: int | None = None) -> int:
    """``threads`` if set, else the CPUs this process may run on (its affinity, not the machine's)."""
    return threads or len(os.sched_getaffinity(0))


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 where the hardware runs it natively, else fp32 (fp16 on CUDA without bf16)."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"


def resolve_engine(engine: str, device: str) -> Literal["torch", "onnx-int8"]:
    """``auto``: the int8 engine on CPU (measured fastest there), torch on CUDA."""
    if engine != "auto":
        return engine  # type: ignore[return-value]
    return "torch" if resolve_device(device).type == "cuda" else "onnx-int8"


@contextlib.contextmanager
def torch_thread_count(n: int | None) -> Iterator[None]:
    """torch's CPU threads set to ``n`` for a while (``None``: unchanged), restored after."""
    before = torch.get_num_threads()
    if n is None or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class TorchEngine:
    """The model itself in the serving precision: a bf16 copy of the weights on a CPU with native bf16,
    autocast on CUDA, fp32 otherwise."""

    def __init__(self, model: TextClassifier, *, device: str, precision: str, copy_model: bool = True) -> None:
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        served = (copy.deepcopy(model) if copy_model else model).eval().to(self.device)
        self._autocast = self.device.type == "cuda" and self.precision != "fp32"
        if not self._autocast:
            served = served.to(_DTYPES[self.precision])
            if isinstance(served.head, LiftedHead):
                served.head.float()  # the closed-form head is served in fp32 (LiftedHead.forward says why)
        for p in served.parameters():
            p.requires_grad_(False)
        self.model = served
        self.hidden_size = served.head.in_features
        self.name = f"torch-{self.precision}"
        self.pin_memory = self.device.type == "cuda"
        self.torch_threads = None
        self.lanes = 1  # one thread runs torch (Predictor)

    @torch.inference_mode()
    def __call__(self, input_ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        non_blocking = self.device.type == "cuda"  # pinned host memory: the copy overlaps the launch
        input_ids = input_ids.to(self.device, non_blocking=non_blocking)
        mask = mask.to(self.device, non_blocking=non_blocking)
        with torch.autocast(self.device.type, dtype=_DTYPES[self.precision], enabled=self._autocast):
            pooled = self.model.embed(input_ids, mask)
            logits = self.model.head(pooled)
        # one device -> host copy per batch (the only sync of a CUDA forward)
        both = torch.cat([torch.softmax(logits.float(), dim=-1), pooled.float()], dim=-1).cpu()
        return both[:, : logits.shape[-1]], both[:, logits.shape[-1] :]


SOLO_AFTER_S = 0.5  # a lane engine runs alone on every thread once no runs overlapped for this long


class OnnxEngine:
    """An ONNX Runtime session on a version's int8 artifact (CPU).

    The session is created wherever the caller likes (a replica builds it on a worker thread at normal
    priority during a hot swap: it is not torch work, so it makes no second OpenMP team, and its pool
    threads must not inherit a low priority) and run on the forward thread. ``threads``: ONNX Runtime's
    intra-op pool; unset, one per CPU this process may use (set explicitly: left at 0, ONNX Runtime's own
    choice ran at 549 texts/s against 759 with 2 threads on 2 cores).
    """

    name = "onnx-int8"
    pin_memory = False
    # torch only does bookkeeping around this engine (padding, softmax rows, top-k); with more than one
    # thread its OpenMP team spins beside ONNX Runtime's pool: every run was ~20% slower (measured).
    torch_threads = 1

    def __init__(self, path: Path, *, threads: int | None = None, lanes: int = 1) -> None:
        import onnxruntime as ort

        def session(n: int) -> ort.InferenceSession:
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.inter_op_num_threads = 1
            options.intra_op_num_threads = n
            options.log_severity_level = 3  # errors only: its warnings are about graph rewrites, not faults
            return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

        threads = cpu_threads(threads)
        self.session = session(threads)
        # Several lanes (online.serving.batcher): while runs overlap, each takes a session of its share of
        # the threads, so two runs use two cores without four threads fighting over them; a run alone takes
        # every thread (a single text in 2.0 ms on 2 threads against 2.3 ms on one), but only when no run
        # overlapped another for SOLO_AFTER_S: under concurrent load the whole-machine session's pool,
        # spinning after each run, took the cores from the lanes (-20% req/s at 32 clients, measured).
        self.lane_session = session(max(1, threads // lanes)) if lanes > 1 else None
        self.lanes = lanes if self.lane_session is not None else 1
        self._running = 0
        self._overlapped = -SOLO_AFTER_S  # monotonic time runs last overlapped
        self._count = threading.Lock()
        outputs = {o.name: o for o in self.session.get_outputs()}
        self.hidden_size = int(outputs["embeddings"].shape[-1])
        if self.lane_session is not None:  # its first runs allocate; a replica warms the other one up
            for rows, width in ((16, 16), (1, 64)):
                ids = np.ones((rows, width), np.int64)
                self.lane_session.run(["probabilities"], {"input_ids": ids, "attention_mask": ids})

    def __call__(self, input_ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with self._count:
            now = time.monotonic()
            if self._running:
                self._overlapped = now
            alone = not self._running and now - self._overlapped > SOLO_AFTER_S
            self._running += 1
        session = self.session if alone or self.lane_session is None else self.lane_session
        try:
            probs, emb = session.run(
                ["probabilities", "embeddings"],
                {"input_ids": input_ids.numpy().astype(np.int64), "attention_mask": mask.numpy().astype(np.int64)},
            )
        finally:
            with self._count:
                self._running -= 1
        return torch.from_numpy(probs), torch.from_numpy(emb)
