"""Builds and runs the PyFlink stream job: Kafka -> features -> Feast online store (DESIGN.md section 4).

`run(settings)` starts a local mini-cluster in this process (thread mode),
resuming from the newest retained checkpoint under `checkpoint_dir` if there is
one. In production, and locally with `freshrank stream --task-managers N`
(streaming/cluster.py), the same `build()` runs on a Flink cluster from
`streaming.job_main`.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from pyflink.common import Configuration, Types, WatermarkStrategy
from pyflink.datastream import StreamExecutionEnvironment
from pyflink.datastream.connectors.number_seq import NumberSequenceSource

from features.declared import DeclaredView
from streaming.errors import DeclaredViewsRefused
from streaming.flink_rest import JOB_NAME as JOB_NAME
from streaming.operators import (
    ITEM_EVENTS,
    ItemFeaturesByBucket,
    Metronome,
    PartitionFanOut,
    UserFeaturesByPartition,
)
from streaming.settings import StreamSettings, split_problem

log = logging.getLogger("freshrank.stream")


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest completed checkpoint (a `chk-N` dir holding `_metadata`) of any earlier run."""
    completed = [m.parent for m in checkpoint_dir.glob("*/chk-*/_metadata")]
    if not completed:
        return None
    return max(completed, key=lambda path: (path.stat().st_mtime, int(path.name.split("-")[1])))


def flink_options(settings: StreamSettings, restore_from: Path | None) -> dict[str, str]:
    """The mini-cluster's Flink configuration as plain strings (no JVM needed to read it)."""
    values = {
        # Thread mode runs the Python operators inside the JVM (pemja): no gRPC round trip
        # per bundle and per state miss as in process mode, and processing-time timers
        # restored from a checkpoint fire (in process mode some were lost after a restore).
        "python.execution-mode": "thread",
        "python.executable": sys.executable,
        "python.client.executable": sys.executable,
        "execution.checkpointing.interval": f"{settings.checkpoint_interval_ms} ms",
        "execution.checkpointing.mode": "EXACTLY_ONCE",
        "execution.checkpointing.dir": settings.checkpoint_dir.resolve().as_uri(),
        "execution.checkpointing.externalized-checkpoint-retention": "RETAIN_ON_CANCELLATION",
        "execution.checkpointing.num-retained": "3",
        # A long Redis outage blocks the sink and so the checkpoints: don't fail the job for it.
        "execution.checkpointing.tolerable-failed-checkpoints": "1000",
        "restart-strategy.type": "exponential-delay",
        "state.backend.type": "hashmap",
        "parallelism.default": str(settings.parallelism),
    }
    if restore_from is not None:
        values["execution.state-recovery.path"] = restore_from.resolve().as_uri()
    # The mini-cluster always serves the dashboard and REST API (flink-dist ships them); left
    # alone it listens on every interface at a random port. Bind it where we say, and on a
    # fixed port when set: that is what `freshrank up` prints and `freshrank status` reads.
    values["rest.bind-address"] = settings.flink_ui_bind_address
    values["rest.address"] = settings.flink_ui_bind_address
    if settings.flink_ui_port:
        values["rest.port"] = str(settings.flink_ui_port)
    return values


def flink_configuration(settings: StreamSettings, restore_from: Path | None) -> Configuration:
    config = Configuration()
    for key, value in flink_options(settings, restore_from).items():
        config.set_string(key, value)
    return config


def dashboard_url(settings: StreamSettings) -> str | None:
    """Where the local mini-cluster serves the Flink dashboard, or None when its port is left to Flink."""
    if not settings.flink_ui_port:
        return None
    host = settings.flink_ui_bind_address
    # A wildcard bind answers on loopback too; a URL must name an address one can connect to.
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{settings.flink_ui_port}"


