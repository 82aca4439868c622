"""The `freshrank` command line: one entry point, a subcommand per job.

Commands only parse options, wire the parts together and report; the work
itself lives in the packages (features/, sdk/, training/, ...). Errors a user
can fix are printed as one red line with what to do, never as a traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table

from stack.components import java_version, local_components
from stack.health import component_health, flink_detail, flink_problems, stream_detail, stream_problems
from stack.ports import wait_ports_free
from stack.processes import Component, pid_alive, stop_group, tail
from stack.settings import StackError, StackSettings
from stack.supervisor import Supervisor, read_state

if TYPE_CHECKING:
    from training.sources import EventSource

app = typer.Typer(help="freshrank: streaming features and real-time re-ranking for feeds.", no_args_is_help=True)
console = Console()
errors = Console(stderr=True)


def fail(message: str, code: int = 1) -> typer.Exit:
    errors.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


StateDir = Annotated[Path | None, typer.Option(help="State dir of the local stack [env FRESHRANK_STATE_DIR].")]


def stack_settings(state_dir: Path | None, **overrides: int | None) -> StackSettings:
    values: dict[str, object] = {k: v for k, v in overrides.items() if v is not None}
    if state_dir is not None:
        values["state_dir"] = state_dir
    return StackSettings(**values)  # type: ignore[arg-type]


@app.command()
def up(
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Return once every part is healthy.")] = False,
    broker_port: Annotated[int | None, typer.Option(help="Kafka port (default 9092; 0 = free port).")] = None,
    redis_port: Annotated[int | None, typer.Option(help="Redis port (default 6379; 0 = free port).")] = None,
    stream_port: Annotated[int | None, typer.Option(help="Stream job /metrics port (default 9464).")] = None,
    flink_ui_port: Annotated[
        int | None, typer.Option(help="Flink dashboard and REST API of the stream job (default 8081; 0 = free port).")
    ] = None,
    task_managers: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Run the stream job on a local standalone Flink cluster of N TaskManagers at parallelism N "
            "(/metrics on the stream port + 0..N-1); 0 = in a mini-cluster [env FRESHRANK_STREAM_TASK_MANAGERS].",
        ),
    ] = None,
    state_dir: StateDir = None,
    timeout: Annotated[float, typer.Option(help="Seconds --detach waits for health.")] = 300.0,
) -> None:
    """Start the embedded stack (broker, Redis, stream job) as supervised child processes."""
    settings = stack_settings(
        state_dir,
        broker_port=broker_port,
        redis_port=redis_port,
        stream_metrics_port=stream_port,
        stream_flink_ui_port=flink_ui_port,
        stream_task_managers=task_managers,
    )
    state = read_state(settings)
    if state and pid_alive(state.get("supervisor_pid")):
        raise fail(
            f"a stack is already running from {settings.state_dir} (supervisor pid {state['supervisor_pid']}); "
            "see `freshrank status`, or stop it with `freshrank down`"
        )
    try:
        java_version()
        components = local_components(settings)
    except StackError as error:
        raise fail(str(error)) from None
    if detach:
        _up_detached(settings, components_ports(components), timeout)
        return
    # The embedded broker keeps its log in memory only: checkpoints of an earlier stack
    # point at offsets that no longer exist, so a new stack starts the job afresh.
    shutil.rmtree(settings.state_dir / "checkpoints", ignore_errors=True)
    supervisor = Supervisor(settings, components, log=lambda line: console.print(f"[dim]up:[/] {line}"))

    def ready() -> None:
        console.print("[green]stack is up[/]; Ctrl-C or `freshrank down` stops it")
        for component in components:
            if component.dashboard:
                console.print(f"Flink dashboard of the {component.name} job: {component.dashboard}")

    try:
        supervisor.run(on_ready=ready)
    except StackError as error:
        raise fail(str(error)) from None


def components_ports(components: list[Component]) -> dict[str, int]:
    """Port of each component by name, and of each dashboard as "<name>-ui"."""
    ports = {c.name: int(c.address.rpartition(":")[2]) for c in components}
    ports.update({f"{c.name}-ui": int(c.dashboard.rpartition(":")[2]) for c in components if c.dashboard})
    return ports


def _up_detached(settings: StackSettings, ports: dict[str, int], timeout_s: float) -> None:
    """Re-run `up` in the foreground as a background session leader, then wait for it to be ready."""
    log_dir = settings.state_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "supervisor.log"
    command = [
        sys.executable,
        "-m",
        "cli",
        "up",
        "--state-dir",
        str(settings.state_dir),
        "--broker-port",
        str(ports["broker"]),
        "--redis-port",
        str(ports["redis"]),
        "--stream-port",
        str(ports["stream"]),
        "--flink-ui-port",
        str(ports["stream-ui"]),
        "--task-managers",
        str(settings.stream_task_managers),
    ]
    # The ports checked (or picked, for 0) here are the ones the stack runs on.
    env = {**os.environ, "FRESHRANK_SERVE_PORT": str(ports["serve"])}
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, env=env
        )
    deadline = time.monotonic() + timeout_s
    with console.status("starting the local stack..."):
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise fail(f"the stack failed to start (see {log_path}):\n{tail(log_path)}")
            state = read_state(settings)
            if state and state.get("ready") and state.get("supervisor_pid") == process.pid:
                console.print(f"[green]stack is up[/] (supervisor pid {process.pid}); logs in {log_dir}")
                _print_status(settings, as_json=False)
                return
            time.sleep(0.2)
    os.kill(process.pid, signal.SIGTERM)
    raise fail(f"the stack was not healthy within {timeout_s:.0f} s (see {log_path}):\n{tail(log_path)}")


@app.command()
def down(
    state_dir: StateDir = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for a clean stop before killing.")] = 30.0,
) -> None:
    """Stop the local stack started by `freshrank up`."""
    settings = stack_settings(state_dir)
    state = read_state(settings)
    if state is None:
        console.print("no local stack is running")
        return
    supervisor_pid = int(state.get("supervisor_pid") or 0)
    components = state.get("components", {}).values()
    if pid_alive(supervisor_pid):
        os.kill(supervisor_pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while pid_alive(supervisor_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_alive(supervisor_pid):
            os.kill(supervisor_pid, signal.SIGKILL)
    # Each component is its own process group; whatever of one is left (supervisor hung
    # or killed, or a grandchild such as the Flink JVM) is stopped, and waited for.
    for component in components:
        stop_group(int(component.get("pid") or 0), grace_s=min(timeout, 10.0))
    # Returning means `freshrank up` can start again on the same ports at once.
    addresses = [str(c["address"]) for c in components]
    addresses += [str(c["dashboard"]).removeprefix("http://") for c in components if c.get("dashboard")]
    # The TaskManagers of a local cluster (own process groups, stopped by `freshrank stream` or, if it was
    # killed, by their parent-death signal) hold these.
    addresses += [str(a) for c in components for a in c.get("metrics", []) if a not in addresses]
    taken = wait_ports_free(addresses, timeout_s=timeout)
    settings.state_file.unlink(missing_ok=True)
    if taken:
        raise fail(
            f"the stack stopped, but {', '.join(taken)} still cannot be bound; "
            "another process listens there (`ss -ltnp` shows which)"
        )
    console.print("[green]stack stopped[/]")


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    state_dir: StateDir = None,
) -> None:
    """Report each component of the local stack, its address and health. Exit code 1 if any is down."""
    if not _print_status(stack_settings(state_dir), as_json):
        raise typer.Exit(1)


def _print_status(settings: StackSettings, as_json: bool) -> bool:
    state = read_state(settings)
    running = bool(state) and pid_alive(state.get("supervisor_pid") if state else None)
    components: dict[str, dict[str, object]] = {}
    for name, info in (state or {}).get("components", {}).items():
        components[name] = {
            "address": info["address"],
            "pid": info["pid"],
            "restarts": info["restarts"],
            "healthy": running and component_health(name, info["address"], info.get("dashboard"), info.get("metrics")),
        }
        if name == "stream" and running:
            # One /metrics per TaskManager on a local cluster: the detail sums them.
            components[name]["detail"] = stream_detail(info.get("metrics") or info["address"])
            if info.get("dashboard"):
                components[name]["flink"] = flink_detail(info["dashboard"])
    healthy = running and bool(components) and all(c["healthy"] for c in components.values())
    report = {
        "running": running,
        "healthy": healthy,
        "supervisor_pid": state.get("supervisor_pid") if state else None,
        "state_dir": str(settings.state_dir.resolve()),
        "components": components,
    }
    if as_json:
        print(json.dumps(report, indent=2))  # noqa: T201 - the CLI's output
        return healthy
    if not running:
        console.print(f"no local stack is running (state dir {settings.state_dir}); start it with `freshrank up`")
        return False
    table = Table(title=f"freshrank local stack (supervisor pid {report['supervisor_pid']})")
    for column in ("component", "address", "pid", "restarts", "health", "detail"):
        table.add_column(column)
    for name, info in components.items():
        health = "[green]healthy[/]" if info["healthy"] else "[red]down[/]"
        detail = info.get("detail")
        text = (
            f"freshness p50 {detail['freshness_p50_ms']:.0f} ms, p99 {detail['freshness_p99_ms']:.0f} ms "
            f"(last 60 s); lag {detail['consumer_lag']:.0f}; {detail['events_admitted']:.0f} events; "
            f"{detail['dlq_records']:.0f} to DLQ; restarts {detail['task_restarts']:.0f}; "
            f"sink retries {detail['sink_retries']:.0f}; DLQ write failures {detail['dlq_write_failures']:.0f}"
            if isinstance(detail, dict)
            else ""
        )
        flink = info.get("flink")
        if isinstance(flink, dict):
            text += ("\n" if text else "") + _flink_text(flink)
        if name == "stream" and not info["healthy"] and isinstance(detail, dict):
            problems = stream_problems(detail) + flink_problems(flink if isinstance(flink, dict) else None)
            text += " [red]" + "; ".join(problems) + "[/]"
        table.add_row(name, str(info["address"]), str(info["pid"]), str(info["restarts"]), health, text)
    console.print(table)
    for name, info in components.items():
        flink = info.get("flink")
        if isinstance(flink, dict):
            console.print(f"Flink dashboard of the {name} job: {flink['dashboard']}")
    return healthy


def _flink_text(flink: dict[str, Any]) -> str:
    """One line from the Flink REST API: job state, restarts, last completed checkpoint; or why it is missing."""
    if not flink["reachable"]:
        return f"[yellow]{flink['error']}[/]"
    state = flink["state"]
    text = f"Flink: job {'[green]' if state == 'RUNNING' else '[red]'}{state}[/], {flink['restarts']} restarts, "
    if flink["last_checkpoint_id"] is None:
        return text + f"no completed checkpoint yet ({flink['checkpoints_failed']} failed)"
    return (
        text + f"checkpoint {flink['last_checkpoint_id']} completed {flink['last_checkpoint_age_s']:.1f} s ago "
        f"({flink['checkpoints_completed']} completed, {flink['checkpoints_failed']} failed)"
    )


def resolve_bootstrap(explicit: str | None, state_dir: Path | None) -> str:
    """Explicit option, else FRESHRANK_KAFKA_BOOTSTRAP_SERVERS, else the running local stack, else the default."""
    if explicit:
        return explicit
    from_env = os.environ.get("FRESHRANK_KAFKA_BOOTSTRAP_SERVERS")
    if from_env:
        return from_env
    state = read_state(stack_settings(state_dir))
    if state and "broker" in state.get("components", {}):
        return str(state["components"]["broker"]["address"])
    from sdk.settings import DEFAULT_BOOTSTRAP

    return DEFAULT_BOOTSTRAP


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
    from sdk.errors import SDKError
    from sdk.publisher import EventPublisher, publish_paced, wall_clock_ms
    from sdk.settings import KafkaSettings
    from training.synthetic import SyntheticWorld, WorldConfig, write_catalog, write_ground_truth

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
        with EventPublisher(settings) as publisher, _progress() as progress:
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
) -> None:
    """Run the PyFlink feature job (Kafka -> features -> Feast online store) until stopped.

    Settings come from FRESHRANK_STREAM_* variables (see README). After a crash it
    resumes from the newest retained checkpoint in FRESHRANK_STREAM_CHECKPOINT_DIR.
    With --task-managers N it starts a JobManager and N TaskManagers, submits the job
    to them, and exits non-zero if any of them dies.
    """
    import logging

    from streaming.errors import DeclaredViewsRefused
    from streaming.job import latest_checkpoint, load_declared_views, run
    from streaming.settings import StreamSettings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if task_managers and parallelism is not None and parallelism != task_managers:
        raise fail(
            f"--parallelism {parallelism} with --task-managers {task_managers}: on a local cluster the job runs "
            "at one parallel instance per TaskManager; pass only --task-managers"
        )
    overrides: dict[str, int] = {}
    if parallelism is not None:
        overrides["parallelism"] = parallelism
    if task_managers is not None:
        overrides["task_managers"] = task_managers
    settings = StreamSettings(**overrides)  # type: ignore[arg-type]
    try:
        java_version()
    except StackError as error:
        raise fail(str(error)) from None
    restore = latest_checkpoint(settings.checkpoint_dir)
    where = (
        f"a local cluster of {settings.task_managers} TaskManagers (parallelism {settings.task_managers})"
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


bench_app = typer.Typer(help="Benchmarks; each writes a JSON report.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@bench_app.command("freshness")
def bench_freshness(
    rate: Annotated[float, typer.Option(min=1, help="Events per second to publish.")] = 1000.0,
    seconds: Annotated[float, typer.Option(min=1, help="How long to publish.")] = 30.0,
    seed: Annotated[int, typer.Option()] = 0,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the report here.")] = None,
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
            "TaskManagers (parallelism 2) at --rate, and the throughput ratio (no baseline). Pick a rate "
            "that saturates parallelism 1.",
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
) -> None:
    """SDK -> broker -> PyFlink job -> Redis, and the consumer-loop + Feast push baseline, at one rate."""
    from bench.freshness import compare_parallelism as compare
    from bench.freshness import find_max as find_max_rate
    from bench.freshness import run as run_bench

    if find_max and compare_parallelism:
        raise fail("--find-max and --compare-parallelism are two benchmarks: run them one at a time")
    log = lambda line: console.print(f"[dim]bench:[/] {line}")  # noqa: E731
    if declared and (find_max or compare_parallelism):
        raise fail(
            "--declared is measured at one rate, with the baseline; drop --find-max/--compare-parallelism", code=2
        )
    if compare_parallelism:
        report = compare(rate, seconds, seed, log)
    elif find_max:
        report = find_max_rate(seconds, seed, log, start_rate=rate)
    else:
        report = run_bench(rate, seconds, seed, log, declared=declared)
    text = json.dumps(report, indent=2)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(text + "\n")
    print(text)  # noqa: T201 - the CLI's output


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console
    )


# --- feed API ------------------------------------------------------------------

# The served ranker's trees (`freshrank train`, `freshrank bench serving`): 30 of the ~80 early stopping
# keeps cost AUC 0.7977 vs 0.7993 and NDCG@10 0.7109 vs 0.7104 on the default world, at ~35 % of the
# scoring CPU (README "Feed API").
SERVING_TREES = 30


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address [env FRESHRANK_SERVE_HOST].")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port [env FRESHRANK_SERVE_PORT].")] = None,
    workers: Annotated[int | None, typer.Option(help="Server processes [env FRESHRANK_SERVE_WORKERS].")] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Run the feed API: POST /v1/rank, GET /v1/feed/{user_id}, POST /v1/events, /metrics, /docs.

    Settings come from FRESHRANK_SERVE_* variables (see README "Feed API").
    """
    import logging

    import uvicorn
    from pydantic import ValidationError

    from serving.settings import ServingSettings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # Importing Feast sets these in a parent (e.g. the `up` supervisor) and a child inheriting them
    # turns prometheus_client into file-backed multiprocess mode: slower, and files left behind.
    for name in ("PROMETHEUS_MULTIPROCESS_DIR", "PROMETHEUS_MULTIPROC_DIR"):
        os.environ.pop(name, None)
    # Options become variables: with several workers each process reads its settings itself.
    for name, value in (("HOST", host), ("PORT", port), ("WORKERS", workers)):
        if value is not None:
            os.environ[f"FRESHRANK_SERVE_{name}"] = str(value)
    try:
        settings = ServingSettings()
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in error.errors())
        raise fail(f"invalid feed API settings: {problems}") from None
    console.print(
        f"feed API on http://{settings.host}:{settings.port} with {settings.workers} worker(s) (docs at /docs); "
        f"models from {settings.model_registry / settings.model_name}"
    )
    uvicorn.run(
        "serving.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level=log_level,
        # Keep-alive longer than typical client pools, so connections are not cut mid-burst.
        timeout_keep_alive=30,
    )


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
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the report here.")] = None,
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
    text = json.dumps(report, indent=2)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(text + "\n")
    print(text)  # noqa: T201 - the CLI's output


