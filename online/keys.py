"""Every Redis key name of the system, in one catalogue.

All keys share one prefix (``Settings.key_prefix``) so several stacks can share a server. Each store
gets its namespace from here and nowhere else, so a key written by one process and read by another
(the replicas' heartbeats, say, written by the API and read by `online status`) has one spelling.
Lua scripts receive their namespace as an argument and build sub-keys inside it; those sub-keys are
documented in the module that owns the script.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    prefix: str = "online"

    def _k(self, *parts: object) -> str:
        return ":".join((self.prefix, *map(str, parts)))

    # --- feedback -----------------------------------------------------------------------------
    @property
    def buffer(self) -> str:
        """Namespace of the replay buffer, its per-source ledger and the held samples."""
        return self._k("buf")

    def prediction(self, prediction_id: str) -> str:
        """One served prediction (for resolving thumbs feedback)."""
        return self._k("pred", prediction_id)

    @property
    def review(self) -> str:
        return self._k("review")

    def rate(self, source: str, second: int) -> str:
        """Feedback events of one source in one second (the API's rate limiter)."""
        return self._k("rate", source, second)

    def rate_chars(self, source: str, second: int) -> str:
        """Characters of feedback text of one source in one second (its own family: no source name can
        reach another source's counter)."""
        return self._k("rate_chars", source, second)

    @property
    def signing_secret(self) -> str:
        """The stack's random secret that signs the API's credential on each feedback record
        (``online.credentials``) when ``ONLINE_FEEDBACK_SIGNING_KEY`` is unset."""
        return self._k("trust", "secret")

    @property
    def feedback_status(self) -> str:
        """Namespace of each event's fate (``online.feedback.status``): ``e:<event_id>`` hashes (TTL
        ``feedback_status_ttl_s``) and ``rounds``, the sequence ranges rounds trained (capped)."""
        return self._k("fbstatus")

    @property
    def fsync_probe(self) -> str:
        """A counter the consumer bumps right before WAITAOF (``online.connections.fsync_barrier``)."""
        return self._k("consumer", "fsync")

    @property
    def memory(self) -> str:
        """Namespace of the correction log (``online.memory.log``): entries, their ages, the change stream."""
        return self._k("mem")

    @property
    def erased(self) -> str:
        """Tombstones of `online forget` (``online.lifecycle.erasure``): ``:sources`` hash source -> when,
        ``:texts`` set of masked-text digests; the consumer's scripts store nothing they cover."""
        return self._k("erased")

    @property
    def labels_approved(self) -> str:
        """Set of new labels an operator approved (``online.feedback.labels``)."""
        return self._k("labels", "approved")

    @property
    def labels_created(self) -> str:
        """Prefix of per-source sorted sets: new labels a source created, by time (the hourly budget)."""
        return self._k("labels", "created")

    # --- lifecycle ----------------------------------------------------------------------------
    @property
    def registry(self) -> str:
        """Namespace of the registry: ``index``, ``live``, ``seq``, ``history``, ``shadow``, ``changes``."""
        return self._k("registry")

    @property
    def registry_channel(self) -> str:
        """Pub/sub channel announcing live and shadow changes to every replica."""
        return self._k("registry", "changes")

    @property
    def shadow(self) -> str:
        """Namespace of shadow evaluation counts (per shadow version)."""
        return self._k("shadow")

    @property
    def canary(self) -> str:
        """Namespace of canary serving counts: ``<canary version>:<role>`` hashes of requests, errors
        and latency buckets, written by every replica (``online.lifecycle.canary``)."""
        return self._k("canary")

    @property
    def trainer_leader(self) -> str:
        return self._k("trainer", "leader")

    @property
    def trainer_paused(self) -> str:
        return self._k("trainer", "paused")

    # --- monitoring ---------------------------------------------------------------------------
    @property
    def live_accuracy(self) -> str:
        return self._k("liveacc")

    @property
    def shadow_candidate_accuracy(self) -> str:
        return self._k("shadow", "cand", "liveacc")

    @property
    def shadow_live_accuracy(self) -> str:
        return self._k("shadow", "live", "liveacc")

    @property
    def feedback_volume(self) -> str:
        return self._k("fbvol")

    @property
    def replicas(self) -> str:
        """Hash: API replica name -> its heartbeat (version served, last load error)."""
        return self._k("replicas")

    @property
    def drift_history(self) -> str:
        return self._k("drift", "history")

    @property
    def drift_replicas(self) -> str:
        return self._k("drift", "replicas")

    @property
    def drift_generate_baseline(self) -> str:
        """A generative deployment's first prompts (embeddings) and mean answer length: its drift baseline."""
        return self._k("drift", "generate-baseline")
