"""`online bench ...`: the benchmarks as a typer app, registered with the `online` command line through
the ``online.commands`` entry point (pyproject.toml), so ``services`` never imports ``bench``.

Runs on its own too: ``python -m bench.cli serve --requests 100``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

from services.commands.common import LabelColumn, TextColumn, data_options
from services.wiring import current

if TYPE_CHECKING:
    from bench.report import BenchConsole
    from online.settings import Settings

app = typer.Typer(help="Benchmarks (ratios measured side by side in one run).", no_args_is_help=True)
JsonOut = typer.Option(None, "--json", metavar="PATH", help="Also write the results as JSON rows to PATH.")


def _start(name: str, level: str = "WARNING") -> tuple[Settings, BenchConsole]:
    """The command's settings (read once) and its result table, logging at ``level``."""
    from bench.report import BenchConsole

    wiring = current()
    wiring.logging(level)
    return wiring.settings, BenchConsole(name)


def _save(bench_console: BenchConsole, path: Path | None) -> None:
    if path is not None:
        bench_console.write(path)


def _floats(csv: str) -> list[float]:
    return [float(x) for x in csv.split(",") if x.strip()]


@app.command("ingest")
def bench_ingest(
    events: int = typer.Option(50_000, help="Events to push through."),
    json_out: Path | None = JsonOut,
) -> None:
    """Producer -> Kafka -> consumer -> replay buffer, against the broker's raw produce+consume rate."""
    from bench.ingest import run_bench_ingest

    settings, console = _start("ingest")
    run_bench_ingest(settings, events, console)
    _save(console, json_out)


@app.command("serve")
def bench_serve(
    task: str = typer.Option("classify", help="classify (the text classifier) or generate (the generative model)."),
    requests: int | None = typer.Option(
        None,
        help="Requests per cell: the raw ones, and the HTTP ones of the Python client (600; generate: 12 a client, at least 48).",
    ),
    concurrency: str | None = typer.Option(None, help="Comma-separated concurrency levels (1,8,32; generate: 1,8)."),
    eval_limit: int = typer.Option(0, help="CLINC150 test texts for the accuracy check (0: all 4500)."),
    client: str = typer.Option(
        "auto", help="HTTP load generator: wrk (native), python (asyncio, in this process), auto (wrk if installed)."
    ),
    seconds: float = typer.Option(
        12.0, help="With wrk: seconds per HTTP cell, in 3 runs on fresh connections (after 1 s of warm-up)."
    ),
    max_new_tokens: int = typer.Option(32, help="--task generate: tokens each answer may have at most."),
    workers: str | None = typer.Option(
        None, help="Comma-separated API worker counts, one API row each (default: 1,2 on 2+ cores, else 1)."
    ),
    json_out: Path | None = JsonOut,
) -> None:
    """HTTP API vs a naive server vs the raw in-process batched forward, side by side (``--task generate``:
    the generation API, streamed, against the raw in-process ``generate``)."""
    if task not in ("classify", "generate"):
        raise typer.BadParameter("--task is classify or generate")
    if client not in ("auto", "wrk", "python"):
        raise typer.BadParameter("--client is auto, wrk or python")
    settings, console = _start("serve")
    if task == "generate":
        from bench.serve_generate import run_bench_serve_generate

        levels = [int(c) for c in (concurrency or "1,8").split(",")]
        run_bench_serve_generate(settings, requests, levels, max_new_tokens, console)
    else:
        from bench.serve import default_worker_counts, run_bench_serve

        levels = [int(c) for c in (concurrency or "1,8,32").split(",")]
        counts = [int(w) for w in workers.split(",")] if workers else default_worker_counts()
        if not counts or min(counts) < 1:
            raise typer.BadParameter("--workers: worker counts of 1 or more, e.g. 1,2")
        run_bench_serve(
            settings, requests or 600, levels, eval_limit, console, client=client, seconds=seconds, workers=counts
        )
    _save(console, json_out)