if __name__ == "__main__":
    app()


# --- training, evaluation, datasets and candidates (training/) ---------------------------------

DatasetOption = Annotated[
    str, typer.Option("--dataset", help="synthetic (generated in memory), ml-100k, or log (--events/--topic).")
]
UsersOption = Annotated[int, typer.Option(min=1, help="Synthetic world: users.")]
ItemsOption = Annotated[int, typer.Option(min=1, help="Synthetic world: items at the start.")]
SecondsOption = Annotated[float, typer.Option(min=60, help="Synthetic world: seconds of event time.")]
RateOption = Annotated[float, typer.Option(min=1, help="Synthetic world: events per second.")]
SeedOption = Annotated[int, typer.Option(help="Synthetic world: seed (same seed, same world).")]
NewItemsOption = Annotated[float, typer.Option(min=0, help="Synthetic world: new items per minute.")]
EventsOption = Annotated[Path | None, typer.Option(help="Event log file (parquet or .avro); implies --dataset log.")]
TopicOption = Annotated[str | None, typer.Option(help="Read the whole Kafka topic instead; implies --dataset log.")]
CatalogOption = Annotated[Path | None, typer.Option(help="Item catalog parquet for --dataset log.")]
CacheOption = Annotated[Path, typer.Option(help="Where external datasets are cached.")]


