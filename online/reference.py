"""The training-data index of a version: what its traffic, feedback and corrections are compared with.

A :class:`Reference` is built for every version published (``online.lifecycle.package``), from the
version's own serving path (same precision as the API): the embeddings of (a class-balanced sample of)
its training data, which go into a faiss index, and a *calibration* sample the version never trained on
(the frozen golden set), which says what in-domain traffic looks like against that index. Quarantine,
review, the correction memory, the gate and drift detection all read it, so it sits on the ground floor
with the statistics its null distributions are drawn with; the drift *signals* over a window of live
traffic are ``online.monitoring.drift``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REFERENCE_FILE = "reference.npz"
NULL_DRAWS = 500


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Each row scaled to unit length (float32): cosine similarity is then an inner product (faiss IP)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def mmd2(x: np.ndarray, y: np.ndarray, kyy_mean: float, gamma: float) -> float:
    """Biased MMD^2 with an RBF kernel on unit vectors (||a-b||^2 = 2 - 2 a.b)."""
    kxx = np.exp(-gamma * np.maximum(2 - 2 * x @ x.T, 0)).mean()
    kxy = np.exp(-gamma * np.maximum(2 - 2 * x @ y.T, 0)).mean()
    return float(kxx + kyy_mean - 2 * kxy)


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    m = 0.5 * (p + q)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_pm = np.where(p > 0, p * np.log2(p / m), 0).sum()
        kl_qm = np.where(q > 0, q * np.log2(q / m), 0).sum()
    return float(0.5 * kl_pm + 0.5 * kl_qm)


def p_value(null: np.ndarray, stat: float) -> float:
    return float((1 + np.count_nonzero(null >= stat)) / (1 + len(null)))


@dataclass
class Reference:
    """What a version's traffic is compared with; saved beside its weights as ``reference.npz``."""

    train: np.ndarray  # (n, d) unit embeddings of training data: the faiss index
    mmd_ref: np.ndarray  # (m, d) fixed training subsample for the MMD test
    pred_dist: np.ndarray  # (labels,) predicted-label distribution on the calibration sample
    nn_q95: float
    nn_q99: float
    gamma: float
    kyy_mean: float
    mmd_null: np.ndarray
    js_null: np.ndarray
    window: int
    train_labels: list[str] | None = None  # label of each indexed training point (quarantine neighbours)

    # --- building (the trainer) ---------------------------------------------------------------
    @classmethod
    def build(
        cls,
        train_emb: np.ndarray,
        calib_emb: np.ndarray,
        calib_pred: np.ndarray,
        n_labels: int,
        window: int,
        seed: int = 0,
        train_labels: list[str] | None = None,
        bootstrap: bool = False,
    ) -> "Reference":
        """``bootstrap``: draw the null windows from the calibration sample with replacement even when it
        has a window's worth (a calibration sample of about one window would otherwise give the same
        window, one null value, every draw)."""
        rng = np.random.default_rng(seed)
        train = unit_rows(train_emb)
        calib = unit_rows(calib_emb)
        d_cal = _nn_distance(_index(train), calib)
        m = min(len(train), 2 * window)
        mmd_ref = train[rng.choice(len(train), m, replace=False)]
        sample = train[rng.choice(len(train), min(len(train), 500), replace=False)]
        sq = np.maximum(2 - 2 * sample @ sample.T, 0)[np.triu_indices(len(sample), 1)]
        gamma = 1.0 / (2 * max(float(np.median(sq)), 1e-6))
        kyy = float(np.exp(-gamma * np.maximum(2 - 2 * mmd_ref @ mmd_ref.T, 0)).mean())
        replace = bootstrap or len(calib) < window
        mmd_null = np.array(
            [
                mmd2(calib[rng.choice(len(calib), window, replace=replace)], mmd_ref, kyy, gamma)
                for _ in range(NULL_DRAWS)
            ]
        )
        pred_dist = np.bincount(calib_pred, minlength=n_labels).astype(np.float64) / max(len(calib_pred), 1)
        js_null = np.array([js_divergence(label_hist(rng.choice(calib_pred, window), n_labels), pred_dist) for _ in range(NULL_DRAWS)])
        return cls(
            train=train,
            mmd_ref=mmd_ref,
            pred_dist=pred_dist,
            nn_q95=float(np.quantile(d_cal, 0.95)),
            nn_q99=float(np.quantile(d_cal, 0.99)),
            gamma=gamma,
            kyy_mean=kyy,
            mmd_null=mmd_null,
            js_null=js_null,
            window=window,
            train_labels=train_labels,
        )

    def save(self, path: Path) -> None:
        path.write_bytes(self.dumps())

    def dumps(self) -> bytes:
        buf = io.BytesIO()
        np.savez_compressed(
            buf,
            train=self.train.astype(np.float16),
            mmd_ref=self.mmd_ref,
            pred_dist=self.pred_dist,
            scalars=np.array([self.nn_q95, self.nn_q99, self.gamma, self.kyy_mean, self.window]),
            mmd_null=self.mmd_null,
            js_null=self.js_null,
            train_labels=np.array(self.train_labels or [], dtype=str),
        )
        return buf.getvalue()

    @classmethod
    def load(cls, path: Path) -> "Reference":
        z = np.load(path)
        q95, q99, gamma, kyy, window = z["scalars"].tolist()
        return cls(
            train=z["train"].astype(np.float32),
            mmd_ref=z["mmd_ref"],
            pred_dist=z["pred_dist"],
            nn_q95=q95,
            nn_q99=q99,
            gamma=gamma,
            kyy_mean=kyy,
            mmd_null=z["mmd_null"],
            js_null=z["js_null"],
            window=int(window),
            train_labels=z["train_labels"].tolist() if "train_labels" in z and len(z["train_labels"]) else None,
        )

    # --- using (the API) ----------------------------------------------------------------------
    def index(self):
        return _index(self.train)


def label_hist(pred: np.ndarray, n_labels: int) -> np.ndarray:
    return np.bincount(pred, minlength=n_labels).astype(np.float64) / max(len(pred), 1)


def _index(train: np.ndarray):
    import faiss

    faiss.omp_set_num_threads(1)  # searched on the API's forward thread: no second OpenMP team
    index = faiss.IndexFlatIP(train.shape[1])
    index.add(np.ascontiguousarray(train, dtype=np.float32))
    return index


def _nn_distance(index, x: np.ndarray) -> np.ndarray:
    """Cosine distance of each (unit) row of ``x`` to its nearest indexed neighbour."""
    sims, _ = index.search(np.ascontiguousarray(x, dtype=np.float32), 1)
    return 1.0 - sims[:, 0]


def nn_distance(index, embeddings: np.ndarray) -> np.ndarray:
    return _nn_distance(index, unit_rows(embeddings))


