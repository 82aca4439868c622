"""`freshrank generate` and `freshrank stream`: events into the broker, and the PyFlink job that makes features."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from cli.options import (
    StateDir,
    console,
    fail,
    progress_bar,
    resolve_bootstrap,
    settings_problems,
    stack_settings,
)
from stack.components import java_version
from stack.settings import StackError

app = typer.Typer()


@app.command()
def generate(
    rate: Annotated[float, typer.Option(min=1, help="Events per second.")] = 1000.0,
    seconds: Annotated[float, typer.Option(min=0.1, help="How long to generate, in seconds of event time.")] = 10.0,
    users: Annotated[int, typer.Option(min=1)] = 1000,
    items: Annotated[int, typer.Option(min=1)] = 500,
    seed: Annotated[int, typer.Option(help="Same seed, same world, same events.")] = 0,
    start_ms: Annotated[int | None, typer.Option(help="Event time of the first event (default: now).")] = None,
    as_fast_as_possible: Annotated[
        bool, typer.Option("--fast", help="Publish without pacing to the event times.")
    ] = False,
    truth: Annotated[Path | None, typer.Option(help="Where to write ground truth (parquet).")] = None,
    bootstrap: Annotated[str | None, typer.Option(help="Kafka bootstrap servers (default: local stack).")] = None,
    state_dir: StateDir = None,
) -> None:
    """Publish a synthetic feed world through the SDK, paced to real time."""
    from sdk.clock import wall_clock_ms
    from sdk.errors import SDKError
    from sdk.publisher import EventPublisher, publish_paced
    from sdk.settings import KafkaSettings
    from simulator.catalog import write_catalog
    from simulator.config import WorldConfig
    from simulator.truth import write_ground_truth
    from simulator.world import SyntheticWorld

    settings = KafkaSettings(bootstrap_servers=resolve_bootstrap(bootstrap, state_dir))
    # Live worlds start a moment ahead, so building them does not make the first events late.
    first_ms = start_ms if start_ms is not None else wall_clock_ms() + 2000
    world = SyntheticWorld(
        WorldConfig(users=users, items=items, seed=seed, rate=rate, seconds=seconds, start_ms=first_ms)
    )
    out_dir = (state_dir or stack_settings(None).state_dir) / "synthetic"
    truth_path = truth or out_dir / f"truth-seed{seed}.parquet"
    # The stream job reads item categories from <state dir>/catalog.parquet.
    catalog_path = (state_dir or stack_settings(None).state_dir) / "catalog.parquet"
    expected = int(rate * seconds)
    catalog_path.parent.mkdir(parents=True, exist_ok=True)
    write_catalog(world.catalog(), catalog_path)
    wall_start = time.monotonic()
    try:
        with EventPublisher(settings) as publisher, progress_bar() as progress:
            task = progress.add_task("publishing", total=expected)
            published = publish_paced(
                publisher,
                world.events(),
                first_ms,
                paced=not as_fast_as_possible,
                on_progress=lambda n: progress.update(task, completed=min(n, expected)),
                live=start_ms is None,
            )
            progress.update(task, completed=expected, total=max(expected, published))
    except SDKError as error:
        raise fail(f"{error} (bootstrap servers {settings.bootstrap_servers})") from None
    elapsed = time.monotonic() - wall_start
    write_ground_truth(world.ground_truth, truth_path)
    console.print(
        f"published {published} events to {settings.topic} at {settings.bootstrap_servers} "
        f"in {elapsed:.1f} s ({published / elapsed:.0f} events/s); all acknowledged"
    )
    console.print(f"ground truth: {truth_path}; catalog: {catalog_path}")


@app.command()
def stream(
    parallelism: Annotated[int | None, typer.Option(help="Parallelism of readers and feature operators.")] = None,
    task_managers: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="0: a local mini-cluster in this process (one Python interpreter, one GIL). N >= 1: a local "
            "standalone Flink cluster of N TaskManager processes, the job at parallelism N "
            "[env FRESHRANK_STREAM_TASK_MANAGERS, default 0].",
        ),
    ] = None,
    split_operators: Annotated[
        bool | None,
        typer.Option(
            "--split-operators/--no-split-operators",
            help="With --task-managers N (even): item features on N/2 TaskManagers of their own, reading and user "
            "features on the others, the job at parallelism N/2; each operator then has an interpreter (a GIL) "
            "to itself [env FRESHRANK_STREAM_SPLIT_OPERATORS, default off].",
        ),
    ] = None,
) -> None:
    """Run the PyFlink feature job (Kafka -> features -> Feast online store) until stopped.

    Settings come from FRESHRANK_STREAM_* variables (see README). After a crash it
    resumes from the newest retained checkpoint in FRESHRANK_STREAM_CHECKPOINT_DIR.
    With --task-managers N it starts a JobManager and N TaskManagers, submits the job
    to them, and exits non-zero if any of them dies.
    """
    import logging

    from pydantic import ValidationError

    from streaming.errors import DeclaredViewsRefused
    from streaming.job import latest_checkpoint, load_declared_views, run
    from streaming.settings import StreamSettings, split_problem

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if task_managers and parallelism is not None and parallelism != task_managers:
        raise fail(
            f"--parallelism {parallelism} with --task-managers {task_managers}: on a local cluster the job runs "
            "at one parallel instance per TaskManager; pass only --task-managers"
        )
    overrides: dict[str, int | bool] = {}
    if parallelism is not None:
        overrides["parallelism"] = parallelism
    if task_managers is not None:
        overrides["task_managers"] = task_managers
    if split_operators is not None:
        overrides["split_operators"] = split_operators
    try:
        settings = StreamSettings(**overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        raise fail(settings_problems(error)) from None
    problem = split_problem(settings.task_managers, settings.split_operators)
    if problem is not None:
        raise fail(problem)
    try:
        java_version()
    except StackError as error:
        raise fail(str(error)) from None
    restore = latest_checkpoint(settings.checkpoint_dir)
    split = ", item features on TaskManagers of their own" if settings.split_operators else ""
    where = (
        f"a local cluster of {settings.task_managers} TaskManagers (parallelism {settings.cluster_parallelism}{split})"
        if settings.task_managers
        else "a local mini-cluster"
    )
    console.print(
        f"stream job on {where}: {settings.bootstrap_servers}/{settings.topic} -> Redis {settings.redis_address}; "
        f"{'resuming from ' + str(restore) if restore else 'no checkpoint, starting from the earliest offsets'}"
    )
    try:
        if not settings.task_managers:
            run(settings)
            return
        from stack.flink_cluster import run_cluster

        # A declared view the job cannot run is refused here, before any Flink process starts (as run() does).
        load_declared_views(settings)
        run_cluster(settings, lambda line: console.print(line, highlight=False))
    except (StackError, DeclaredViewsRefused) as error:
        raise fail(str(error)) from None