def _step_progress(progress: Progress) -> Callable[[str, int, int], None]:
    tasks: dict[str, TaskID] = {}

    def update(step: str, done: int, total: int) -> None:
        if step not in tasks:
            tasks[step] = progress.add_task(step, total=total)
        progress.update(tasks[step], completed=done, total=total)

    return update


def _training_source(
    dataset: str,
    *,
    users: int,
    items: int,
    seconds: float,
    rate: float,
    seed: int,
    new_items_per_minute: float = 1.0,
    events: Path | None,
    topic: str | None,
    bootstrap: str | None,
    catalog: Path | None,
    cache_dir: Path,
    progress: Progress,
) -> EventSource:
    from training.movielens import ml100k_source
    from training.sources import log_source, synthetic_source

    if events is not None or topic is not None:
        dataset = "log"
    if dataset == "synthetic":
        expected = int(rate * seconds)
        task = progress.add_task("generating the synthetic world", total=expected)
        source = synthetic_source(
            users=users,
            items=items,
            seconds=seconds,
            rate=rate,
            seed=seed,
            new_items_per_minute=new_items_per_minute,
            progress=lambda n: progress.update(task, completed=min(n, expected)),
        )
        progress.update(task, completed=expected)
        return source
    if dataset == "ml-100k":
        with console.status("loading ml-100k (fetching the recbole wheel on first use)..."):
            return ml100k_source(cache_dir)
    if dataset == "log":
        with console.status("reading the event log..."):
            return log_source(
                events_path=events,
                topic=topic,
                bootstrap_servers=resolve_bootstrap(bootstrap, None) if topic else None,
                catalog_path=catalog,
            )
    raise fail(f"unknown dataset {dataset!r}: use synthetic, ml-100k or log")


