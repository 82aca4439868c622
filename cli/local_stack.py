"""`freshrank up`, `down` and `status`: the embedded local stack (stack/) from the command line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Annotated, Any

import typer
from rich.table import Table

from cli.options import (
    StateDir,
    console,
    fail,
    stack_settings,
)
from stack.components import java_version, local_components
from stack.health import component_health, flink_detail, flink_problems, stream_detail, stream_problems
from stack.ports import split_address, wait_ports_free
from stack.processes import Component, pid_alive, stop_group, tail
from stack.settings import StackError, StackSettings
from stack.supervisor import Supervisor, read_state

app = typer.Typer()


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
    split_operators: Annotated[
        bool | None,
        typer.Option(
            "--split-operators/--no-split-operators",
            help="With --task-managers 2 (or another even N): item features on TaskManagers of their own, the job at "
            "parallelism N/2; each operator gets an interpreter (a GIL) to itself (README, 'Scale-out') "
            "[env FRESHRANK_STREAM_SPLIT_OPERATORS].",
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
        stream_split_operators=split_operators,
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
    ports = {c.name: split_address(c.address)[1] for c in components}
    ports.update({f"{c.name}-ui": split_address(c.dashboard)[1] for c in components if c.dashboard})
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
        "--split-operators" if settings.stream_split_operators else "--no-split-operators",
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