@app.command("teach-generate")
def bench_teach_generate(json_out: Path | None = JsonOut) -> None:
    """Five facts taught by corrections in one generative round on the real SmolLM2: held-out phrasings
    answered with them, leaks into unrelated answers, golden NLL before and after, the round's time."""
    from bench.teach_generate import run_bench_teach_generate

    settings, console = _start("teach-generate")
    run_bench_teach_generate(settings, console)
    _save(console, json_out)


@app.command("canary")
def bench_canary(
    users: int = typer.Option(400, help="Simulated users (8 groups, one client address each)."),
    rate: float = typer.Option(40.0, help="Predict requests per second, all users together."),
    feedback: float = typer.Option(0.5, help="Share of answers a user judges (thumbs up or down)."),
    steady: float = typer.Option(30.0, help="Seconds of steady traffic before the first canary."),
    step_s: float = typer.Option(30.0, help="ONLINE_CANARY_MIN_STEP_S for the run: least seconds at each share."),
    max_phase: float = typer.Option(600.0, help="Seconds a canary may run undecided before the run moves on."),
    json_out: Path | None = JsonOut,
) -> None:
    """A worse and a better candidate on a canary under simulated users' traffic and feedback: time and
    judgements to each decision, users who saw the worse one, p99 per share against steady."""
    from bench.canary import run_bench_canary

    settings, console = _start("canary")
    run_bench_canary(
        settings,
        console,
        users=users,
        rate=rate,
        feedback=feedback,
        steady_s=steady,
        step_s=step_s,
        max_phase_s=max_phase,
    )
    _save(console, json_out)


@app.command("swap")
def bench_swap(
    versions: int = typer.Option(5, help="Versions promoted one after another (then one rollback)."),
    steady_requests: int = typer.Option(
        10_000, help="Requests of the steady phase (about as many as the swap windows hold: its p99 is the baseline)."
    ),
    concurrency: int = typer.Option(32, help="Concurrent clients, spread over the two replicas."),
    interval: float = typer.Option(3.0, help="Seconds between swaps."),
    stores: str = typer.Option("folder,s3", help="Model stores measured side by side: folder, s3 (moto's server)."),
    json_out: Path | None = JsonOut,
) -> None:
    """Hot swaps under load on two API processes: errors, p99 against steady, time to swap, per model store."""
    from bench.swap import run_bench_swap

    settings, console = _start("swap")
    run_bench_swap(
        settings,
        console,
        versions=versions,
        steady_requests=steady_requests,
        concurrency=concurrency,
        interval_s=interval,
        stores=[s.strip() for s in stores.split(",") if s.strip()],
    )
    _save(console, json_out)


@app.command("freshness")
def bench_freshness(
    trials: int = typer.Option(5, help="New intents taught, one after another (one per later domain)."),
    per_intent: int = typer.Option(20, help="Label events that teach each intent."),
    timeout: float = typer.Option(300.0, help="Give up on a trial after this many seconds."),
    json_out: Path | None = JsonOut,
) -> None:
    """Feedback teaching a new intent -> first answer by a version trained on it (whole system)."""
    from bench.freshness import run_bench_freshness

    settings, console = _start("freshness")
    run_bench_freshness(settings, console, trials=trials, per_intent=per_intent, timeout_s=timeout)
    _save(console, json_out)


@app.command("abuse")
def bench_abuse(
    attacks: str = typer.Option(
        "all",
        help="Comma-separated, run one after another: thumbs, poison-records, crafted-text, long-texts, "
        "invented-names, id-squatting, predict-flood (all: every one).",
    ),
    window: float = typer.Option(20.0, help="Seconds of each window: without the attack, then with it."),
    drain: float = typer.Option(120.0, help="Seconds to wait at the end for accepted honest events to be stored."),
    json_out: Path | None = JsonOut,
) -> None:
    """Each attack of the threat model against the stack under honest traffic, beside the same load without it."""
    from bench.abuse import ATTACKS, run_bench_abuse

    chosen = list(ATTACKS) if attacks == "all" else [a.strip() for a in attacks.split(",") if a.strip()]
    unknown = sorted(set(chosen) - set(ATTACKS))
    if unknown:
        raise typer.BadParameter(f"unknown attacks {unknown}; known: {', '.join(ATTACKS)}")
    settings, console = _start("abuse")
    run_bench_abuse(settings, console, attacks=chosen, window_s=window, drain_s=drain)
    _save(console, json_out)