def _metrics_table(report: dict[str, Any], title: str) -> Table:
    from training.evaluate import SCORERS

    table = Table(title=title)
    for column in ("scorer", "NDCG@10", "AUC", "log loss"):
        table.add_column(column)

    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"

    for name in SCORERS:
        table.add_row(
            name, cell(report["ndcg@10"].get(name)), cell(report["auc"].get(name)), cell(report["log_loss"].get(name))
        )
    return table


def _print_report(report: dict[str, Any]) -> None:
    test = report["test"]
    console.print(_metrics_table(report, f"test period: {test['impressions']} impressions, {test['slates']} slates"))
    for name, sliced in report["slices"].items():
        console.print(_metrics_table(sliced, f"{name}: {sliced['impressions']} impressions"))
    goal = report.get("targets")
    if goal:
        verdict = "[green]met[/]" if goal["met"] else "[yellow]not met[/]"
        console.print(
            f"targets {verdict}: AUC {goal['auc_ranker_live']} (>= {goal['auc_target']}), "
            f"NDCG@10 lift over popularity {goal['ndcg_lift_over_popularity']} (>= {goal['ndcg_lift_target']})"
        )


def _write_json(report: dict[str, Any], path: Path | None) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
        console.print(f"report written to {path}")


@app.command()
def train(
    dataset: DatasetOption = "synthetic",
    users: UsersOption = 1000,
    items: ItemsOption = 500,
    seconds: SecondsOption = 10_800.0,
    rate: RateOption = 20.0,
    seed: SeedOption = 0,
    new_items_per_minute: NewItemsOption = 1.0,
    events: EventsOption = None,
    topic: TopicOption = None,
    bootstrap: Annotated[str | None, typer.Option(help="Kafka bootstrap servers for --topic.")] = None,
    catalog: CatalogOption = None,
    cache_dir: CacheOption = Path(".freshrank/datasets"),
    registry: Annotated[Path, typer.Option(help="Model registry directory.")] = Path(".freshrank/models"),
    name: Annotated[str, typer.Option(help="Model name in the registry.")] = "ranker",
    serving_trees: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Register only the first N trees: scoring is linear in trees; the report adds the full model's "
            "metrics as full_model (a number >= the trained trees keeps them all).",
        ),
    ] = SERVING_TREES,
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write the test report here.")] = None,
) -> None:
    """Replay events into a point-in-time dataset, train the LightGBM ranker, export ONNX, check parity, register."""
    from training.errors import TrainingError
    from training.evaluate import run_experiment
    from training.ranker import TrainConfig
    from training.registry import register

    try:
        with _progress() as progress:
            source = _training_source(
                dataset, users=users, items=items, seconds=seconds, rate=rate, seed=seed, events=events,
                topic=topic, bootstrap=bootstrap, catalog=catalog, cache_dir=cache_dir, progress=progress,
                new_items_per_minute=new_items_per_minute,
            )  # fmt: skip
            experiment = run_experiment(
                source, train_config=TrainConfig(serving_trees=serving_trees), progress=_step_progress(progress)
            )
        report = experiment.report
        registered = register(registry, experiment.onnx, experiment.model_spec(source.name), name)
    except TrainingError as error:
        raise fail(str(error)) from None
    _print_report(report)
    console.print(
        f"ONNX parity: max |LightGBM - ONNX| = {experiment.parity_max_abs_diff:.2e} (< 1e-5)\n"
        f"[green]registered[/] {name} version {registered.metadata.version} in {registered.directory}"
    )
    _write_json(report, json_path)


