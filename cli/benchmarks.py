"""`freshrank bench ...`: the benchmarks (bench/), each printing and optionally writing a JSON report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.options import (
    SERVING_TREES,
    JsonReportOption,
    console,
    fail,
    print_json_report,
)

bench_app = typer.Typer(help="Benchmarks; each writes a JSON report.", no_args_is_help=True)


@bench_app.command("freshness")
def bench_freshness(
    rate: Annotated[float, typer.Option(min=1, help="Events per second to publish.")] = 1000.0,
    seconds: Annotated[float, typer.Option(min=1, help="How long to publish.")] = 30.0,
    seed: Annotated[int, typer.Option()] = 0,
    json_path: JsonReportOption = None,
    find_max: Annotated[
        bool,
        typer.Option(
            "--find-max",
            help="Instead: the highest rate the job sustains with p99 freshness < 1 s and nothing lost "
            "(doubling from --rate, then bisection; a fresh job per trial; no baseline).",
        ),
    ] = False,
    compare_parallelism: Annotated[
        bool,
        typer.Option(
            "--compare-parallelism",
            help="Instead: the job on a local Flink cluster of 1 TaskManager (parallelism 1) against 2 "
            "TaskManagers at parallelism 2 and 2 TaskManagers with the operators split, at --rate: p99s and "
            "throughput ratios (no baseline). Pick a rate that saturates parallelism 1. With --find-max: each "
            "one's highest sustained rate, and its ratio to parallelism 1's.",
        ),
    ] = False,
    task_managers: Annotated[
        int,
        typer.Option(
            min=0,
            help="Run the job on a local cluster of N TaskManagers (0: a mini-cluster, as `freshrank up` runs it); "
            "for the one-rate run and --find-max.",
        ),
    ] = 0,
    split_operators: Annotated[
        bool,
        typer.Option(
            "--split-operators",
            help="With --task-managers N (even): item features on TaskManagers of their own (README, 'Scale-out').",
        ),
    ] = False,
    declared: Annotated[
        int,
        typer.Option(
            min=0,
            help="Also declare this many stream feature view aggregations (Feast objects, every function, "
            "three windows; half per user, half per item) for the job to compute beside the built-ins.",
        ),
    ] = 0,
    plot_path: Annotated[
        Path | None,
        typer.Option(
            "--plot",
            help="Also draw the freshness distributions, job against baseline, as a PNG here (the one-rate run).",
        ),
    ] = None,
) -> None:
    """SDK -> broker -> PyFlink job -> Redis, and the consumer-loop + Feast push baseline, at one rate."""
    from bench.freshness import Deployment, compare_max
    from bench.freshness import compare_parallelism as compare
    from bench.freshness import find_max as find_max_rate
    from bench.freshness import run as run_bench
    from streaming.settings import split_problem

    if compare_parallelism and (task_managers or split_operators):
        raise fail("--compare-parallelism runs its own three deployments: drop --task-managers/--split-operators")
    problem = split_problem(task_managers, split_operators)
    if problem is not None:
        raise fail(problem, code=2)
    deployment = Deployment(task_managers, split_operators)
    log = lambda line: console.print(f"[dim]bench:[/] {line}")  # noqa: E731
    if declared and (find_max or compare_parallelism):
        raise fail(
            "--declared is measured at one rate, with the baseline; drop --find-max/--compare-parallelism", code=2
        )
    if plot_path is not None:
        from bench.plot import PlotError, check_plotting

        if find_max or compare_parallelism:
            raise fail(
                "--plot draws the job against the baseline of a one-rate run; drop --find-max/--compare-parallelism",
                code=2,
            )
        try:
            check_plotting()
        except PlotError as error:
            raise fail(str(error), code=2) from None
    if compare_parallelism and find_max:
        report = compare_max(seconds, seed, log, start_rate=rate)
    elif compare_parallelism:
        report = compare(rate, seconds, seed, log)
    elif find_max:
        report = find_max_rate(seconds, seed, log, start_rate=rate, deployment=deployment)
    else:
        report = run_bench(rate, seconds, seed, log, declared=declared, deployment=deployment)
    print_json_report(report, json_path)
    if plot_path is not None:
        from bench.plot import plot_freshness

        try:
            console.print(f"plot written to {plot_freshness(report, plot_path)}")
        except PlotError as error:
            raise fail(str(error)) from None


@bench_app.command("serving")
def bench_serving(
    rps: Annotated[float, typer.Option(min=1, help="Requests per second (open loop).")] = 200.0,
    seconds: Annotated[float, typer.Option(min=1, help="How long to send load.")] = 30.0,
    candidates: Annotated[int, typer.Option(min=1, max=1000, help="Candidates ranked per request.")] = 500,
    path: Annotated[str, typer.Option(help="feed: GET /v1/feed (cached list); rank: POST /v1/rank.")] = "feed",
    workers: Annotated[int, typer.Option(min=1, help="API worker processes.")] = 1,
    registry: Annotated[
        Path | None, typer.Option(help="Serve the newest model of this registry instead of training one.")
    ] = None,
    find_max: Annotated[
        bool, typer.Option("--find-max", help="Then search the highest rate with p99 <= 10 ms and < 1 % degraded.")
    ] = False,
    step_seconds: Annotated[float, typer.Option(min=1, help="Seconds per rate step of --find-max.")] = 15.0,
    serving_trees: Annotated[
        int | None, typer.Option(min=1, help="Serve only the first N trees of the trained ranker (as freshrank train).")
    ] = SERVING_TREES,
    json_path: JsonReportOption = None,
) -> None:
    """The feed API at a fixed request rate (separate load process), and Feast get_online_features + ONNX."""
    from bench.serving import run as run_bench

    if path not in ("feed", "rank"):
        raise fail("--path must be feed or rank")
    report = run_bench(
        rps,
        seconds,
        candidates,
        log=lambda line: console.print(f"[dim]bench:[/] {line}"),
        path=path,
        workers=workers,
        registry=registry,
        find_max=find_max,
        step_seconds=step_seconds,
        serving_trees=serving_trees,
    )
    print_json_report(report, json_path)