def build(env: StreamExecutionEnvironment, settings: StreamSettings, declared: tuple[DeclaredView, ...] = ()) -> None:
    """Add the job's operators to `env`; see streaming/operators.py for each step. `declared`: the Feast
    stream feature views to compute beside the built-ins (`load_declared_views`)."""
    env.set_buffer_timeout(settings.buffer_timeout_ms)
    # Ticks, evenly spaced: Flink's datagen source emits each second's rows at once and then
    # sleeps, which held every event up to a second before it was read (the ~1 s freshness floor).
    ticks = (
        env.from_source(NumberSequenceSource(0, 2**62), WatermarkStrategy.no_watermarks(), "ticks")
        .uid("ticks")
        .map(Metronome(settings.ticks_per_second), output_type=Types.LONG())
        .name("metronome")
        .uid("metronome")
    )
    # (partition, partition count, item buckets, topic id), from one keyed instance that holds the job's layout.
    poll_type = Types.TUPLE([Types.INT(), Types.INT(), Types.INT(), Types.STRING()])
    polls = (
        ticks.key_by(lambda _tick: 0, key_type=Types.INT())
        .process(PartitionFanOut(settings), output_type=poll_type)
        .name("partition fan-out")
        .uid("partition-fan-out")
    )
    # Each feature operator writes the rows it makes to Redis itself; only item events flow on.
    user_features = (
        polls.key_by(lambda poll: poll[0], key_type=Types.INT())
        .process(UserFeaturesByPartition(settings, declared), output_type=Types.PICKLED_BYTE_ARRAY())
        .name("UserFeaturesByPartition")
        .uid("user-features-by-partition")
    )
    item_features = (
        user_features.get_side_output(ITEM_EVENTS)
        .key_by(lambda batch: batch.bucket, key_type=Types.INT())
        .process(ItemFeaturesByBucket(settings, declared), output_type=Types.PICKLED_BYTE_ARRAY())
        .name("ItemFeaturesByBucket")
        .uid("item-features-by-bucket")
    )
    if settings.split_operators:
        # Slots of its own, so with one slot per TaskManager the item operator runs in another JVM, under
        # another GIL, than the readers and user features (README, "Scale-out"). State is unchanged:
        # checkpoints restore across the switch.
        item_features.slot_sharing_group("item-features")
    # Dead letters are written (and confirmed) inside UserFeaturesByPartition, before it saves its offset.


def load_declared_views(settings: StreamSettings) -> tuple[DeclaredView, ...]:
    """The stream feature views `feast apply` registered; raises DeclaredViewsRefused if any cannot run."""
    from feature_repo.declared import load_declared

    accepted, refused = load_declared(settings.redis_connection_string(), settings.feast_registry, settings.topic)
    if refused:
        raise DeclaredViewsRefused(refused)
    for view in accepted:
        log.info(
            "declared view %s (by %s): %s",
            view.name,
            view.entity_key,
            ", ".join(f"{a.name}={a.function}({a.column})" for a in view.aggregations),
        )
    return tuple(accepted)


def run(settings: StreamSettings) -> None:
    """Run the job until killed, resuming from the newest retained checkpoint if one exists."""
    problem = split_problem(0, settings.split_operators)
    if problem is not None:  # the mini-cluster would wait for a second slot for ever
        raise ValueError(problem)
    # PyFlink starts its Python workers with whatever `python` is first on PATH.
    venv_bin = str(Path(sys.executable).parent)
    if not os.environ.get("PATH", "").startswith(venv_bin):
        os.environ["PATH"] = venv_bin + os.pathsep + os.environ.get("PATH", "")
    settings.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    # The operators log through Flink's log file; without this it lands inside site-packages.
    if "FLINK_LOG_DIR" not in os.environ:
        settings.flink_log_dir.mkdir(parents=True, exist_ok=True)
        os.environ["FLINK_LOG_DIR"] = str(settings.flink_log_dir.resolve())
    log.info("Flink and operator logs: %s", os.environ["FLINK_LOG_DIR"])
    dashboard = dashboard_url(settings)
    if dashboard is not None:
        log.info("Flink dashboard and REST API: %s", dashboard)
    restore_from = latest_checkpoint(settings.checkpoint_dir)
    if restore_from is not None:
        log.info("resuming from checkpoint %s", restore_from)
    declared = load_declared_views(settings)  # before Flink starts: a refused view stops the job here
    env = StreamExecutionEnvironment.get_execution_environment(flink_configuration(settings, restore_from))
    build(env, settings, declared)
    env.execute(JOB_NAME)
