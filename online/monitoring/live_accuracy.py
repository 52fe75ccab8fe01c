"""Live accuracy per model version, from feedback on that version's own predictions.

A thumbs up, a thumbs down, or a label event that names the prediction it corrects is a judgement of
the version that served the prediction. Counts are kept per version and per minute (for plots), and
each event is counted once however often Kafka redelivers it.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

_RECORD = """
local p, ttl, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local counted = 0
for i = 0, n - 1 do
  local b = 4 + i * 4
  local eid, version, correct, minute = ARGV[b], ARGV[b+1], tonumber(ARGV[b+2]), ARGV[b+3]
  if redis.call('SET', p .. ':judged:' .. eid, '1', 'NX', 'EX', ttl) then
    redis.call('HINCRBY', p .. ':v:' .. version, 'n', 1)
    redis.call('HINCRBY', p .. ':v:' .. version, 'correct', correct)
    redis.call('HINCRBY', p .. ':m:' .. version, minute .. ':n', 1)
    redis.call('HINCRBY', p .. ':m:' .. version, minute .. ':correct', correct)
    redis.call('SADD', p .. ':versions', version)
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


@dataclass(frozen=True)
class VersionAccuracy:
    version: int
    n: int
    correct: int

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.n if self.n else None


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
            args += [j.event_id, j.version, int(j.correct), int(j.at // 60)]
        return int(self._record(args=args))

    def get(self, version: int) -> VersionAccuracy:
        h = self.r.hgetall(f"{self.p}:v:{version}")
        return VersionAccuracy(version, int(h.get("n", 0)), int(h.get("correct", 0)))

    def all(self) -> list[VersionAccuracy]:
        return [self.get(int(v)) for v in sorted(self.r.smembers(f"{self.p}:versions"), key=int)]

    def per_minute(self, version: int) -> list[tuple[int, int, int]]:
        """(epoch minute, judged, correct), oldest first."""
        h = self.r.hgetall(f"{self.p}:m:{version}")
        minutes = sorted({int(k.split(":")[0]) for k in h})
        return [(m, int(h.get(f"{m}:n", 0)), int(h.get(f"{m}:correct", 0))) for m in minutes]