@app.command("memory")
def bench_memory(
    similarities: str = typer.Option("0.8,0.85,0.9,0.95", help="Comma-separated similarity thresholds to compare."),
    requests: int = typer.Option(500, help="Single-text requests per memory size for the latency rows."),
    json_out: Path | None = JsonOut,
) -> None:
    """Corrections in memory (0 to 10,000): untouched-traffic and paraphrase accuracy, predict p99."""
    from bench.memory import run_bench_memory
    from online.learning.fit import configure_threads

    settings, console = _start("memory")
    configure_threads(settings.num_threads)
    run_bench_memory(settings, console, similarities=_floats(similarities), latency_requests=requests)
    _save(console, json_out)


@app.command("drift")
def bench_drift(
    windows: int = typer.Option(100, help="In-domain windows before the switch."),
    after: int = typer.Option(10, help="Windows after the switch to out-of-scope traffic."),
    json_out: Path | None = JsonOut,
) -> None:
    """In-domain traffic, then out-of-scope: false alarms and windows to alarm for every drift signal."""
    from bench.drift import run_bench_drift

    settings, console = _start("drift")
    run_bench_drift(settings, console, windows=windows, after=after)
    _save(console, json_out)


@app.command("chaos")
def bench_chaos(
    steady: float = typer.Option(20.0, help="Seconds of steady load before the first fault."),
    settle: float = typer.Option(5.0, help="Seconds of load after each recovery, counted in the fault's row."),
    timeout: float = typer.Option(180.0, help="Longest wait for a recovery (and for the final drain)."),
    json_out: Path | None = JsonOut,
) -> None:
    """Kill -9 Redis, the broker, the consumer, the trainer mid-round and an API replica under load."""
    from bench.chaos import run_bench_chaos

    settings, console = _start("chaos", level="INFO")
    run_bench_chaos(settings, console, steady_s=steady, settle_s=settle, timeout_s=timeout)
    _save(console, json_out)


@app.command("poison")
def bench_poison(
    shares: str = typer.Option("0.1,0.3", help="Comma-separated shares of events from hostile sources."),
    per_intent: int = typer.Option(50, help="Feedback events per intent per round."),
    memory_per_intent: int = typer.Option(20, help="Remembered examples per intent for rehearsal."),
    epochs: int = typer.Option(2, help="Epochs a round."),
    rounds: int = typer.Option(3, help="Domains streamed after the seed domains."),
    journeys: bool = typer.Option(True, help="Also the honest-teaching, correction and label-attack rows."),
    json_out: Path | None = JsonOut,
) -> None:
    """Flipped labels from hostile sources, honest teaching and label-space attacks, quarantine on and off."""
    from bench.poison import run_bench_poison

    settings, console = _start("poison")
    run_bench_poison(
        settings,
        console,
        shares=_floats(shares),
        per_intent=per_intent,
        memory_per_intent=memory_per_intent,
        epochs=epochs,
        rounds=rounds,
        journeys=journeys,
    )
    _save(console, json_out)


@app.command("review")
def bench_review(
    budgets: str = typer.Option("75,150,300,600", help="Comma-separated label budgets."),
    per_intent: int = typer.Option(50, help="Seed-domain train examples per intent for the starting model."),
    epochs: int = typer.Option(2, help="Epochs of the round trained on the bought labels."),
    json_out: Path | None = JsonOut,
) -> None:
    """Active learning: labels for the review queue's picks against random picks, same budget."""
    from bench.review import run_bench_review

    settings, console = _start("review")
    run_bench_review(
        settings, console, budgets=[int(b) for b in budgets.split(",")], per_intent=per_intent, epochs=epochs
    )
    _save(console, json_out)


