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


def test_a_lone_client_never_waits_for_company_and_concurrent_traffic_does():
    calls: list[int] = []

    def run(model: str, texts: list[str]) -> list[str]:
        calls.append(len(texts))
        return texts

    async def main() -> None:
        # A wait of 60 s: a lone request held for it would blow the 10 s timeout below.
        batcher: MicroBatcher[str, str] = MicroBatcher(run, max_batch=8, max_wait_ms=60_000)
        batcher.start()
        for i in range(3):  # one client, one request at a time
            assert await asyncio.wait_for(batcher.submit("m", [f"lone {i}"]), 10) == [f"lone {i}"]
        assert calls == [1, 1, 1]
        await asyncio.wait_for(asyncio.gather(*(batcher.submit("m", [f"c{i}"]) for i in range(8))), 10)  # full batch
        # traffic is concurrent now: a request waits for company, which arrives and shares its forward
        first = asyncio.create_task(batcher.submit("m", ["a"]))
        await asyncio.sleep(0.2)
        assert not first.done()
        second = asyncio.create_task(batcher.submit("m", ["b"]))
        await asyncio.sleep(0)
        remaining = [asyncio.create_task(batcher.submit("m", [f"d{i}"])) for i in range(6)]  # fills the batch
        await asyncio.wait_for(asyncio.gather(first, second, *remaining), 10)
        assert calls[-1] == 8
        await batcher.stop()

    asyncio.run(main())


def _recording(calls: list[tuple[str, int]]):
    """A forward that answers each text with itself and records (model, batch size)."""

    def run(model: str, texts: list[str]) -> list[str]:
        calls.append((model, len(texts)))
        return texts

    return run


def test_steady_clients_go_as_soon_as_all_are_back_not_at_the_deadline():
    """8 clients, each sending again once answered: the next batch waits for the 8th (a fixed short wait
    ran half-empty batches at 32 clients), and goes at once when it is there, never waiting out the
    deadline for a 9th that is not coming."""
    calls: list[tuple[str, int]] = []
    run = _recording(calls)

    async def main() -> None:
        # A wait of 60 s: a batch held to the deadline would blow the 10 s timeouts below.
        batcher: MicroBatcher[str, str] = MicroBatcher(run, max_batch=32, max_wait_ms=60_000)
        batcher.start()
        for r in range(4):
            round_ = asyncio.gather(*(batcher.submit("m", [f"r{r}c{i}"]) for i in range(8)))
            assert await asyncio.wait_for(round_, 10) == [[f"r{r}c{i}"] for i in range(8)]
        await batcher.stop()

    asyncio.run(main())
    assert [n for _, n in calls] == [8, 8, 8, 8]


def test_a_canary_beside_live_waits_for_its_own_clients_not_lives():
    """Live's 8 clients and a canary's 3 share the batcher: each model's batch goes when its own clients
    are back (a count shared by both held the canary's batch for a live-sized crowd, to the deadline)."""
    calls: list[tuple[str, int]] = []
    run = _recording(calls)

    async def main() -> None:
        batcher: MicroBatcher[str, str] = MicroBatcher(run, max_batch=32, max_wait_ms=60_000)
        batcher.start()
        for r in range(3):
            live = [batcher.submit("live", [f"l{r}{i}"]) for i in range(8)]
            canary = [batcher.submit("canary", [f"c{r}{i}"]) for i in range(3)]
            await asyncio.wait_for(asyncio.gather(*live, *canary), 10)
        await batcher.stop()

    asyncio.run(main())
    assert calls == [("live", 8), ("canary", 3)] * 3


def test_a_full_queue_refuses_at_once_instead_of_growing():
    """Bounded admission: with the forward thread busy and ``max_queue`` requests waiting, the next one is
    refused (the API answers 503 with Retry-After) and the waiting ones are still answered."""
    from online.serving.batcher import Overloaded

    gate = threading.Event()

    def run(model: str, texts: list[str]) -> list[str]:
        gate.wait(5)
        return texts

    async def main() -> tuple[list, BaseException | None]:
        batcher: MicroBatcher[str, str] = MicroBatcher(run, max_batch=1, max_wait_ms=0, max_queue=2)
        batcher.start()
        busy = asyncio.create_task(batcher.submit("v1", ["t0"]))  # taken by the forward thread
        await asyncio.sleep(0.05)
        waiting = [asyncio.create_task(batcher.submit("v1", [f"t{i}"])) for i in (1, 2)]
        await asyncio.sleep(0.05)
        refused = None
        try:
            await batcher.submit("v1", ["t3"])
        except Overloaded as exc:
            refused = exc
        gate.set()
        results = await asyncio.gather(busy, *waiting)
        await batcher.stop()
        return results, refused

    results, refused = asyncio.run(main())
    assert results == [["t0"], ["t1"], ["t2"]]
    assert isinstance(refused, Overloaded) and refused.retry_after_s >= 1


def test_two_models_interleaved_in_the_queue_still_get_full_batches_in_order():
    """A canary's requests among live's: each model's waiting requests go together, none overtakes another
    of its model, and the other model's wait only for the next batch."""
    calls: list[tuple[str, list[str]]] = []
    gate = threading.Event()

    def run(model: str, texts: list[str]) -> list[str]:
        gate.wait(5)
        calls.append((model, texts))
        return [f"{model}:{t}" for t in texts]

    async def main() -> list[list[str]]:
        batcher: MicroBatcher[str, str] = MicroBatcher(run, max_batch=8, max_wait_ms=1)
        batcher.start()
        first = asyncio.create_task(batcher.submit("live", ["w"]))
        await asyncio.sleep(0.05)
        rest = [asyncio.create_task(batcher.submit("live" if i % 4 else "canary", [f"t{i}"])) for i in range(32)]
        await asyncio.sleep(0.05)
        gate.set()
        results = await asyncio.gather(first, *rest)
        await batcher.stop()
        return results

    results = asyncio.run(main())
    assert results[1:] == [[f"{'live' if i % 4 else 'canary'}:t{i}"] for i in range(32)]
    sizes = [(m, len(t)) for m, t in calls[1:]]
    # the oldest first (canary t0 with the canary's waiting then), live's in full batches: 5 forwards,
    # where closing a batch at each change of model would take 16
    assert sizes == [("canary", 3), ("live", 8), ("live", 8), ("canary", 5), ("live", 8)], sizes
    for model, texts in calls[1:]:
        numbers = [int(t[1:]) for t in texts]
        assert numbers == sorted(numbers)  # in arrival order within a model


