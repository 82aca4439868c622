"""`freshrank bench freshness`: the whole path SDK -> broker -> job -> Redis, against the loop a user would write.

Both runs get the same synthetic events, published through the SDK at the same
rate to their own topic, on a broker and Redis started for the benchmark:

- `freshrank`: the PyFlink job (`freshrank stream`), freshness measured by the
  job when a row became readable (after the Redis pipeline returned).
- `baseline`: one plain confluent-kafka consumer loop computing the same
  features with the same `features/` code and calling Feast `push` (online).

Freshness = time the row is readable minus the event time of the newest event
in it. Loss = events sent minus events the features include.
"""

from __future__ import annotations

import bisect
import itertools
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import psutil  # type: ignore[import-untyped]

from sdk.clock import wall_clock_ms
from sdk.publisher import EventPublisher, publish_paced
from sdk.settings import KafkaSettings
from simulator.catalog import read_catalog, write_catalog
from simulator.config import WorldConfig
from simulator.world import SyntheticWorld
from stack.components import broker_component, redis_component, stream_component
from stack.health import scrape, scrape_all
from stack.ports import free_port, free_ports
from stack.processes import running
from stack.settings import StackSettings


def quantiles(samples_ms: list[float]) -> dict[str, float]:
    if not samples_ms:
        return {"p50": float("nan"), "p99": float("nan"), "max": float("nan")}
    ordered = sorted(samples_ms)

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)

    return {"p50": pick(0.5), "p99": pick(0.99), "max": round(ordered[-1], 1)}


FRESHNESS_BUCKET = 'freshrank_stream_freshness_seconds_bucket{le="'
FRESHNESS_COUNT = "freshrank_stream_freshness_seconds_count"


def histogram_cdf(after: dict[str, float], before: dict[str, float]) -> list[list[float]]:
    """The job's freshness distribution between two scrapes of its histogram, as [[bound ms, share of rows
    at most that stale], ...] at the histogram's bucket bounds (+Inf left out); [] if no row was written."""
    total = after.get(FRESHNESS_COUNT, 0.0) - before.get(FRESHNESS_COUNT, 0.0)
    if total <= 0:
        return []
    cdf = []
    for name, value in after.items():
        bound = name[len(FRESHNESS_BUCKET) :].split('"')[0] if name.startswith(FRESHNESS_BUCKET) else "+Inf"
        if bound != "+Inf":
            cdf.append([round(1000 * float(bound), 1), round((value - before.get(name, 0.0)) / total, 5)])
    return sorted(cdf)


def samples_cdf(samples_ms: list[float], bounds_ms: list[float]) -> list[list[float]]:
    """The same form as `histogram_cdf` from raw samples, at the given bounds, so the two plot side by side."""
    if not samples_ms:
        return []
    ordered = sorted(samples_ms)
    return [[bound, round(bisect.bisect_right(ordered, bound) / len(ordered), 5)] for bound in bounds_ms]


def create_topic(bootstrap: str, name: str, partitions: int = 8) -> None:
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.cimpl import NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})  # must outlive the future
    admin.create_topics([NewTopic(name, partitions, 1)])[name].result(30)


def world(rate: float, seconds: float, seed: int, start_ms: int) -> SyntheticWorld:
    config = WorldConfig(
        users=max(1000, int(rate)),
        items=2000,
        seed=seed,
        rate=rate,
        seconds=seconds,
        start_ms=start_ms,
        record_ground_truth=False,
    )
    return SyntheticWorld(config)


def publish(bootstrap: str, topic: str, rate: float, seconds: float, seed: int) -> tuple[int, float]:
    """Publish the world paced to real time; returns (events sent, monotonic time publishing started)."""
    first_ms = wall_clock_ms() + 3000  # building the world must not make the first events late
    events = world(rate, seconds, seed, first_ms).events()
    # When the first event goes out, not now: the wait until first_ms is no time the job had events to apply.
    started = time.monotonic() + max(0, first_ms - wall_clock_ms()) / 1000
    with EventPublisher(KafkaSettings(bootstrap_servers=bootstrap, topic=topic)) as publisher:
        sent = publish_paced(publisher, events, first_ms, live=True)
    return sent, started


