"""`online train`: the trainer scheduler process.

On an empty registry it trains version 1 from the seed data. Then it watches the replay buffer: a round
starts when ``train_min_new`` new samples wait, or ``train_max_wait_s`` after the first one arrived, or
at once with `online train --now`; with the closed-form head (a round of seconds) also ``train_debounce_s``
after the last one arrived, so a taught intent is in the weights within seconds. Only the holder of the leader lock (Redis, with expiry) trains, so
any number of trainer processes can run and a dead one's lock lapses. Between rounds the leader also
runs the automatic-rollback check and collects old versions.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from online.learning.closed_form import StatisticsCache
from online.learning.fit import Progress as ProgressFn
from online.learning.fit import configure_threads
from online.learning.round import RoundReport, RoundRunner
from online.learning.version_one import VersionOneRefused, make_version_one, seed_data, seed_epochs
from online.lifecycle import auto_rollback, canary, promotion
from online.lifecycle.gate import Gate, GoldenSet
from online.lifecycle.leader import Leadership, LeadershipLost
from online.lifecycle.registry import ModelRegistry
from online.logs import progress_bars
from online.settings import Settings
from online.wiring.stores import Stores

log = logging.getLogger("online.trainer")

_STATUS_CODES = {
    "idle": 0,
    "promoted": 1,
    "rejected": 2,
    "superseded": 3,
    "failed": 4,
    "shadow": 5,
    "canary": 6,
    "published": 7,
}


class Stopped(Exception):
    """Raised from the progress callback to abandon a round (stop requested or leadership lost)."""


class TrainerMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.rounds = Counter("online_trainer_rounds", "Rounds finished, by outcome", ["status"], registry=r)
        self.round_seconds = Histogram(
            "online_trainer_round_seconds",
            "Duration of a round",
            buckets=(5, 10, 20, 30, 60, 120, 300, 600, 1800),
            registry=r,
        )
        self.samples = Counter("online_trainer_samples", "Samples trained on, by kind", ["kind"], registry=r)
        self.last_status = Gauge(
            "online_trainer_last_round_status",
            "Last round: 0 idle, 1 promoted, 2 rejected, 3 superseded, 4 failed, 5 shadow, 6 canary, 7 published (not placed: a canary ran)",
            registry=r,
        )
        self.last_round_at = Gauge(
            "online_trainer_last_round_timestamp", "When the last round ended (unix time)", registry=r
        )
        self.auto_rollbacks = Counter("online_auto_rollbacks", "Automatic rollbacks", registry=r)
        self.collected = Counter("online_versions_collected", "Model versions whose files were collected", registry=r)
        self.held = Counter(
            "online_feedback_held", "New samples held by the screen, by kind of reason", ["reason"], registry=r
        )
        self.pending = Gauge("online_trainer_new_samples", "New buffer samples waiting for a round", registry=r)
        self.ready = Gauge(
            "online_trainer_ready",
            "1 once version 1 exists and the start-up work (closed-form: warm) is done",
            registry=r,
        )

    def observe(self, report: RoundReport | None, status: str) -> None:
        self.rounds.labels(status).inc()
        self.last_status.set(_STATUS_CODES[status])
        self.last_round_at.set(time.time())
        if report is not None:
            for reason, n in report.held_by_reason.items():
                self.held.labels(reason).inc(n)
            self.round_seconds.observe(report.duration_s)
            self.samples.labels("new").inc(report.new - report.holdout)
            self.samples.labels("rehearsal").inc(report.rehearsed)


def progress_bar() -> Progress:
    """A training bar on a terminal; none when the output is a log stream (JSON lines)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not progress_bars(),
    )


FENCE_EVERY_S = 1.0


def _stoppable(bar: Progress, task, stop: threading.Event, leader: Leadership) -> ProgressFn:
    """The progress callback: raises :class:`Stopped` on a stop request, and confirms leadership at
    most once a second, so a deposed leader stops training within about a second of a batch."""
    checked = time.monotonic()

    def advance(n: int) -> None:
        nonlocal checked
        if stop.is_set():
            raise Stopped()
        if time.monotonic() - checked >= FENCE_EVERY_S:
            leader.fence()
            checked = time.monotonic()
        bar.advance(task, n)

    return advance


