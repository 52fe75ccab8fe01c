"""Dynamic micro-batching: concurrent requests share forwards; versions never mix in one forward."""

from __future__ import annotations

import asyncio
import threading

from online.serving.batcher import MicroBatcher


def test_concurrent_requests_share_forward_passes():
    calls: list[tuple[str, int]] = []
    gate = threading.Event()

    def run(model: str, texts: list[str]) -> list[str]:
        gate.wait(5)  # the first forward is slow, so the rest pile up behind it
        calls.append((model, len(texts)))
        return [f"{model}:{t}" for t in texts]

    async def main() -> list[list[str]]:
        batcher: MicroBatcher[str, str] = MicroBatcher(run, max_batch=8, max_wait_ms=1)
        batcher.start()
        first = asyncio.create_task(batcher.submit("v1", ["t0"]))
        await asyncio.sleep(0.05)
        rest = [asyncio.create_task(batcher.submit("v1" if i < 12 else "v2", [f"t{i}"])) for i in range(1, 17)]
        await asyncio.sleep(0.05)
        gate.set()
        results = await asyncio.gather(first, *rest)
        await batcher.stop()
        return results

    results = asyncio.run(main())
    assert results[0] == ["v1:t0"] and results[5] == ["v1:t5"] and results[16] == ["v2:t16"]
    assert sum(n for _, n in calls) == 17
    assert len(calls) < 17 / 2  # shared forwards, not one per request
    assert max(n for _, n in calls) <= 8
    # requests bound to different versions are never in one forward
    seen_v2 = [i for i, (m, _) in enumerate(calls) if m == "v2"]
    assert seen_v2 and all(calls[i][0] == "v2" for i in seen_v2)


def test_a_failing_forward_fails_its_requests_only():
    def run(model: str, texts: list[str]) -> list[str]:
        if "boom" in texts:
            raise RuntimeError("boom")
        return texts

    async def main():
        batcher: MicroBatcher[str, str] = MicroBatcher(run, max_batch=1, max_wait_ms=0)
        batcher.start()
        bad = await asyncio.gather(batcher.submit("m", ["boom"]), return_exceptions=True)
        good = await batcher.submit("m", ["fine"])
        await batcher.stop()
        return bad, good

    bad, good = asyncio.run(main())
    assert isinstance(bad[0], RuntimeError) and good == ["fine"]