@app.command("eval")
def evaluate_command(
    dataset: DatasetOption = "synthetic",
    users: UsersOption = 1000,
    items: ItemsOption = 500,
    seconds: SecondsOption = 10_800.0,
    rate: RateOption = 20.0,
    seed: SeedOption = 0,
    new_items_per_minute: NewItemsOption = 1.0,
    events: EventsOption = None,
    topic: TopicOption = None,
    bootstrap: Annotated[str | None, typer.Option(help="Kafka bootstrap servers for --topic.")] = None,
    catalog: CatalogOption = None,
    cache_dir: CacheOption = Path(".freshrank/datasets"),
    registry: Annotated[Path, typer.Option(help="Model registry directory (with --model-version).")] = Path(
        ".freshrank/models"
    ),
    name: Annotated[str, typer.Option(help="Model name in the registry.")] = "ranker",
    model_version: Annotated[
        int | None, typer.Option(help="Score with this registered model instead of training one on the train period.")
    ] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the report (JSON) here.")] = None,
    check_targets: Annotated[
        bool, typer.Option("--check-targets", help="Exit 1 unless AUC >= 0.75 and NDCG@10 >= 1.10 x popularity.")
    ] = False,
) -> None:
    """Popularity vs ranker (live / stale user features / no user features) vs oracle on the test period."""
    from training.dataset import DatasetConfig, build_dataset
    from training.errors import TrainingError
    from training.evaluate import evaluate, run_experiment, split_dataset, targets
    from training.ranker import OnnxRanker
    from training.registry import load

    try:
        with _progress() as progress:
            source = _training_source(
                dataset, users=users, items=items, seconds=seconds, rate=rate, seed=seed, events=events,
                topic=topic, bootstrap=bootstrap, catalog=catalog, cache_dir=cache_dir, progress=progress,
                new_items_per_minute=new_items_per_minute,
            )  # fmt: skip
            update = _step_progress(progress)
            if model_version is None:
                report = run_experiment(source, progress=update).report
            else:
                model = load(registry, name, model_version)
                rows = build_dataset(
                    source.events, source.catalog, progress=lambda d, t: update("replaying events", d, t)
                )
                _, _, _, test = split_dataset(rows, 0.2, 0.2, DatasetConfig().attribution_window_ms)
                meta = model.metadata.spec
                scorer = OnnxRanker(model.model_path.read_bytes(), meta.input_name, meta.output_name, meta.output_index)
                report = evaluate(scorer, test, source.truth)
                report["targets"] = targets(report)
                report["model"] = {"name": name, "version": model.metadata.version}
    except TrainingError as error:
        raise fail(str(error)) from None
    report["dataset"] = source.name
    _print_report(report)
    _write_json(report, json_path)
    if check_targets and not report["targets"]["met"]:
        raise typer.Exit(1)