def publish_warm_up(bootstrap: str, topic: str, seed: int, count: int = 8) -> int:
    """A few events of users outside the measured world, sent at once; returns how many."""
    now = wall_clock_ms()
    events = [
        replace(event, user_id=f"warm-up-{n}", event_id=f"warm-up-{seed}-{n}")
        for n, event in enumerate(itertools.islice(world(count, 1, seed + 1, now).events(), count))
    ]
    with EventPublisher(KafkaSettings(bootstrap_servers=bootstrap, topic=topic)) as publisher:
        for event in events:
            publisher.publish(event)
    return len(events)


def wait_until(done: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if done():
            return True
        time.sleep(0.5)
    return False


# --- freshrank: the PyFlink job ---------------------------------------------------


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process and all its children (the job's JVM is a child of `freshrank stream`)."""
    if pid is None:
        return 0.0
    try:
        root = psutil.Process(pid)
        total = 0.0
        for process in [root, *root.children(recursive=True)]:
            times = process.cpu_times()
            total += times.user + times.system
        return total
    except psutil.Error:
        return 0.0


_DECLARED_FORMS = (
    ("watch_ms", "sum"),
    ("item_id", "count"),
    ("watch_ms", "mean"),
    ("position", "max"),
    ("item_id", "count_distinct"),
    ("position", "min"),
)
_DECLARED_WINDOWS = ((600, 10), (3600, 60), (300, 5))  # (time_window, slide_interval) in seconds


def declared_repo(directory: Path, topic: str, aggregations: int) -> Path:
    """A copy of freshrank's Feast repo plus `aggregations` declared aggregations over `topic`, split
    between a user view and an item view, cycling through every function and three windows."""
    from feature_repo.store import REPO_PATH

    repo = directory / "feature_repo"
    shutil.copytree(REPO_PATH, repo, ignore=shutil.ignore_patterns("__pycache__", "data"))
    views: dict[str, list[str]] = {"user": [], "item": []}
    for n in range(aggregations):
        column, function = _DECLARED_FORMS[n % len(_DECLARED_FORMS)]
        window, slide = _DECLARED_WINDOWS[n % len(_DECLARED_WINDOWS)]
        views["user" if n % 2 == 0 else "item"].append(
            f"    Aggregation(column={column!r}, function={function!r}, time_window=timedelta(seconds={window}), "
            f"slide_interval=timedelta(seconds={slide}), name='bench_{n}'),"
        )
    lines = [
        "from datetime import timedelta",
        "from feast import Field, FileSource, KafkaSource, StreamFeatureView",
        "from feast.aggregation import Aggregation",
        "from feast.data_format import AvroFormat",
        "from feast.types import Float64, Int64",
        "from definitions import item, user",
        f"source = KafkaSource(name='bench_stream', kafka_bootstrap_servers='127.0.0.1:9092', topic={topic!r},",
        "    timestamp_field='event_time', message_format=AvroFormat(schema_json=''),",
        "    batch_source=FileSource(name='bench_log', path='data/bench.parquet', timestamp_field='event_time'))",
    ]
    for entity, aggs in views.items():
        if not aggs:
            continue
        names = [line.split("name='")[1].split("'")[0] for line in aggs]
        dtypes = ["Float64" if "'mean'" in line else "Int64" for line in aggs]
        schema = ", ".join(f"Field(name={n!r}, dtype={d})" for n, d in zip(names, dtypes, strict=True))
        lines += [
            f"bench_{entity}_declared = StreamFeatureView(name='bench_{entity}_declared', entities=[{entity}],",
            "    source=source, timestamp_field='event_time', ttl=timedelta(days=1),",
            f"    schema=[{schema}],",
            "    aggregations=[",
            *aggs,
            "    ])",
        ]
    (repo / "bench_declared.py").write_text("\n".join(lines) + "\n")
    return repo


def machine_busy_cores(before: Any, after: Any) -> float:
    """Cores busy on average between two `psutil.cpu_times()` samples (every process, not just the job's)."""

    def spent(times: Any) -> tuple[float, float]:
        fields = times._asdict()
        # Linux counts guest time inside user and nice already.
        total = sum(fields.values()) - fields.get("guest", 0.0) - fields.get("guest_nice", 0.0)
        return fields["idle"] + fields.get("iowait", 0.0), total

    idle_before, total_before = spent(before)
    idle_after, total_after = spent(after)
    idle, total = idle_after - idle_before, total_after - total_before
    cores = os.cpu_count() or 1
    return cores * (1.0 - idle / total) if total > 0 else 0.0


def run_freshrank(
    settings: StackSettings,
    broker: Any,
    redis: Any,
    rate: float,
    seconds: float,
    seed: int,
    log: Callable[[str], None],
    topic: str = "bench-freshrank",
    task_managers: int = 0,
    declared: int = 0,
    split_operators: bool = False,
) -> dict[str, Any]:
    """The job against `rate` events/s for `seconds`: in a mini-cluster, or (task_managers >= 1) on a local
    standalone cluster of that many TaskManagers at parallelism task_managers (half of it with
    `split_operators`, item features on TaskManagers of their own)."""
    create_topic(broker.address, topic)
    metrics_port = free_ports(max(1, task_managers))  # TaskManager i serves /metrics on metrics_port + i
    repo = declared_repo(settings.state_dir, topic, declared) if declared else None
    job = stream_component(settings, broker, redis, metrics_port, task_managers=task_managers, feature_repo=repo)
    addresses = job.metrics or [job.address]
    catalog = settings.state_dir / "catalog.parquet"
    write_catalog(world(rate, seconds, seed, wall_clock_ms()).catalog(), catalog)
    job.env.update(
        {
            "FRESHRANK_STREAM_TOPIC": topic,
            "FRESHRANK_STREAM_CATALOG_PATH": str(catalog.resolve()),
            # Quantiles over the whole run, not only the last minute.
            "FRESHRANK_STREAM_FRESHNESS_WINDOW_S": str(seconds * 20 + 600),
            "FRESHRANK_STREAM_SPLIT_OPERATORS": str(split_operators).lower(),
        }
    )
    with running(job, settings.state_dir / "logs"):

        def admitted() -> float:
            series = scrape_all(addresses) or {}
            return series.get('freshrank_stream_events_total{outcome="admitted"}', 0.0)

        # The job serves /metrics once its first operator is open, before every operator is: without a
        # warm-up its first seconds of start-up were counted as the first events' staleness.
        warm_up = publish_warm_up(broker.address, topic, seed)
        if not wait_until(lambda: admitted() >= warm_up, timeout_s=120.0):
            raise RuntimeError("the stream job did not admit the warm-up events within 120 s")
        log(f"freshrank: publishing {rate:.0f} events/s for {seconds:.0f} s")
        job_pid = job.process.pid if job.process is not None else None
        cpu_before = cpu_seconds(job_pid)
        machine_before = psutil.cpu_times()
        histogram_before = scrape_all(addresses) or {}
        sent, started = publish(broker.address, topic, rate, seconds, seed)
        wait_until(lambda: admitted() >= sent + warm_up, timeout_s=max(120.0, seconds * 10))
        caught_up = time.monotonic()
        job_cpu = cpu_seconds(job_pid) - cpu_before
        machine_busy = machine_busy_cores(machine_before, psutil.cpu_times())
        time.sleep(2.5)  # the last coalesced rows, and a publish of the freshness gauges (once a second)
        # Summed over the TaskManagers; the freshness quantiles are the worst TaskManager's (see scrape_all).
        series = scrape_all(addresses) or {}
        per_process = [scrape(address) or {} for address in addresses]
    applied = int(series.get('freshrank_stream_events_total{outcome="admitted"}', 0)) - warm_up
    freshness = {
        "p50": 1000 * series.get('freshrank_stream_freshness_recent_seconds{quantile="0.5"}', float("nan")),
        "p99": 1000 * series.get('freshrank_stream_freshness_recent_seconds{quantile="0.99"}', float("nan")),
        "max": 1000 * series.get('freshrank_stream_freshness_recent_seconds{quantile="1"}', float("nan")),
    }
    return {
        "events_sent": sent,
        "events_applied": applied,
        "lost": sent - applied,
        "freshness_ms": {k: round(v, 1) for k, v in freshness.items()},
        # The rows of the measured span (warm-up left out) by the job's freshness histogram; for the plot.
        "freshness_cdf": histogram_cdf(series, histogram_before),
        # Events applied per second from the first publish until the job had caught up.
        "throughput_eps": round(applied / (caught_up - started), 1),
        "rows_measured": int(series.get("freshrank_stream_freshness_recent_samples", 0)),
        # CPU of the job's processes (client and JVM with its embedded Python) from the first publish to caught up.
        "cpu_s": round(job_cpu, 1),
        "cpu_us_per_event": round(1e6 * job_cpu / max(applied, 1), 1),
        # Cores in use by every process (broker, Redis, publisher, job, anything else) over the same span:
        # near the machine's count, the machine and not the job was the bound.
        "machine_busy_cores": round(machine_busy, 2),
        "job_cores": round(job_cpu / max(caught_up - started, 1e-9), 2),
        "task_managers": task_managers,
        "split_operators": split_operators,
        # Events each process admitted (one per TaskManager; the mini-cluster is one), warm-up included.
        "events_per_process": [
            int(one.get('freshrank_stream_events_total{outcome="admitted"}', 0)) for one in per_process
        ],
        # Kafka partitions each process read (its consumer-lag series): how evenly Flink's key groups split them.
        "partitions_per_process": [
            sorted(int(key.split('"')[1]) for key in one if key.startswith("freshrank_stream_consumer_lag{"))
            for one in per_process
        ],
        # With --declared N: compare cpu_us_per_event with a run without them for their cost per event.
        "declared_aggregations": declared,
        "rows_written": {
            name.split('view="')[1].rstrip('"}'): int(value)
            for name, value in series.items()
            if name.startswith("freshrank_stream_rows_written_total{")
        },
    }


# --- baseline: a consumer loop calling Feast push --------------------------------


def baseline_loop(bootstrap: str, topic: str, redis_address: str, registry: str, catalog: str, out: str) -> None:
    """What a Feast user writes without a stream engine: poll, aggregate in memory, `store.push` per batch."""
    import pandas as pd
    from confluent_kafka import Consumer, TopicPartition
    from feast.data_source import PushMode

    from feature_repo.definitions import AS_OF_FIELD
    from feature_repo.store import open_store
    from features.admission import Admission, AdmissionGate
    from features.codec import EventCodec
    from features.events import InteractionEvent
    from features.item import ItemFeatures
    from features.user import UserFeatures

    store = open_store(redis_address, registry)
    categories = {item.item_id: item.category for item in read_catalog(Path(catalog))}
    codec = EventCodec()
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-baseline", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(8)])
    gates: dict[str, AdmissionGate] = {}
    users: dict[str, UserFeatures] = {}
    items: dict[str, ItemFeatures] = {}
    freshness_ms: list[float] = []
    applied = 0
    stop = False

    def request_stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, request_stop)
    while not stop:
        batch = consumer.consume(1000, 0.05)
        touched_users: dict[str, int] = {}
        touched_items: dict[str, int] = {}
        for message in batch:
            if message.error() is not None:
                continue
            event = codec.decode(message.value())
            if not isinstance(event, InteractionEvent):
                continue
            gate = gates.setdefault(event.user_id, AdmissionGate(300_000))
            if gate.admit(event) is not Admission.ADMITTED:
                continue
            users.setdefault(event.user_id, UserFeatures.empty()).apply(event, categories.get(event.item_id))
            items.setdefault(event.item_id, ItemFeatures.empty()).apply(event)
            touched_users[event.user_id] = max(touched_users.get(event.user_id, 0), event.event_time_ms)
            touched_items[event.item_id] = max(touched_items.get(event.item_id, 0), event.event_time_ms)
            applied += 1
        for source, key, touched, states in (
            ("user_features_push", "user_id", touched_users, users),
            ("item_features_push", "item_id", touched_items, items),
        ):
            if not touched:
                continue
            rows = []
            for entity, newest in touched.items():
                as_of = max(newest, states[entity].newest_event_ms or newest)
                row: dict[str, Any] = {key: entity, **states[entity].values(as_of)}
                row[AS_OF_FIELD] = as_of
                row["event_timestamp"] = datetime.fromtimestamp(as_of / 1000, tz=UTC)
                rows.append(row)
            store.push(source, pd.DataFrame(rows), to=PushMode.ONLINE)
            readable = wall_clock_ms()
            freshness_ms.extend(readable - newest for newest in touched.values())
        Path(out).write_text(json.dumps({"applied": applied, "freshness_ms": freshness_ms}))


def run_baseline(
    broker: Any,
    redis: Any,
    registry: Path,
    rate: float,
    seconds: float,
    seed: int,
    state_dir: Path,
    log: Callable[[str], None],
    bounds_ms: list[float],
) -> dict[str, Any]:
    """The consumer loop at the same rate; its freshness distribution is also given at `bounds_ms` (the job's
    histogram bounds) for the plot."""
    topic = "bench-baseline"
    create_topic(broker.address, topic)
    catalog = state_dir / "catalog-baseline.parquet"
    out = state_dir / "baseline.json"
    # Written before the loop starts, so it reads the same catalog the job does.
    write_catalog(world(rate, seconds, seed, wall_clock_ms()).catalog(), catalog)
    context = multiprocessing.get_context("spawn")
    loop = context.Process(
        target=baseline_loop,
        args=(broker.address, topic, redis.address, str(registry), str(catalog), str(out)),
    )
    loop.start()
    try:
        log(f"baseline: publishing {rate:.0f} events/s for {seconds:.0f} s")
        cpu_before = cpu_seconds(loop.pid)
        sent, started = publish(broker.address, topic, rate, seconds, seed)

        def applied() -> int:
            try:
                return int(json.loads(out.read_text())["applied"])
            except (OSError, ValueError):
                return 0

        wait_until(lambda: applied() >= sent, timeout_s=max(120.0, seconds * 10))
        caught_up = time.monotonic()
        loop_cpu = cpu_seconds(loop.pid) - cpu_before
        time.sleep(1.0)
    finally:
        if loop.pid is not None:
            os.kill(loop.pid, signal.SIGTERM)
        loop.join(30)
    result = json.loads(out.read_text())
    return {
        "events_sent": sent,
        "events_applied": result["applied"],
        "lost": sent - result["applied"],
        "freshness_ms": quantiles(result["freshness_ms"]),
        "freshness_cdf": samples_cdf(result["freshness_ms"], bounds_ms),
        "throughput_eps": round(result["applied"] / (caught_up - started), 1),
        "rows_measured": len(result["freshness_ms"]),
        "cpu_s": round(loop_cpu, 1),
        "cpu_us_per_event": round(1e6 * loop_cpu / max(result["applied"], 1), 1),
    }


class Deployment(NamedTuple):
    """How the job runs: in a mini-cluster (0 TaskManagers) or on a local cluster, operators split or not."""

    task_managers: int = 0
    split_operators: bool = False

    def describe(self) -> str:
        if not self.task_managers:
            return "a mini-cluster (one JVM, one interpreter)"
        if self.split_operators:
            return (
                f"a local cluster of {self.task_managers} TaskManagers, item features on "
                f"{self.task_managers // 2} of their own (parallelism {self.task_managers // 2})"
            )
        plural = "s" if self.task_managers > 1 else ""
        return f"a local cluster of {self.task_managers} TaskManager{plural} (parallelism {self.task_managers})"


MINI_CLUSTER = Deployment()


def run(
    rate: float,
    seconds: float,
    seed: int,
    log: Callable[[str], None],
    declared: int = 0,
    deployment: Deployment = MINI_CLUSTER,
) -> dict[str, Any]:
    """Start a broker and Redis for the benchmark, run both pipelines one after the other, return the report."""
    with tempfile.TemporaryDirectory(prefix="freshrank-bench-") as tmp:
        state_dir = Path(tmp)
        settings = StackSettings(state_dir=state_dir, broker_port=0, redis_port=0)
        broker = broker_component(settings, free_port())
        redis = redis_component(settings, free_port())
        logs = state_dir / "logs"
        with running(broker, logs), running(redis, logs):
            registry = (state_dir / "feast" / "registry.db").resolve()
            log(f"freshrank: the job on {deployment.describe()}")
            freshrank = run_freshrank(
                settings, broker, redis, rate, seconds, seed, log, declared=declared, **deployment._asdict()
            )
            bounds_ms = [bound for bound, _ in freshrank["freshness_cdf"]]
            baseline = run_baseline(broker, redis, registry, rate, seconds, seed, state_dir, log, bounds_ms)
    return {
        "benchmark": "freshness",
        "rate_eps": rate,
        "seconds": seconds,
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        **freshrank,
        "baseline": baseline,
        "git_commit": _git_commit(),
    }


COMPARED = {
    "parallelism_1": Deployment(1),
    "parallelism_2": Deployment(2),
    "split_operators": Deployment(2, split_operators=True),
}


def compare_parallelism(rate: float, seconds: float, seed: int, log: Callable[[str], None]) -> dict[str, Any]:
    """The same events at the same rate against the job on a local cluster of 1 TaskManager (parallelism 1),
    of 2 TaskManagers at parallelism 2 (partitions and item buckets split by key), and of 2 TaskManagers with
    the operators split (reading and user features on one, item features on the other); each on its own
    topic and checkpoints, one broker and Redis.

    In thread mode a JVM's Python operators share one interpreter and its GIL: only more TaskManager
    processes add cores. The rate should saturate parallelism 1. A job that falls behind coalesces more
    rows per entity and so keeps its throughput near the rate while its freshness grows: compare the p99s
    as well as `throughput_ratio` (each 2-TaskManager run's throughput over parallelism 1's).
    """
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="freshrank-bench-") as tmp:
        root = Path(tmp)
        shared = StackSettings(state_dir=root, broker_port=0, redis_port=0)
        broker = broker_component(shared, free_port())
        redis = redis_component(shared, free_port())
        with running(broker, root / "logs"), running(redis, root / "logs"):
            for name, deployment in COMPARED.items():
                settings = StackSettings(state_dir=root / name, broker_port=0, redis_port=0)
                log(f"{name}: the job on {deployment.describe()}")
                topic = f"bench-{name.replace('_', '-')}"
                runs[name] = run_freshrank(
                    settings, broker, redis, rate, seconds, seed, log, topic, **deployment._asdict()
                )
    one = runs["parallelism_1"]
    return {
        "benchmark": "freshness-parallelism",
        "rate_eps": rate,
        "seconds": seconds,
        **runs,
        "throughput_ratio": {
            name: round(run["throughput_eps"] / max(one["throughput_eps"], 1e-9), 2)
            for name, run in runs.items()
            if name != "parallelism_1"
        },
        "p99_ms": {name: run["freshness_ms"]["p99"] for name, run in runs.items()},
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "git_commit": _git_commit(),
    }