@app.command("learn")
def bench_learn(
    methods: str = typer.Option(
        "", help="Comma-separated methods, or all (default: replay-balanced, sgd, closed-form, joint)."
    ),
    start: str = typer.Option("first", help="first: version 1 knows domain 1; seed: version 1's seed domains."),
    per_intent: int = typer.Option(100, help="Train examples per intent arriving as feedback (CLINC150 has 100)."),
    memory_per_intent: int = typer.Option(20, help="Remembered examples per intent that rehearsal picks from."),
    epochs: int = typer.Option(2, help="Epochs a round."),
    joint: str = typer.Option("final", help="Joint upper bound: after every round (every), the last (final), off."),
    rounds: int = typer.Option(0, help="Stop after this many rounds (0: the whole stream)."),
    seeds: int = typer.Option(3, min=1, help="Runs of every method, one per seed: mean and spread."),
    seeds_of: str = typer.Option(
        "", help="Fewer seeds for some methods, e.g. joint=1 (an expensive bound beside a 3-seed comparison)."
    ),
    out: Path | None = typer.Option(
        Path(".online/bench/learn.json"), "--json", "--out", help="Write the results as JSON here."
    ),
    data: Path | None = typer.Option(None, "--data", help="Your labelled file instead of CLINC150."),
    test: Path | None = typer.Option(None, "--test", help="Its test file (default: a stratified split of --data)."),
    groups: int = typer.Option(
        5, "--groups", help="With --data: label groups; the first starts, each other is a round."
    ),
    text_column: str | None = TextColumn,
    label_column: str | None = LabelColumn,
) -> None:
    """Continual learning on the CLINC150 domain stream (or your labels in --groups groups): our strategies
    against joint and naive training, so you can pick rehearsal settings on your data."""
    from bench.learn import run_bench_learn

    wiring = current()
    wiring.logging("WARNING")
    if start not in ("seed", "first") or joint not in ("every", "final", "off"):
        raise typer.BadParameter("--start is seed or first; --joint is every, final or off")
    try:
        fewer = {k.strip(): int(v) for k, v in (pair.split("=") for pair in seeds_of.split(",") if pair.strip())}
    except ValueError:
        raise typer.BadParameter("--seeds-of is method=N[,method=N...]") from None
    wide = Console(width=max(Console().width, 160))  # wide tables stay readable in a file or a pipe
    run_bench_learn(
        data_options(wiring.settings, text_column=text_column, label_column=label_column),
        wide,
        data=data,
        test=test,
        groups=groups,
        names=[m for m in methods.split(",") if m] or None,
        start=start,
        per_intent=per_intent,
        memory_per_intent=memory_per_intent,
        epochs=epochs,
        joint=joint,
        rounds=rounds or None,
        out=out,
        seeds=seeds,
        seeds_of=fewer,
    )


@app.command("small-rounds")
def bench_small_rounds(
    methods: str = typer.Option("sgd,closed-form", help="Comma-separated methods of `bench learn`."),
    intents: str = typer.Option(
        "plug_type,alarm,insurance_change,do_you_have_pets", help="New intents, one small round each."
    ),
    seeds: int = typer.Option(2, min=1, help="Rounds per intent (the seed picks its examples)."),
    per_intent: int = typer.Option(20, help="Examples of the new intent in a round."),
    out: Path | None = typer.Option(None, "--json", "--out", help="Write the results as JSON here."),
) -> None:
    """Small rounds from version 1 (the seed domains): 20 examples of one new intent, in process; the
    golden accuracy change and the new intent's recall on its test texts, method by method."""
    from bench.learn import run_small_rounds

    wiring = current()
    wiring.logging("WARNING")
    run_small_rounds(
        wiring.settings,
        Console(width=max(Console().width, 160)),
        names=[m for m in methods.split(",") if m],
        intents=[i for i in intents.split(",") if i],
        seeds=seeds,
        per_intent=per_intent,
        out=out,
    )


@app.command("gpu", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench_gpu(ctx: typer.Context) -> None:
    """The GPU check: forward per precision, parity with CPU fp32, a training round, the CUDA tests, as
    gpu.json (`online bench gpu --out DIR [--device cuda|cpu] [--tiny]`; `python -m bench.gpu_carry`
    prepares what a bare GPU machine needs)."""
    from bench.gpu import main

    raise typer.Exit(main(ctx.args))


if __name__ == "__main__":
    app()