def ensure_version_one(
    settings: Settings,
    registry: ModelRegistry,
    leader: Leadership,
    stop: threading.Event,
    head_stats: StatisticsCache | None = None,
) -> None:
    """Train version 1 if the registry has no live version; only the leader does it. ``head_stats``: the
    scheduler's closed-form statistics, built once here for version 1 and its rounds alike."""
    while registry.live() is None and not stop.is_set():
        if not leader.acquire(wait_s=1.0):
            continue  # another trainer is bootstrapping; wait for its version
        try:
            if registry.live() is not None:
                return
            if settings.task == "generate":
                from online.learning.generative_version_one import release_base

                manifest = release_base(settings, registry, fence=leader.fence)
                log.info("version %d live: the base model %s", manifest.version, manifest.base_model)
                return
            if settings.seed_model:
                log.info("empty registry: importing %s as version 1", settings.seed_model)
                manifest = make_version_one(settings, registry, fence=leader.fence)
            else:
                train, _ = seed_data(settings)
                log.info("empty registry: training version 1 on %d seed examples", len(train))
                with progress_bar() as bar:
                    task = bar.add_task("version 1 (seed data)", total=len(train) * seed_epochs(settings, len(train)))
                    progress = _stoppable(bar, task, stop, leader)
                    manifest = make_version_one(settings, registry, progress, fence=leader.fence, head_stats=head_stats)
            log.info("version %d live (golden accuracy %.4f)", manifest.version, manifest.metrics["golden_accuracy"])
        except Stopped:
            log.info("stopped before version 1 was published; nothing published")
        except LeadershipLost as exc:
            log.warning("lost leadership while training version 1 (%s); nothing published", exc)
        except VersionOneRefused as exc:
            log.error("%s", exc)
            stop.wait(settings.train_poll_s * 10)  # not in a loop of refusals: the operator must act
        finally:
            leader.release()


def round_due(pending: int, waited_s: float, quiet_s: float, settings: Settings) -> bool:
    """Whether a round starts now: ``pending`` new samples, the first of them ``waited_s`` ago, the last
    ``quiet_s`` ago. A closed-form round costs seconds, so it also starts once new feedback has stopped
    arriving for ``train_debounce_s`` (a burst of 20 label events is one round, not 20)."""
    if pending == 0:
        return False
    if pending >= settings.train_min_new or waited_s >= settings.train_max_wait_s:
        return True
    return settings.head == "closed-form" and settings.train_debounce_s > 0 and quiet_s >= settings.train_debounce_s