def sustained(trial: dict[str, Any], p99_ms: float) -> bool:
    """Nothing lost and p99 freshness under the bar (a job that falls behind shows it in its freshness)."""
    return bool(trial["lost"] == 0 and trial["freshness_ms"]["p99"] < p99_ms)


def find_max(
    seconds: float,
    seed: int,
    log: Callable[[str], None],
    start_rate: float = 1000.0,
    p99_ms: float = 1000.0,
    deployment: Deployment = MINI_CLUSTER,
) -> dict[str, Any]:
    """The highest rate the job sustains (see `sustained`): doubling from `start_rate` (halving while it fails),
    then three bisections.

    Each trial is a fresh job (own checkpoints, own topic) on one broker and Redis.
    """
    trials: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="freshrank-bench-") as tmp:
        root = Path(tmp)
        shared = StackSettings(state_dir=root, broker_port=0, redis_port=0)
        broker = broker_component(shared, free_port())
        redis = redis_component(shared, free_port())
        with running(broker, root / "logs"), running(redis, root / "logs"):

            def trial(rate: float) -> bool:
                n = len(trials)
                settings = StackSettings(state_dir=root / f"trial-{n}", broker_port=0, redis_port=0)
                result = run_freshrank(
                    settings, broker, redis, rate, seconds, seed, log, f"bench-max-{n}", **deployment._asdict()
                )
                ok = sustained(result, p99_ms)
                trials.append({"rate_eps": rate, "sustained": ok, **result})
                verdict = "ok" if ok else "not sustained"
                log(
                    f"find-max: {rate:.0f} events/s -> p99 {result['freshness_ms']['p99']} ms, "
                    f"{result['throughput_eps']} events/s applied, lost {result['lost']}: {verdict}"
                )
                return ok

            low, high = 0.0, start_rate
            if trial(high):
                low, high = high, high * 2
                while trial(high):
                    low, high = high, high * 2
            else:
                while high > 100 and not trial(round(high / 2, -2)):
                    high = round(high / 2, -2)
                low = round(high / 2, -2) if high > 100 else 0.0
            for _ in range(3):
                middle = round((low + high) / 2, -2) if low else round(high / 2, -2)
                if middle in (low, high) or middle <= 0:
                    break
                if trial(middle):
                    low = middle
                else:
                    high = middle
    return {
        "benchmark": "freshness-find-max",
        **deployment._asdict(),
        "p99_bar_ms": p99_ms,
        "seconds": seconds,
        "max_sustained_eps": low,
        "first_not_sustained_eps": high,
        "trials": trials,
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "git_commit": _git_commit(),
    }


def compare_max(seconds: float, seed: int, log: Callable[[str], None], start_rate: float) -> dict[str, Any]:
    """`find_max` for each deployment of `COMPARED`, and each one's highest sustained rate over parallelism 1's:
    the scale-out ratio that a throughput at one rate cannot show (a job behind coalesces and keeps up)."""
    searches: dict[str, dict[str, Any]] = {}
    for name, deployment in COMPARED.items():
        log(f"{name}: the highest sustained rate of the job on {deployment.describe()}")
        searches[name] = find_max(seconds, seed, log, start_rate=start_rate, deployment=deployment)
    highest = {name: search["max_sustained_eps"] for name, search in searches.items()}
    one = highest["parallelism_1"]
    return {
        "benchmark": "freshness-parallelism-find-max",
        "seconds": seconds,
        "max_sustained_eps": highest,
        "max_sustained_ratio": {
            name: round(rate / one, 2) if one else None for name, rate in highest.items() if name != "parallelism_1"
        },
        **searches,
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "git_commit": _git_commit(),
    }


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return None
