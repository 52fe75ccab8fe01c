"""Versioned model registry: weights and manifests on disk, the index and the ``live`` alias in Redis.

Files are written first and the Redis index second, so a version the index names always has its files.
The ``live`` alias changes in one MULTI/EXEC together with its history entry, and every change is
announced on a pub/sub channel; replicas that miss the message still see it by polling :meth:`live`.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Literal

import redis
from pydantic import BaseModel, Field

from online.keys import Keys
from online.model import WEIGHTS_FILE, Pooling, TextClassifier, sha256_file

MANIFEST_FILE = "manifest.json"
Status = Literal["published", "rejected", "collected"]


class Manifest(BaseModel):
    """What is known of one version; stored beside its weights and in the Redis index."""

    version: int
    labels: list[str]
    base_model: str
    sha256: str
    pooling: Pooling = "mean"
    parent: int | None = None
    created_at: float = Field(default_factory=time.time)
    status: Status = "published"
    metrics: dict[str, float] = Field(default_factory=dict)
    round: dict[str, Any] = Field(default_factory=dict)
    gate: dict[str, Any] | None = None


class LiveChange(BaseModel):
    """One move of the live alias: a promotion or a rollback (manual or automatic)."""

    at: float = Field(default_factory=time.time)
    action: Literal["promote", "rollback", "auto_rollback"]
    version: int
    previous: int | None
    reason: str = ""


class LiveMoved(RuntimeError):
    """The live alias is no longer the version a promotion was based on (e.g. a rollback happened)."""


class IntegrityError(RuntimeError):
    """A version's weight file is missing or does not match its manifest's sha256."""


class ModelRegistry:
    def __init__(self, client: redis.Redis, store: Path, keys: Keys) -> None:
        self.r = client
        self.store = Path(store)
        self.store.mkdir(parents=True, exist_ok=True)
        ns = keys.registry
        self._index = f"{ns}:index"
        self._live = f"{ns}:live"
        self._seq = f"{ns}:seq"
        self._history = f"{ns}:history"
        self._shadow = f"{ns}:shadow"
        self.channel = keys.registry_channel

    # --- reading ------------------------------------------------------------------------------
    def path(self, version: int) -> Path:
        return self.store / f"v{version}"

    def live(self) -> int | None:
        value = self.r.get(self._live)
        return int(value) if value is not None else None

    def get(self, version: int) -> Manifest:
        raw = self.r.hget(self._index, str(version))
        if raw is None:
            raise KeyError(f"no model version {version}")
        return Manifest.model_validate_json(raw)

    def list(self) -> list[Manifest]:
        items = [Manifest.model_validate_json(v) for v in self.r.hvals(self._index)]
        return sorted(items, key=lambda m: m.version)

    def history(self) -> list[LiveChange]:
        return [LiveChange.model_validate_json(v) for v in self.r.lrange(self._history, 0, -1)]

    def verify(self, version: int) -> Manifest:
        """Check a version's weight file against its manifest's sha256 (no torch involved)."""
        manifest = self.get(version)
        weights = self.path(version) / WEIGHTS_FILE
        if not weights.is_file():
            raise IntegrityError(f"version {version}: weight file {weights} is missing")
        digest = sha256_file(weights)
        if digest != manifest.sha256:
            raise IntegrityError(f"version {version}: sha256 {digest[:12]} != manifest {manifest.sha256[:12]}")
        return manifest

    def load(self, version: int, verify: bool = True) -> tuple[TextClassifier, Manifest]:
        """Load a version's weights, by default after :meth:`verify`."""
        manifest = self.verify(version) if verify else self.get(version)
        model = TextClassifier.load(
            self.path(version) / WEIGHTS_FILE, manifest.labels, manifest.base_model, manifest.pooling
        )
        return model, manifest

    # --- writing ------------------------------------------------------------------------------
    def publish(
        self,
        model: TextClassifier,
        *,
        parent: int | None,
        metrics: dict[str, float] | None = None,
        round_stats: dict[str, Any] | None = None,
        gate: dict[str, Any] | None = None,
        status: Status = "published",
        extra_files: dict[str, bytes] | None = None,
    ) -> Manifest:
        """Store a new version (files, then index). It serves nothing until :meth:`promote`.

        ``extra_files`` (e.g. the drift reference) are written into the version's directory too."""
        version = int(self.r.incr(self._seq))
        target = self.path(version)
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        sha = model.save(tmp / WEIGHTS_FILE)
        for name, data in (extra_files or {}).items():
            (tmp / name).write_bytes(data)
        manifest = Manifest(
            version=version,
            labels=model.labels,
            base_model=model.base_model,
            sha256=sha,
            pooling=model.pooling,
            parent=parent,
            status=status,
            metrics=metrics or {},
            round=round_stats or {},
            gate=gate,
        )
        (tmp / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2))
        tmp.rename(target)
        self.r.hset(self._index, str(version), manifest.model_dump_json())
        return manifest

    def promote(
        self, version: int, action: str = "promote", reason: str = "", expect_live: int | None = None
    ) -> LiveChange:
        """Point ``live`` at ``version`` atomically and tell every replica. Callers go through
        ``online.lifecycle.promotion``, which checks the weights first.

        ``expect_live``: only if live is still that version (raises :class:`LiveMoved` otherwise), so a
        candidate trained from a version that was rolled back meanwhile never replaces the rollback."""
        manifest = self.get(version)
        if manifest.status != "published":
            raise ValueError(f"version {version} is {manifest.status} and can never be live")
        with self.r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(self._live)
                    previous = pipe.get(self._live)
                    if expect_live is not None and (int(previous) if previous else None) != expect_live:
                        raise LiveMoved(f"live is {previous}, not {expect_live}: version {version} not promoted")
                    change = LiveChange(
                        action=action, version=version, previous=int(previous) if previous else None, reason=reason
                    )
                    pipe.multi()
                    pipe.set(self._live, version)
                    pipe.rpush(self._history, change.model_dump_json())
                    pipe.execute()
                    break
                except redis.WatchError:
                    continue
        shadow = self.shadow()
        if shadow and shadow["version"] == version:
            self.clear_shadow()  # it is live now
        self.r.publish(self.channel, json.dumps({"live": version}))
        return change

    def last_change(self) -> LiveChange | None:
        raw = self.r.lindex(self._history, -1)
        return LiveChange.model_validate_json(raw) if raw else None

    def protected(self) -> set[int]:
        """Versions never collected: live, its parent (the default rollback target), the previous live."""
        keep: set[int] = set()
        live = self.live()
        if live is not None:
            keep.add(live)
            parent = self.get(live).parent
            if parent is not None:
                keep.add(parent)
        last = self.last_change()
        if last and last.previous is not None:
            keep.add(last.previous)
        return keep

    def collect(self, keep: int) -> list[int]:
        """Delete the files of versions older than the last ``keep`` (except :meth:`protected` ones).

        The manifest stays in the index with status ``collected``, so history and lineage still read;
        such a version can no longer be promoted or rolled back to. Returns the versions collected."""
        manifests = [m for m in self.list() if m.status != "collected"]
        recent = {m.version for m in manifests[-keep:]}
        protected = self.protected()
        collected = []
        for m in manifests:
            if m.version in recent or m.version in protected:
                continue
            m.status = "collected"
            self.r.hset(self._index, str(m.version), m.model_dump_json())
            shutil.rmtree(self.path(m.version), ignore_errors=True)
            collected.append(m.version)
        return collected

    # --- shadow evaluation --------------------------------------------------------------------
    def shadow(self) -> dict | None:
        """The version running in shadow (answers logged, never returned): {version, share, since}."""
        raw = self.r.get(self._shadow)
        return json.loads(raw) if raw else None

    def set_shadow(self, version: int, share: float) -> None:
        manifest = self.get(version)
        if manifest.status != "published":
            raise ValueError(f"version {version} is {manifest.status}: it cannot run in shadow")
        self.r.set(self._shadow, json.dumps({"version": version, "share": share, "since": time.time()}))
        self.r.publish(self.channel, json.dumps({"shadow": version}))

    def clear_shadow(self) -> None:
        if self.r.delete(self._shadow):
            self.r.publish(self.channel, json.dumps({"shadow": None}))