datasets_app = typer.Typer(help="External datasets for evaluation (cached, never committed).", no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")


@datasets_app.command("fetch")
def datasets_fetch(
    dataset: Annotated[str, typer.Argument(help="Only ml-100k for now.")],
    cache_dir: CacheOption = Path(".freshrank/datasets"),
) -> None:
    """Fetch MovieLens-100k from the recbole wheel on PyPI (sha256-pinned) and convert it to an event log."""
    from training.errors import TrainingError
    from training.movielens import RECBOLE_VERSION, fetch_ml100k

    if dataset != "ml-100k":
        raise fail(f"unknown dataset {dataset!r}; available: ml-100k")
    try:
        with console.status(f"downloading recbole=={RECBOLE_VERSION} and converting ml-100k..."):
            out = fetch_ml100k(cache_dir)
    except TrainingError as error:
        raise fail(str(error)) from None
    console.print(f"ml-100k ready: {out / 'events.parquet'} and {out / 'catalog.parquet'}")


def resolve_redis(explicit: str | None) -> str:
    """Explicit option, else FRESHRANK_REDIS_ADDRESS, else the running local stack's Redis, else 127.0.0.1:6379."""
    if explicit:
        return explicit
    from_env = os.environ.get("FRESHRANK_REDIS_ADDRESS")
    if from_env:
        return from_env
    state = read_state(stack_settings(None))
    if state and "redis" in state.get("components", {}):
        return str(state["components"]["redis"]["address"])
    return "127.0.0.1:6379"


@app.command()
def candidates(
    dataset: DatasetOption = "log",
    events: EventsOption = None,
    topic: TopicOption = None,
    bootstrap: Annotated[str | None, typer.Option(help="Kafka bootstrap servers for --topic.")] = None,
    catalog: CatalogOption = None,
    users: UsersOption = 1000,
    items: ItemsOption = 500,
    seconds: SecondsOption = 3600.0,
    rate: RateOption = 20.0,
    seed: SeedOption = 0,
    cache_dir: CacheOption = Path(".freshrank/datasets"),
    redis_address: Annotated[
        str | None, typer.Option("--redis", help="Redis host:port [env FRESHRANK_REDIS_ADDRESS; default local stack].")
    ] = None,
    ttl: Annotated[int, typer.Option(min=1, help="Seconds before a written list expires.")] = 24 * 3600,
    per_user: Annotated[int, typer.Option(min=1, max=500, help="Candidates per user.")] = 500,
    now_ms: Annotated[int | None, typer.Option(help="Generate as of this event time (default: newest event).")] = None,
) -> None:
    """Co-visitation + new + popular candidate lists per user, and popular fallbacks, written to Redis with a TTL."""
    from training.candidates import CandidateConfig, CandidateWriter, generate_candidates
    from training.errors import TrainingError

    if dataset == "log" and events is None and topic is None:
        topic = "interactions"
    writer = CandidateWriter(resolve_redis(redis_address), ttl_s=ttl)
    try:
        with _progress() as progress:
            source = _training_source(
                dataset, users=users, items=items, seconds=seconds, rate=rate, seed=seed, events=events,
                topic=topic, bootstrap=bootstrap, catalog=catalog, cache_dir=cache_dir, progress=progress,
            )  # fmt: skip
            with console.status("counting co-visitation and popularity..."):
                lists = generate_candidates(source.events, source.catalog, now_ms, CandidateConfig(per_user=per_user))
            writer.open()
            try:
                update = _step_progress(progress)
                written = writer.write(lists, lambda done, total: update("writing to Redis", done, total))
            finally:
                writer.close()
    except TrainingError as error:
        raise fail(str(error)) from None
    sizes = [len(ids) for ids in lists.users.values()]
    console.print(
        f"wrote {written} keys to {writer.address} (TTL {ttl} s): {len(lists.users)} users "
        f"(median {sorted(sizes)[len(sizes) // 2] if sizes else 0} candidates), "
        f"{len(lists.popular_by_country)} countries, {len(lists.popular_global)} global popular items"
    )


schema_app = typer.Typer(
    help="The event schema in a Confluent-compatible schema registry (FRESHRANK_SCHEMA_REGISTRY_URL).",
    no_args_is_help=True,
)
app.add_typer(schema_app, name="schema")
RegistryUrl = Annotated[
    str | None, typer.Option("--url", help="Registry URL [env FRESHRANK_SCHEMA_REGISTRY_URL]; auth/TLS from env.")
]
Subject = Annotated[str, typer.Option(help="Subject (TopicNameStrategy: <topic>-value).")]


def _registry(url: str | None) -> Any:
    from sdk.schema_registry import SchemaRegistrySettings, connect

    settings = SchemaRegistrySettings()
    if url:
        settings = settings.model_copy(update={"url": url})
    if not settings.enabled:
        raise fail("no schema registry: pass --url or set FRESHRANK_SCHEMA_REGISTRY_URL")
    return connect(settings)


def _read_avsc(path: Path) -> dict[str, Any]:
    import avro.schema
    import fastavro

    try:
        definition = json.loads(path.read_text())
        # Both parsers: fastavro decodes the events, Avro's own checks compatibility.
        fastavro.parse_schema(definition)
        avro.schema.parse(json.dumps(definition))
    except OSError as error:
        raise fail(f"cannot read {path}: {error.strerror}", code=2) from None
    except ValueError as error:
        raise fail(f"{path} is not valid JSON: {error}", code=2) from None
    except Exception as error:  # fastavro's SchemaParseException and friends
        raise fail(f"{path} is not a valid Avro schema: {error}", code=2) from None
    if not isinstance(definition, dict):
        raise fail(f"{path} is not an Avro record schema", code=2)
    return definition


@schema_app.command("register")
def schema_register(url: RegistryUrl = None, subject: Subject = "interactions-value") -> None:
    """Register every version of the event schema in the repo, oldest first; print the id of each."""
    from confluent_kafka.schema_registry import Schema
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    from features.codec import SCHEMA_DIR

    client = _registry(url)
    index = json.loads((SCHEMA_DIR / "registry.json").read_text())
    for version in sorted(index["subjects"]["interactions-value"], key=lambda v: v["id"]):
        text = (SCHEMA_DIR / version["file"]).read_text()
        try:
            schema_id = client.register_schema(subject, Schema(json.dumps(json.loads(text)), "AVRO"))
        except SchemaRegistryError as error:
            raise fail(f"the registry refused {version['file']} under {subject}: {error.error_message}") from None
        except Exception as error:
            raise fail(f"cannot reach the schema registry: {error}") from None
        console.print(f"{version['file']}: subject {subject}, schema id {schema_id}")


@schema_app.command("check")
def schema_check(
    schema: Annotated[Path, typer.Argument(help="The new .avsc to check before it ships.")],
    url: RegistryUrl = None,
    subject: Subject = "interactions-value",
) -> None:
    """BACKWARD check: can a reader with SCHEMA read what the latest schema wrote? Exit 1 with the reasons if not.

    Checked against the newest schema in the repo, and, with a registry URL, against the
    subject's latest version there and by the registry itself (it applies the subject's
    configured level).
    """
    from features.codec import SchemaRegistry, compatibility_problem

    new = _read_avsc(schema)
    problems: list[str] = []
    local = SchemaRegistry().latest()
    problem = compatibility_problem(local.definition, new)
    where = f"repo schema id {local.schema_id}"
    console.print(f"{where}: " + ("[green]compatible[/]" if problem is None else f"[red]incompatible[/]: {problem}"))
    if problem is not None:
        problems.append(f"{where}: {problem}")
    if url or os.environ.get("FRESHRANK_SCHEMA_REGISTRY_URL"):
        problems.extend(_check_in_registry(_registry(url), subject, new))
    if problems:
        raise fail(f"{schema} is not BACKWARD compatible:\n" + "\n".join(problems))
    console.print(f"[green]{schema} is BACKWARD compatible[/]")


def _check_in_registry(client: Any, subject: str, new: dict[str, Any]) -> list[str]:
    from confluent_kafka.schema_registry import Schema
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    from features.codec import compatibility_problem

    try:
        latest = client.get_latest_version(subject)
    except SchemaRegistryError as error:
        if error.http_status_code == 404:
            console.print(f"registry: subject {subject} has no version yet; nothing to be compatible with")
            return []
        raise fail(f"schema registry: {error.error_message}") from None
    except Exception as error:
        raise fail(f"cannot reach the schema registry: {error}") from None
    where = f"registry {subject} version {latest.version} (id {latest.schema_id})"
    problem = compatibility_problem(json.loads(latest.schema.schema_str), new)
    try:
        accepted = client.test_compatibility(subject, Schema(json.dumps(new), "AVRO"))
    except SchemaRegistryError as error:
        raise fail(f"schema registry compatibility test failed: {error.error_message}") from None
    verdict = "[green]compatible[/]" if problem is None else f"[red]incompatible[/]: {problem}"
    console.print(f"{where}: {verdict}; the registry says {'compatible' if accepted else 'incompatible'}")
    problems = [f"{where}: {problem}"] if problem is not None else []
    if not accepted and problem is None:
        problems.append(f"{where}: the registry refuses it (its compatibility level may be stricter than BACKWARD)")
    return problems


features_app = typer.Typer(
    help="Streaming features declared with Feast (KafkaSource + StreamFeatureView) that the stream job computes.",
    no_args_is_help=True,
)
app.add_typer(features_app, name="features")


@features_app.command("check")
def features_check(
    repo: Annotated[Path | None, typer.Option(help="Feast repo to read (default: freshrank's feature_repo/).")] = None,
    topic: Annotated[str | None, typer.Option(help="Topic the stream job reads [env FRESHRANK_STREAM_TOPIC].")] = None,
) -> None:
    """What the stream job will compute from the repo's stream feature views, and what it refuses (exit 1) and why.

    Run it before `feast apply`: the job refuses at start whatever this command refuses.
    """
    from feature_repo.declared import check, drafts_from_repo
    from feature_repo.store import REPO_PATH
    from streaming.settings import StreamSettings

    path = repo or REPO_PATH
    if not (path / "feature_store.yaml").is_file():
        raise fail(f"{path} is not a Feast repo (no feature_store.yaml)", code=2)
    try:
        drafts = drafts_from_repo(path)
    except Exception as error:  # the user's Python: an import error, a Feast ValueError
        raise fail(f"cannot load the Feast repo {path}: {type(error).__name__}: {error}", code=2) from None
    accepted, refused = check(drafts, topic or StreamSettings().topic)
    for view in accepted:
        kept = "all events" if view.event_types is None else "event types " + ", ".join(sorted(view.event_types))
        console.print(f"[green]{view.name}[/]: keyed by {view.entity_key}, {kept}")
        for agg in view.aggregations:
            w = agg.window
            console.print(
                f"  {agg.name} = {agg.function}({agg.column}) over {w.length_ms // 1000} s "
                f"in {w.n_buckets} buckets of {w.bucket_ms // 1000} s ({agg.dtype})"
            )
    if not drafts:
        console.print(f"no stream feature views in {path}")
    if refused:
        for refusal in refused:
            console.print(f"[red]refused[/] {refusal}")
        raise fail(f"{len(refused)} problem(s): the stream job would refuse to start; fix them before `feast apply`")
    console.print(f"[green]{len(accepted)} declared view(s) ok[/]")


topics_app = typer.Typer(help="Inspect the Kafka topics (works where old kcat builds cannot).", no_args_is_help=True)
app.add_typer(topics_app, name="topics")


@topics_app.command("tail")
def topics_tail(
    topic: Annotated[str, typer.Argument(help="e.g. interactions or interactions.dlq")],
    last: Annotated[int, typer.Option("--last", "-n", min=0, help="Records per partition from the end.")] = 10,
    from_beginning: Annotated[bool, typer.Option("--from-beginning", help="Every record still in the topic.")] = False,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep waiting for new records (Ctrl-C stops).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    bootstrap: Annotated[str | None, typer.Option(help="Kafka bootstrap servers (default: the local stack).")] = None,
    state_dir: StateDir = None,
) -> None:
    """Print key, headers and the decoded event of each record; for the DLQ, its reason header.

    Reads with manual partition assignment and never commits offsets. Values are decoded
    with the schema registry at FRESHRANK_SCHEMA_REGISTRY_URL when set, else the repo's.
    """
    from cli.topics import tail
    from sdk.schema_registry import SchemaRegistrySettings, consumer_codec
    from sdk.settings import KafkaSettings

    settings = KafkaSettings(bootstrap_servers=resolve_bootstrap(bootstrap, state_dir))
    codec = consumer_codec(SchemaRegistrySettings())
    records = tail(
        {**settings.client_config(), "client.id": "freshrank-topics-tail"},
        topic,
        codec,
        last=None if from_beginning else last,
        from_beginning=from_beginning,
        follow=follow,
    )
    shown = 0
    try:
        for record in records:
            shown += 1
            if as_json:
                print(json.dumps(record.as_json()), flush=True)  # noqa: T201 - the CLI's output
                continue
            headers = " ".join(f"{k}={v}" for k, v in record.headers.items())
            line = f"[bold]{topic}[/]/{record.partition}@{record.offset} key={record.key}"
            console.print(line + (f" headers: {headers}" if headers else ""), highlight=False)
            if record.event is not None:
                console.print(f"  {json.dumps(record.event)}", highlight=False, soft_wrap=True)
            else:
                console.print(f"  [yellow]value does not decode:[/] {record.problem}", highlight=False)
    except LookupError as error:
        raise fail(str(error)) from None
    except KeyboardInterrupt:
        pass
    if not as_json:
        errors.print(f"{shown} records from {topic} at {settings.bootstrap_servers}")
