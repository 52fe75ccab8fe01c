"""Versioned model registry: version files in a model store (a folder or S3-compatible object storage,
``online.lifecycle.store``), the index and the ``live`` alias in Redis.

Files are written first and the Redis index second, so a version the index names always has its files.
Every file of a version (weights, int8 artifact, drift reference) has its sha256 in the manifest and is
checked before it serves; a process reads versions from its local directory (the folder, or its cache of
the object store, filled on first use).
The ``live`` alias changes in one MULTI/EXEC together with its history entry, and every change is
announced on a pub/sub channel; replicas that miss the message still see it by polling :meth:`live`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Literal

import redis
from pydantic import BaseModel, Field, field_validator

import online.generative  # noqa: F401  (registers the generative family's loader, as online.model does the classifier's)
from online.contract import CanarySlot, ShadowSlot
from online.keys import Keys
from online.lifecycle.store import GOLDEN_FILE, MANIFEST_FILE, FolderStore, ModelStore, StoreUnavailable
from online.model import WEIGHTS_FILE, sha256_file
from online.reports import GateReport, VersionStats
from online.versioned import ModelSpec, VersionModel, load_model

log = logging.getLogger("online.lifecycle.registry")
Status = Literal["published", "rejected", "collected"]


class Manifest(ModelSpec):
    """What is known of one version; stored beside its weights and in the Redis index. Its
    :class:`ModelSpec` fields (family, labels, base model, pooling) rebuild the model."""

    version: int
    sha256: str
    parent: int | None = None
    created_at: float = Field(default_factory=time.time)
    status: Status = "published"
    metrics: dict[str, float] = Field(default_factory=dict)
    round: VersionStats | None = None  # how it was made: a round, the seed training, an import
    gate: GateReport | None = None  # the gate's judgement (a baseline for a version nothing was compared with)
    artifacts: dict[str, str] = Field(default_factory=dict)  # serving artifacts beside the weights: name -> sha256
    # An imported classifier's base (config, tokenizer) shared through the store: a key under it, so every
    # host reads it from its own local directory (``base_model`` is rewritten to that path when read).
    base_ref: str | None = None

    @field_validator("round", mode="before")
    @classmethod
    def _empty_round(cls, value: object) -> object:
        """Manifests written before rounds were typed stored ``{}`` for "no statistics"."""
        return None if value == {} else value


CanaryAction = Literal["canary_start", "canary_step", "canary_pause", "canary_resume", "canary_abort", "canary_rollback"]


class LiveChange(BaseModel):
    """One entry of the alias history: a move of the live alias (a promotion or a rollback, manual or
    automatic), or a step of a canary (``canary_*``: ``version`` is the canary, ``previous`` live)."""

    at: float = Field(default_factory=time.time)
    action: Literal["promote", "rollback", "auto_rollback"] | CanaryAction
    version: int
    previous: int | None
    reason: str = ""


class LiveMoved(RuntimeError):
    """The live alias is no longer the version a promotion was based on (e.g. a rollback happened)."""


class CanaryMoved(ValueError):
    """The canary is no longer the one a move was decided on (aborted, stepped or replaced meanwhile)."""


class IntegrityError(RuntimeError):
    """A version's weight file (or a serving artifact) is missing or does not match its manifest's sha256."""


class _Verified:
    """Files whose sha256 was checked in this process, by identity (path, inode, size, mtime): a replica
    hashes each file once, and a rollback to a version it already served checks nothing but a stat.
    A file rewritten in place gets a new mtime (or inode), so it is hashed again."""

    def __init__(self) -> None:
        self._seen: dict[Path, tuple[int, int, int, str]] = {}
        self._lock = threading.Lock()

    def check(self, path: Path, expected: str, what: str) -> None:
        if not path.is_file():
            raise IntegrityError(f"{what}: {path} is missing")
        st = os.stat(path)
        identity = (st.st_ino, st.st_size, st.st_mtime_ns, expected)
        with self._lock:
            if self._seen.get(path) == identity:
                return
        digest = sha256_file(path)
        if digest != expected:
            raise IntegrityError(f"{what}: sha256 {digest[:12]} != manifest {expected[:12]}")
        with self._lock:
            self._seen[path] = identity


class ModelRegistry:
    def __init__(self, client: redis.Redis, store: ModelStore | Path, keys: Keys) -> None:
        self.r = client
        self.store: ModelStore = store if not isinstance(store, (str, Path)) else FolderStore(Path(store))

        ns = keys.registry
        self._index = f"{ns}:index"
        self._live = f"{ns}:live"
        self._seq = f"{ns}:seq"
        self._history = f"{ns}:history"
        self._shadow = f"{ns}:shadow"
        self._canary = f"{ns}:canary"
        self.channel = keys.registry_channel
        self._verified = _Verified()
        self._golden_shared = False

    def fetch_golden(self) -> None:
        """A trainer or importer on a fresh host judges on the golden set the first one froze (API
        replicas never need it, so they do not wait on an unreachable store for it)."""
        try:
            self.store.fetch_file(GOLDEN_FILE)
        except StoreUnavailable as exc:
            log.warning("golden set not fetched (%s): it is fetched again on the next start", exc)

    # --- reading ------------------------------------------------------------------------------
    def path(self, version: int) -> Path:
        """The version's local directory (it may not be fetched yet: :meth:`fetch`)."""
        return self.store.local / f"v{version}"

    def fetch(self, version: int) -> Path:
        """The version's local directory, fetched from the store first when it is not cached (raises
        ``StoreUnavailable`` when the store cannot be reached and nothing is cached)."""
        try:
            return self.store.fetch(f"v{version}")
        except KeyError:
            raise IntegrityError(f"version {version}: its files are missing from {self.store.url}") from None

    def live(self) -> int | None:
        value = self.r.get(self._live)
        return int(value) if value is not None else None

    def task_conflict(self, task: str) -> str | None:
        """Why a deployment of ``task`` cannot run on this registry (its live version is of the other
        kind: a generative model where a classifier is served, or the reverse), or None."""
        live = self.live()
        if live is None:
            return None
        family = self.get(live).family
        generative = family == "generative"
        if generative == (task == "generate"):
            return None
        return (
            f"the registry's live version {live} is a {family} model, but the task is {task!r}: use another "
            f"ONLINE_STATE_DIR (or model store and Redis) for this task, or run it as "
            f"{'--task generate' if generative else '--task classify'}"
        )

    def get(self, version: int) -> Manifest:
        raw = self.r.hget(self._index, str(version))
        if raw is None:
            raise KeyError(f"no model version {version}")
        return self._local(Manifest.model_validate_json(raw))

    def list(self) -> list[Manifest]:
        items = [self._local(Manifest.model_validate_json(v)) for v in self.r.hvals(self._index)]
        return sorted(items, key=lambda m: m.version)

    def _local(self, manifest: Manifest) -> Manifest:
        if manifest.base_ref:
            manifest.base_model = str(self.store.local / manifest.base_ref)
        return manifest

    def history(self) -> list[LiveChange]:
        return [LiveChange.model_validate_json(v) for v in self.r.lrange(self._history, 0, -1)]

    def verify(self, version: int) -> Manifest:
        """Check a version's weight file against its manifest's sha256 (no torch involved; once per file
        and process, see :class:`_Verified`)."""
        manifest = self.get(version)
        try:
            self._verified.check(self.fetch(version) / WEIGHTS_FILE, manifest.sha256, f"version {version} weights")
        except IntegrityError:
            self.store.evict(f"v{version}")  # a damaged cached copy: fetched once more from the store
            self._verified.check(self.fetch(version) / WEIGHTS_FILE, manifest.sha256, f"version {version} weights")
        self.fetch_base(manifest)
        return manifest

    def fetch_base(self, manifest: Manifest) -> None:
        """An imported classifier's shared base (its config and tokenizer, ``base_ref``) into the local
        cache: a version needs it whichever engine serves it, the int8 one included."""
        if manifest.base_ref:
            try:
                self.store.fetch_tree(manifest.base_ref)
            except KeyError:
                raise IntegrityError(
                    f"version {manifest.version}: its base {manifest.base_ref} is missing from the store"
                ) from None

    def artifact(self, version: int, name: str, manifest: Manifest | None = None) -> Path:
        """The path of a version's serving artifact, checked against its manifest's sha256."""
        manifest = manifest or self.get(version)
        if name not in manifest.artifacts:
            raise IntegrityError(f"version {version} has no artifact {name}")
        path = self.fetch(version) / name
        self._verified.check(path, manifest.artifacts[name], f"version {version} {name}")
        return path

    def optional_artifact(self, version: int, name: str) -> Path | None:
        """A checked file the version may have (its drift reference): None when it has none."""
        manifest = self.get(version)
        if name in manifest.artifacts:
            return self.artifact(version, name, manifest)
        legacy = self.path(version) / name  # written before every file was checksummed
        return legacy if legacy.is_file() else None

    def load(self, version: int, verify: bool = True) -> tuple[VersionModel, Manifest]:
        """Load a version's model (its family's loader, ``online.versioned``), by default after
        :meth:`verify`."""
        manifest = self.verify(version) if verify else self.get(version)
        return load_model(self.path(version) / WEIGHTS_FILE, manifest), manifest

    # --- writing ------------------------------------------------------------------------------
    def publish(
        self,
        model: VersionModel,
        *,
        parent: int | None,
        metrics: dict[str, float] | None = None,
        round_stats: VersionStats | None = None,
        gate: GateReport | None = None,
        status: Status = "published",
        extra_files: dict[str, bytes] | None = None,
        artifacts: dict[str, Path] | None = None,
    ) -> Manifest:
        """Store a new version (files, then index). It serves nothing until :meth:`promote`.

        ``extra_files`` (e.g. the drift reference) are written into the version's directory too;
        ``artifacts`` (the int8 engine's model) are moved there and their sha256 kept in the manifest."""
        version = int(self.r.incr(self._seq))
        target = self.path(version)
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        sha = model.save(tmp / WEIGHTS_FILE)
        stored = {}
        for name, data in (extra_files or {}).items():
            (tmp / name).write_bytes(data)
            stored[name] = sha256_file(tmp / name)
        for name, source in (artifacts or {}).items():
            shutil.move(source, tmp / name)
            stored[name] = sha256_file(tmp / name)
        spec = model.spec()
        base_ref = None
        base = Path(spec.base_model)
        if base.is_absolute() and base.is_relative_to(self.store.local.resolve()):
            base_ref = base.relative_to(self.store.local.resolve()).as_posix()  # an imported classifier's base
            self.store.put_tree(base_ref, base)
        manifest = Manifest(
            **spec.model_dump(),
            base_ref=base_ref,
            version=version,
            sha256=sha,
            parent=parent,
            status=status,
            metrics=metrics or {},
            round=round_stats,
            gate=gate,
            artifacts=stored,
        )
        (tmp / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2))
        self.store.put(target.name, tmp)  # every file, the manifest last
        golden = self.store.local / GOLDEN_FILE
        if golden.is_file() and not self._golden_shared:
            self.store.put_file(GOLDEN_FILE, golden)  # frozen before version 1 is published: shared from it
            self._golden_shared = True
        shutil.rmtree(tmp, ignore_errors=True)
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
                    pipe.watch(self._live, self._canary)
                    previous = pipe.get(self._live)
                    if expect_live is not None and (int(previous) if previous else None) != expect_live:
                        raise LiveMoved(f"live is {previous}, not {expect_live}: version {version} not promoted")
                    change = LiveChange(
                        action=action, version=version, previous=int(previous) if previous else None, reason=reason
                    )
                    raw_canary = pipe.get(self._canary)
                    pipe.multi()
                    pipe.set(self._live, version)
                    if raw_canary:  # a canary compares with the live it started from: it ends with it
                        running = CanarySlot.model_validate_json(raw_canary)
                        pipe.delete(self._canary)
                        if running.version != version:
                            ended = LiveChange(
                                action="canary_abort", version=running.version, previous=running.parent,
                                reason=f"live moved to version {version} ({action})",
                            )  # fmt: skip
                            pipe.rpush(self._history, ended.model_dump_json())
                    pipe.rpush(self._history, change.model_dump_json())
                    pipe.execute()
                    break
                except redis.WatchError:
                    continue
        shadow = self.shadow()
        if shadow and shadow.version == version:
            self.clear_shadow()  # it is live now
        self.r.publish(self.channel, json.dumps({"live": version}))
        return change

    def last_change(self) -> LiveChange | None:
        """The last move of the live alias (canary steps between are skipped)."""
        for raw in reversed(self.r.lrange(self._history, -200, -1)):
            change = LiveChange.model_validate_json(raw)
            if not change.action.startswith("canary_"):
                return change
        return None

    def protected(self) -> set[int]:
        """Versions never collected: live, its parent (the default rollback target), the previous live, a canary."""
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
        canary = self.canary()
        if canary is not None:
            keep.add(canary.version)
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
            self.store.delete(f"v{m.version}")
            collected.append(m.version)
        return collected

    # --- shadow evaluation --------------------------------------------------------------------
    def shadow(self) -> ShadowSlot | None:
        """The version running in shadow (answers logged, never returned)."""
        raw = self.r.get(self._shadow)
        return ShadowSlot.model_validate_json(raw) if raw else None

    def set_shadow(self, version: int, share: float) -> None:
        manifest = self.get(version)
        if manifest.status != "published":
            raise ValueError(f"version {version} is {manifest.status}: it cannot run in shadow")
        self.r.set(self._shadow, ShadowSlot(version=version, share=share, since=time.time()).model_dump_json())
        self.r.publish(self.channel, json.dumps({"shadow": version}))

    def clear_shadow(self) -> None:
        if self.r.delete(self._shadow):
            self.r.publish(self.channel, json.dumps({"shadow": None}))

    # --- canary -------------------------------------------------------------------------------
    def slots(self) -> tuple[int | None, ShadowSlot | None, CanarySlot | None]:
        """Live, shadow and canary read together (one MULTI): a replica never sees a promotion's live
        beside the canary it replaced."""
        with self.r.pipeline() as pipe:
            pipe.get(self._live)
            pipe.get(self._shadow)
            pipe.get(self._canary)
            live, shadow, canary = pipe.execute()
        return (
            int(live) if live is not None else None,
            ShadowSlot.model_validate_json(shadow) if shadow else None,
            CanarySlot.model_validate_json(canary) if canary else None,
        )

    def canary(self) -> CanarySlot | None:
        """The version answering a share of live traffic (``online.lifecycle.canary``)."""
        raw = self.r.get(self._canary)
        return CanarySlot.model_validate_json(raw) if raw else None

    def set_canary(
        self, slot: CanarySlot | None, action: CanaryAction, reason: str, *, current: CanarySlot | None
    ) -> LiveChange:
        """Start, step, pause or end (``slot`` None) the canary, with its history entry, in one
        MULTI/EXEC that holds only while the running canary is still ``current`` (the one the caller
        read and decided on; None: none may run) and live is still its parent; every replica is told.
        Raises :class:`CanaryMoved` when another move came first (an operator's abort, a step)."""
        subject = slot or current
        if subject is None:
            raise ValueError("no canary is running")
        if slot is not None:
            manifest = self.get(slot.version)
            if manifest.status != "published":
                raise ValueError(f"version {slot.version} is {manifest.status}: it cannot serve a canary")
        change = LiveChange(action=action, version=subject.version, previous=subject.parent, reason=reason)
        with self.r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(self._live, self._canary)
                    live, raw = pipe.get(self._live), pipe.get(self._canary)
                    running = CanarySlot.model_validate_json(raw) if raw else None
                    if running != current:
                        raise CanaryMoved(
                            f"the canary changed meanwhile ({'none runs' if running is None else f'version {running.version} at {running.share:.0%}'})"
                        )
                    if slot is not None and (int(live) if live else None) != slot.parent:
                        raise LiveMoved(f"live is {live}, not {slot.parent}: version {slot.version} is no canary of it")
                    pipe.multi()
                    if slot is None:
                        pipe.delete(self._canary)
                    else:
                        pipe.set(self._canary, slot.model_dump_json())
                    pipe.rpush(self._history, change.model_dump_json())
                    pipe.execute()
                    break
                except redis.WatchError:
                    continue
        self.r.publish(self.channel, json.dumps({"canary": slot.version if slot else None}))
        return change
