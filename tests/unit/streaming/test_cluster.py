"""The local standalone cluster's configuration, commands and per-TaskManager metrics, without starting Flink."""

from __future__ import annotations

import contextlib
import http.server
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from stack.components import stream_component
from stack.flink_cluster import ClusterError, plan_cluster
from stack.health import scrape, scrape_all, stream_detail
from stack.ports import free_port
from stack.settings import StackSettings
from streaming.cluster import (
    ClusterPlan,
    cluster_options,
    flink_home,
    submit_command,
    taskmanager_env,
    write_conf_dir,
)
from streaming.job import flink_options
from streaming.metrics import TASK_MANAGER_METRICS_PORT_ENV, metrics_addresses
from streaming.settings import StreamSettings


def plan(
    tmp_path: Path, task_managers: int = 2, metrics_port: int = 9464, parallelism: int | None = None
) -> ClusterPlan:
    return ClusterPlan(
        task_managers,
        task_managers if parallelism is None else parallelism,
        "127.0.0.1",
        18081,
        16123,
        metrics_port,
        tmp_path / "cluster",
        tmp_path / "log",
    )


def settings(tmp_path: Path) -> StreamSettings:
    return StreamSettings(checkpoint_dir=tmp_path / "checkpoints", checkpoint_interval_ms=1500, task_managers=2)


def test_the_cluster_runs_the_job_as_the_mini_cluster_does_with_one_slot_per_task_manager(tmp_path: Path) -> None:
    options = cluster_options(settings(tmp_path), plan(tmp_path, task_managers=3))
    job = flink_options(settings(tmp_path), restore_from=None)
    for key in (
        "python.execution-mode",
        "python.executable",
        "execution.checkpointing.interval",
        "execution.checkpointing.dir",
        "execution.checkpointing.externalized-checkpoint-retention",
        "execution.checkpointing.num-retained",
        "state.backend.type",
        "restart-strategy.type",
    ):
        assert options[key] == job[key], key
    assert options["python.execution-mode"] == "thread"
    assert options["python.executable"] == sys.executable
    assert options["execution.checkpointing.interval"] == "1500 ms"
    assert options["taskmanager.numberOfTaskSlots"] == "1"
    assert options["parallelism.default"] == "3"
    assert (options["rest.port"], options["jobmanager.rpc.port"]) == ("18081", "16123")
    assert options["rest.bind-address"] == options["taskmanager.host"] == "127.0.0.1"
    # A session cluster's config applies to every job: the restore path goes with the submission.
    assert "execution.state-recovery.path" not in options


def test_the_conf_dir_keeps_the_wheels_jvm_options_overrides_its_sizes_and_has_the_log_config(tmp_path: Path) -> None:
    conf = write_conf_dir(settings(tmp_path), plan(tmp_path))
    written = yaml.safe_load((conf / "config.yaml").read_text())
    # Flattened: every key dotted, every value a string, none nested (the wheel's file is nested).
    assert all(isinstance(value, str) for value in written.values())
    assert "--add-opens=java.base/java.lang=ALL-UNNAMED" in written["env.java.opts.all"]
    assert written["taskmanager.memory.process.size"] == "1536m"
    assert written["jobmanager.rpc.port"] == "16123"  # not the wheel's 6123
    assert written["jobmanager.rpc.address"] == "127.0.0.1"  # not the wheel's localhost
    assert (conf / "log4j-console.properties").exists() and (conf / "log4j-cli.properties").exists()
    assert (flink_home() / "bin" / "taskmanager.sh").exists()


def test_the_submission_runs_job_main_at_parallelism_n_and_resumes_from_the_checkpoint(tmp_path: Path) -> None:
    checkpoint = tmp_path / "checkpoints" / "abc" / "chk-7"
    command = submit_command(plan(tmp_path, task_managers=2), checkpoint)
    assert command[-2:] == ["--pyModule", "streaming.job_main"]
    assert command[command.index("--parallelism") + 1] == "2"
    assert command[command.index("--jobmanager") + 1] == "127.0.0.1:18081"
    assert command[command.index("--fromSavepoint") + 1] == checkpoint.resolve().as_uri()
    assert "--detached" in command
    assert "--fromSavepoint" not in submit_command(plan(tmp_path), None)


def test_split_operators_halves_the_parallelism_and_refuses_an_odd_count_of_task_managers(tmp_path: Path) -> None:
    split = StreamSettings(task_managers=4, split_operators=True, cluster_dir=tmp_path / "c", flink_ui_port=0)
    assert split.cluster_parallelism == 2
    assert StreamSettings(task_managers=4).cluster_parallelism == 4
    cluster = plan_cluster(split)
    assert (cluster.task_managers, cluster.parallelism) == (4, 2)
    assert cluster_options(split, cluster)["parallelism.default"] == "2"
    assert submit_command(cluster, None)[submit_command(cluster, None).index("--parallelism") + 1] == "2"
    with pytest.raises(ValueError, match="needs an even --task-managers"):
        StreamSettings(task_managers=3, split_operators=True)


