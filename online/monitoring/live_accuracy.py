"""Live accuracy per model version, from feedback on that version's own predictions.

A thumbs up, a thumbs down, or a label event that names the prediction it corrects is a judgement of
the version that served the prediction. Counts are kept per version and per minute (for plots).

Volume cannot buy a verdict: a judgement counts once per *prediction* (the first feedback on it; the
same prediction voted again, under fresh event ids or other source names, counts nothing), and once per
event however often Kafka redelivers it. Each version also counts the distinct *origins* that judged it
(a HyperLogLog: bounded, ~1% error): an origin is what one client cannot fake as easily as a name (its
feedback key, or the address the API saw; ``consumers.processor``). Auto-rollback and the shadow verdict
need judgements from ``verdict_min_sources`` origins before they act.

Keys (namespace ``Keys.live_accuracy``; shadow evaluation keeps two more): ``judged:p:<prediction>`` and
``judged:<event>`` (dedup, ``dedup_ttl_s``), ``v:<version>`` (n, correct), ``m:<version>`` (per minute),
``o:<version>`` (HyperLogLog of origins), ``versions``.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

_RECORD = """
local p, ttl, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local counted = 0
for i = 0, n - 1 do
  local b = 4 + i * 7
  local eid, version, correct, minute = ARGV[b], ARGV[b+1], tonumber(ARGV[b+2]), ARGV[b+3]
  local pid, origin, thumbs = ARGV[b+4], ARGV[b+5], ARGV[b+6]
  local key = p .. ':judged:' .. eid
  if pid ~= '' then key = p .. ':judged:p:' .. pid end  -- once per prediction, whoever votes how often
  if redis.call('SET', key, '1', 'NX', 'EX', ttl) then
    redis.call('HINCRBY', p .. ':v:' .. version, 'n', 1)
    redis.call('HINCRBY', p .. ':v:' .. version, 'correct', correct)
    redis.call('HINCRBY', p .. ':m:' .. version, minute .. ':n', 1)
    redis.call('HINCRBY', p .. ':m:' .. version, minute .. ':correct', correct)
    redis.call('SADD', p .. ':versions', version)
    if origin ~= '' then redis.call('PFADD', p .. ':o:' .. version, origin) end
    if thumbs == '1' then  -- a thumbs vote: its down rate is reported on its own
      redis.call('HINCRBY', p .. ':v:' .. version, 'thumbs', 1)
      redis.call('HINCRBY', p .. ':v:' .. version, 'down', 1 - correct)
      redis.call('HINCRBY', p .. ':m:' .. version, minute .. ':thumbs', 1)
      redis.call('HINCRBY', p .. ':m:' .. version, minute .. ':down', 1 - correct)
    end
    counted = counted + 1
  end
end
return counted
"""


@dataclass(frozen=True)
class Judgement:
    event_id: str
    version: int
    correct: bool
    at: float
    prediction_id: str = ""  # the prediction judged: it counts once ("" : once per event)
    origin: str = ""  # who judged, as far as it can be told (feedback key, client address)
    thumbs: bool = False  # a thumbs vote (else a label naming the prediction)


@dataclass(frozen=True)
class VersionAccuracy:
    version: int
    n: int
    correct: int
    sources: int = 0  # distinct origins that judged it (approximate)
    thumbs: int = 0  # judgements that were thumbs votes...
    thumbs_down: int = 0  # ...and those that were down

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.n if self.n else None

    @property
    def thumbs_down_rate(self) -> float | None:
        return self.thumbs_down / self.thumbs if self.thumbs else None


class LiveAccuracy:
    def __init__(self, client: redis.Redis, namespace: str, dedup_ttl_s: int) -> None:
        """``namespace``: :attr:`Keys.live_accuracy` for live versions; shadow evaluation keeps two more."""
        self.r = client
        self.p = namespace
        self.ttl = dedup_ttl_s
        self._record = client.register_script(_RECORD)

    def record(self, judgements: list[Judgement]) -> int:
        if not judgements:
            return 0
        args: list[str | int] = [self.p, self.ttl, len(judgements)]
        for j in judgements:
            args += [j.event_id, j.version, int(j.correct), int(j.at // 60), j.prediction_id, j.origin, int(j.thumbs)]
        return int(self._record(args=args))

    def get(self, version: int) -> VersionAccuracy:
        with self.r.pipeline(transaction=False) as pipe:
            pipe.hgetall(f"{self.p}:v:{version}")
            pipe.pfcount(f"{self.p}:o:{version}")
            h, sources = pipe.execute()
        return VersionAccuracy(
            version, int(h.get("n", 0)), int(h.get("correct", 0)), int(sources), int(h.get("thumbs", 0)), int(h.get("down", 0))
        )

    def all(self) -> list[VersionAccuracy]:
        return [self.get(int(v)) for v in sorted(self.r.smembers(f"{self.p}:versions"), key=int)]

    def per_minute(self, version: int) -> list[tuple[int, int, int]]:
        """(epoch minute, judged, correct), oldest first."""
        return [(m, n, c) for m, n, c, _, _ in self.per_minute_thumbs(version)]

    def per_minute_thumbs(self, version: int) -> list[tuple[int, int, int, int, int]]:
        """(epoch minute, judged, correct, thumbs votes, thumbs down), oldest first."""
        h = self.r.hgetall(f"{self.p}:m:{version}")
        minutes = sorted({int(k.split(":")[0]) for k in h})
        return [
            (m, int(h.get(f"{m}:n", 0)), int(h.get(f"{m}:correct", 0)), int(h.get(f"{m}:thumbs", 0)), int(h.get(f"{m}:down", 0)))
            for m in minutes
        ]