class Scheduler:
    """Decides when a round is due and runs it under the leader lock."""

    def __init__(
        self,
        stores: Stores,
        stop: threading.Event,
        metrics: TrainerMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.s = stores.settings
        self.stores = stores
        self.stop = stop
        self.registry = stores.registry
        self.buffer = stores.buffer
        self.leader = Leadership(stores.redis, stores.keys.trainer_leader, ttl_s=self.s.trainer_lock_ttl_s)
        self.metrics = metrics or TrainerMetrics()
        self._runner: RoundRunner | None = None
        self.head_stats = StatisticsCache()  # closed-form statistics: version 1's, then every round's
        self._waiting_since: float | None = None
        self._tidy_due = 0.0
        self._last_pending, self._last_arrival = 0, 0.0  # the debounce: when the pending count last grew
        self.clock = clock

    def runner(self) -> RoundRunner:
        if self._runner is None:  # built lazily: the golden set exists only once version 1 does
            if self.s.task == "generate":  # LoRA rounds on corrections (online.learning.generative_round)
                from online.learning.generative_round import GenerativeRoundRunner

                self._runner = GenerativeRoundRunner(self.stores)  # type: ignore[assignment]
                return self._runner
            self.registry.fetch_golden()  # frozen by whichever trainer made version 1, maybe on another host
            self._runner = RoundRunner(
                self.stores, Gate(self.s, GoldenSet.for_settings(self.s)), head_stats=self.head_stats
            )
        return self._runner

    def due(self) -> bool:
        """A round is due (enough new feedback, or waited long enough), and no canary is running: a
        candidate trained meanwhile would be compared with a live that may be about to change."""
        pending = self.buffer.new_count()
        self.metrics.pending.set(pending)
        if self.registry.canary() is not None:
            return False
        now = self.clock()
        if pending == 0:
            self._waiting_since, self._last_pending = None, 0
            return False
        if self._waiting_since is None:
            self._waiting_since = now
        if pending > self._last_pending:
            self._last_arrival = now
        self._last_pending = pending
        return round_due(pending, now - self._waiting_since, now - self._last_arrival, self.s)

    def run_round(self, wait_s: float | None = 0) -> RoundReport | None:
        """One round under the leader lock; None if another trainer holds it (and ``wait_s`` ran out)."""
        if not self.leader.acquire(wait_s=wait_s):
            return None
        try:
            with progress_bar() as bar:
                task = bar.add_task("round", total=None)

                def on_start(total: int) -> ProgressFn:
                    bar.update(task, total=total)
                    return _stoppable(bar, task, self.stop, self.leader)

                report = self.runner().run(on_start, fence=self.leader.fence)
        except Stopped:
            log.info("round abandoned (stop requested): nothing published, cursor unchanged")
            self.metrics.observe(None, "failed")
            return None
        except LeadershipLost as exc:
            log.warning("round abandoned: %s; nothing more written (the next leader retries its samples)", exc)
            self.metrics.observe(None, "failed")
            return None
        except redis.RedisError:  # the loop logs the outage once
            self.metrics.observe(None, "failed")
            raise
        except Exception:
            log.exception("round failed: nothing published, cursor unchanged")
            self.metrics.observe(None, "failed")
            raise
        finally:
            self.leader.release()
        self._waiting_since, self._last_pending = None, 0
        self.metrics.observe(report if report.status != "idle" or report.quarantined else None, report.status)
        if report.status != "idle" or report.quarantined:
            log.info("%s", report.summary(), extra={"round": report.log_record()})  # the record: JSON logs
        return report

    def warm(self) -> None:
        """Closed-form head: build the live encoder's statistics from the stored examples now, not in the
        first round (which would pay for embedding every stored text once). A generative deployment has
        no head: nothing to build (its trainer thread died here before)."""
        if self.s.head != "closed-form" or self.s.task != "classify":
            return
        started = time.perf_counter()

        def stoppable(_: int) -> None:  # a stop ends the warm-up (a minute here) instead of a SIGKILL ending it
            if self.stop.is_set():
                raise Stopped()

        try:
            covered = self.runner().warm(stoppable)
        except redis.RedisError as exc:  # the loop reports the outage; the first round builds them instead
            log.warning("closed-form statistics not built ahead (%s): the first round builds them", exc)
            return
        except Stopped:
            log.info("closed-form warm-up abandoned after %.1f s (stop requested)", time.perf_counter() - started)
            return
        if covered:
            log.info(
                "closed-form statistics of %d stored examples built in %.1f s", covered, time.perf_counter() - started
            )

    def housekeeping(self) -> None:
        """Automatic rollback, version collection and correction-log trimming, by whoever holds the lock."""
        if not self.leader.acquire(wait_s=0):
            return
        try:
            change = auto_rollback.check(self.registry, self.stores.live_accuracy, self.s)
            if change:
                self.metrics.auto_rollbacks.inc()
                log.warning("automatic rollback: live v%s -> v%s (%s)", change.previous, change.version, change.reason)
            self._judge_shadow()
            self._judge_canary()
            self.stores.corrections.trim()  # corrections age out even when none arrive
            self._tidy()
            collected = self.registry.collect(self.s.keep_versions)
            if collected:
                self.metrics.collected.inc(len(collected))
                log.info("collected versions %s (keeping the last %d)", collected, self.s.keep_versions)
        finally:
            self.leader.release()

    def _tidy(self) -> None:
        """Bounded key families: held samples past their age or cap leave, and (every 10 minutes) sources
        whose counts expired leave the source set."""
        gone = self.buffer.trim_held(self.s.quarantine_max_held, self.s.quarantine_held_max_age_s)
        if gone:
            log.info("%d held samples left the quarantine for good (older than %.0f s, or past %d held)",
                     gone, self.s.quarantine_held_max_age_s, self.s.quarantine_max_held)  # fmt: skip
        now = time.monotonic()
        if now >= self._tidy_due:
            self._tidy_due = now + 600
            self.stores.sources.tidy()
            self.buffer.tidy_labels()

    def _judge_canary(self) -> None:
        change = canary.settle(self.registry, self.stores.live_accuracy, self.stores.canary, self.s)
        if change is None:
            return
        level = logging.WARNING if change.action in ("canary_rollback", "canary_abort") else logging.INFO
        log.log(level, "canary v%s: %s (%s)", change.version, change.action.removeprefix("canary_"), change.reason)

    def _judge_shadow(self) -> None:
        outcome = promotion.settle_shadow(self.registry, self.stores.shadow, self.s)
        if outcome is None:
            return
        if outcome.promoted:
            log.info("shadow version %s promoted: %s", outcome.version, outcome.reason)
        else:
            log.warning("shadow version %s not promoted, shadow ended: %s", outcome.version, outcome.reason)

    def loop(self) -> None:
        redis_down = False
        while not self.stop.is_set():
            try:
                self.housekeeping()
                if not self.stores.control.paused() and self.due():
                    self.run_round()
                if redis_down:
                    log.info("redis reachable again: training resumes")
                    redis_down = False
            except redis.RedisError as exc:  # an outage: one line, not a traceback per poll
                if not redis_down:
                    log.warning("redis unreachable (%s): no round until it is back; retrying", exc)
                redis_down = True
            except Exception:
                log.exception("trainer loop error; retrying")
            self.stop.wait(self.s.train_poll_s)


def run_trainer(settings: Settings, stop: threading.Event) -> None:
    configure_threads(settings.num_threads)
    scheduler = Scheduler(Stores.from_settings(settings), stop)
    if conflict := scheduler.registry.task_conflict(settings.task):
        raise SystemExit(conflict)  # a round would train the wrong kind of model on the live one
    if settings.trainer_metrics_port is not None:
        start_http_server(settings.trainer_metrics_port, addr="0.0.0.0", registry=scheduler.metrics.registry)
    ensure_version_one(settings, scheduler.registry, scheduler.leader, stop, scheduler.head_stats)
    scheduler.warm()
    if stop.is_set():  # stopped during the warm-up: never ready
        return
    scheduler.metrics.ready.set(1)
    scheduler.loop()


def train_now(settings: Settings, stop: threading.Event, wait_s: float = 600) -> RoundReport | None:
    """`online train --now`: one round at once (waiting for the lock if another trainer holds it)."""
    configure_threads(settings.num_threads)
    scheduler = Scheduler(Stores.from_settings(settings), stop)
    if scheduler.registry.live() is None:
        ensure_version_one(settings, scheduler.registry, scheduler.leader, stop, scheduler.head_stats)
    return scheduler.run_round(wait_s=wait_s)