def _tracking_run(gate: threading.Event, log: list[tuple[str, str, int]], lock: threading.Lock):
    """A forward that records its start and end, holding until ``gate`` opens; and how many overlapped."""
    state = {"running": 0, "most": 0}

    def run(model: str, texts: list[str]) -> list[str]:
        with lock:
            state["running"] += 1
            state["most"] = max(state["most"], state["running"])
            log.append(("start", model, len(texts)))
        gate.wait(5)
        with lock:
            state["running"] -= 1
            log.append(("end", model, len(texts)))
        return texts

    return run, state


def test_lanes_split_waiting_clients_and_run_their_batches_at_once():
    """Two lanes: 16 waiting requests become two batches of 8 that run together; a call waits for both
    and no batch starts while it runs."""
    gate, lock, log = threading.Event(), threading.Lock(), []
    run, state = _tracking_run(gate, log, lock)

    async def main() -> tuple[list[list[str]], list[str]]:
        batcher: MicroBatcher[str, str] = MicroBatcher(run, max_batch=32, max_wait_ms=0, lanes=2, lanes_of=lambda m: 2)
        batcher.start()
        call_gate = threading.Event()
        held = asyncio.create_task(batcher.call(lambda: call_gate.wait(5)))  # every lane: requests pile up
        await asyncio.sleep(0.05)
        requests = [asyncio.create_task(batcher.submit("int8", [f"t{i}"])) for i in range(16)]
        await asyncio.sleep(0.05)
        assert not log  # nothing ran beside the call
        call_gate.set()
        await held
        for _ in range(100):  # both batches start, neither can end before the gate opens
            if state["running"] == 2:
                break
            await asyncio.sleep(0.01)
        gate.set()
        answers = await asyncio.gather(*requests)
        order: list[str] = []
        gate.clear()
        busy = [asyncio.create_task(batcher.submit("int8", [f"u{i}"])) for i in range(4)]
        await asyncio.sleep(0.05)  # two batches running, held at the gate
        call = asyncio.create_task(batcher.call(lambda: order.append(f"call while {state['running']} ran")))
        await asyncio.sleep(0.05)
        assert not order  # the call waits for the lanes
        gate.set()
        await asyncio.gather(call, *busy)
        await batcher.stop()
        return answers, order

    answers, order = asyncio.run(main())
    assert answers == [[f"t{i}"] for i in range(16)]
    assert [n for kind, _, n in log[:2]] == [8, 8] and [k for k, _, _ in log[:2]] == ["start", "start"]
    assert state["most"] == 2
    assert order == ["call while 0 ran"]


def test_a_model_without_lanes_runs_alone():
    """A torch model (lanes_of 1) beside a two-lane batcher: its batches never overlap."""
    gate, lock, log = threading.Event(), threading.Lock(), []
    run, state = _tracking_run(gate, log, lock)
    gate.set()

    async def main() -> list[list[str]]:
        batcher: MicroBatcher[str, str] = MicroBatcher(run, max_batch=4, max_wait_ms=0, lanes=2, lanes_of=lambda m: 1)
        batcher.start()
        answers = await asyncio.gather(*[batcher.submit("torch", [f"t{i}"]) for i in range(40)])
        await batcher.stop()
        return answers

    assert asyncio.run(main()) == [[f"t{i}"] for i in range(40)]
    assert state["most"] == 1


def test_a_cancelled_call_gives_its_lanes_back_only_when_its_work_is_done():
    """A call cancelled while waiting for lanes gives back what it had gathered; one cancelled while its
    function runs keeps every lane until the function ends (no batch runs beside a model load)."""
    gate, lock, log = threading.Event(), threading.Lock(), []
    run, state = _tracking_run(gate, log, lock)

    async def main() -> None:
        batcher: MicroBatcher[str, str] = MicroBatcher(run, max_batch=8, max_wait_ms=0, lanes=2, lanes_of=lambda m: 2)
        batcher.start()
        busy = asyncio.create_task(batcher.submit("int8", ["a"]))  # holds one lane at the gate
        await asyncio.sleep(0.05)
        waiting = asyncio.create_task(batcher.call(lambda: None))  # gathers the free lane, waits for the other
        await asyncio.sleep(0.05)
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        gate.set()
        assert await busy == ["a"]
        assert await asyncio.wait_for(batcher.submit("int8", ["b"]), 5) == ["b"]  # both lanes came back

        release = threading.Event()
        loading = asyncio.create_task(batcher.call(lambda: release.wait(5)))
        await asyncio.sleep(0.05)
        loading.cancel()  # the caller stops waiting; the load goes on
        await asyncio.gather(loading, return_exceptions=True)
        queued = asyncio.create_task(batcher.submit("int8", ["c"]))
        await asyncio.sleep(0.1)
        assert not queued.done()  # no batch beside the load still running
        release.set()
        assert await asyncio.wait_for(queued, 5) == ["c"]
        await batcher.stop()

    asyncio.run(main())