def test_task_manager_i_serves_metrics_on_the_port_plus_i(tmp_path: Path) -> None:
    cluster = plan(tmp_path, task_managers=3, metrics_port=9500)
    assert [taskmanager_env(cluster, i)[TASK_MANAGER_METRICS_PORT_ENV] for i in range(3)] == ["9500", "9501", "9502"]
    assert taskmanager_env(plan(tmp_path, metrics_port=0), 1) == {}  # metrics off stays off
    assert metrics_addresses("127.0.0.1", 9500, 3) == ["127.0.0.1:9500", "127.0.0.1:9501", "127.0.0.1:9502"]
    assert metrics_addresses("127.0.0.1", 9500, 0) == ["127.0.0.1:9500"]  # the mini-cluster: one process


def test_the_metrics_server_of_a_task_manager_listens_on_the_port_its_environment_gives() -> None:
    settings_port, own_port = free_port(), free_port()
    code = (
        f"import time, streaming.metrics as m; m.serve({settings_port}); m.EVENTS.labels('admitted').inc(3); "
        "print('up', flush=True); time.sleep(60)"
    )
    env = {TASK_MANAGER_METRICS_PORT_ENV: str(own_port), "PATH": "/usr/bin:/bin"}
    root = Path(__file__).resolve().parents[3]
    with subprocess.Popen([sys.executable, "-c", code], env=env, cwd=root, stdout=subprocess.PIPE) as child:
        try:
            assert child.stdout is not None and child.stdout.readline() == b"up\n"
            series = scrape(f"127.0.0.1:{own_port}")
            assert series is not None and series['freshrank_stream_events_total{outcome="admitted"}'] == 3
            assert scrape(f"127.0.0.1:{settings_port}", timeout_s=1) is None
        finally:
            child.kill()


def test_a_taken_metrics_port_of_a_later_task_manager_is_refused_by_name(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        base = taken.getsockname()[1] - 1
        job = StreamSettings(task_managers=2, metrics_port=base, cluster_dir=tmp_path / "c", flink_ui_port=0)
        with pytest.raises(ClusterError, match=f"port {base + 1} is taken.*FRESHRANK_STREAM_METRICS_PORT"):
            plan_cluster(job)


@contextlib.contextmanager
def serve_text(text: str) -> Iterator[str]:
    """An HTTP server answering every GET with `text`, as a TaskManager's /metrics does."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            body = text.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def two_task_managers() -> Iterator[list[str]]:
    first = (
        'freshrank_stream_events_total{outcome="admitted"} 100.0\n'
        'freshrank_stream_rows_written_total{view="user_features"} 7.0\n'
        'freshrank_stream_freshness_recent_seconds{quantile="0.99"} 0.4\n'
        'freshrank_stream_consumer_lag{partition="0"} 5.0\n'
    )
    second = (
        'freshrank_stream_events_total{outcome="admitted"} 250.0\n'
        'freshrank_stream_rows_written_total{view="user_features"} 3.0\n'
        'freshrank_stream_freshness_recent_seconds{quantile="0.99"} 0.9\n'
        'freshrank_stream_consumer_lag{partition="1"} 2.0\n'
    )
    with serve_text(first) as one, serve_text(second) as other:
        yield [one, other]


def test_status_sums_the_task_managers_counts_and_reports_the_worst_quantile(two_task_managers: list[str]) -> None:
    detail = stream_detail(two_task_managers)
    assert detail is not None
    assert detail["events_admitted"] == 350
    assert detail["rows_written"] == 10
    assert detail["consumer_lag"] == 7
    assert detail["freshness_p99_ms"] == 900  # per-process quantiles do not add up: the worst bounds the job's


def test_one_unreachable_task_manager_makes_the_job_metrics_unreachable(two_task_managers: list[str]) -> None:
    assert scrape_all(two_task_managers) is not None
    assert scrape_all([*two_task_managers, f"127.0.0.1:{free_port()}"], timeout_s=1) is None


def test_the_stack_records_every_task_managers_metrics_address(tmp_path: Path) -> None:
    job = stream_component(StackSettings(state_dir=tmp_path, stream_task_managers=2), _Addr(), _Addr(), 9600)  # type: ignore[arg-type]
    assert job.env["FRESHRANK_STREAM_TASK_MANAGERS"] == "2"
    assert job.describe()["metrics"] == ["127.0.0.1:9600", "127.0.0.1:9601"]
    alone = stream_component(StackSettings(state_dir=tmp_path), _Addr(), _Addr(), 9600)  # type: ignore[arg-type]
    assert "metrics" not in alone.describe()


class _Addr:
    address = "127.0.0.1:1"
