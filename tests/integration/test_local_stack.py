"""`freshrank up --detach` / `status --json` / `generate` / `down`, as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from stack.ports import wait_ports_free
from stack.processes import group_members, pid_alive


def freshrank(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args], capture_output=True, text=True, timeout=timeout, env=os.environ.copy()
    )


def count_records(bootstrap: str, topic: str, partitions: int, quiet_s: float = 3.0) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "count", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    count, last_seen = 0, time.monotonic()
    try:
        while time.monotonic() - last_seen < quiet_s:
            batch = consumer.consume(1000, 0.5)
            if batch:
                count += len(batch)
                last_seen = time.monotonic()
    finally:
        consumer.close()
    return count


def test_up_status_generate_down_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state_dir = str(tmp_path / "state")
    monkeypatch.setenv("FRESHRANK_SERVE_PORT", "0")
    up = freshrank(
        "up", "--detach", "--state-dir", state_dir, "--broker-port", "0", "--redis-port", "0", "--stream-port", "0",
        "--flink-ui-port", "0",
    )  # fmt: skip
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        status = freshrank("status", "--json", "--state-dir", state_dir)
        assert status.returncode == 0, status.stdout + status.stderr
        report = json.loads(status.stdout)
        assert report["healthy"] is True
        assert set(report["components"]) == {"broker", "redis", "stream", "serve"}
        assert all(c["healthy"] for c in report["components"].values())
        bootstrap = report["components"]["broker"]["address"]
        # `up` prints the Flink dashboard; status reads the job from the REST API behind it.
        flink = report["components"]["stream"]["flink"]
        assert f"Flink dashboard of the stream job: {flink['dashboard']}" in up.stdout
        assert flink["reachable"] is True and flink["state"] == "RUNNING" and flink["restarts"] == 0, flink

        second = freshrank("up", "--detach", "--state-dir", state_dir)
        assert second.returncode == 1 and "already running" in second.stderr

        generate = freshrank("generate", "--rate", "1000", "--seconds", "3", "--seed", "7", "--state-dir", state_dir)
        assert generate.returncode == 0, generate.stdout + generate.stderr
        published = count_records(bootstrap, "interactions", partitions=8)
        assert 2700 <= published <= 3300
        assert (Path(state_dir) / "synthetic" / "truth-seed7.parquet").exists()

        # The stream job picks the events up: status reports them and a fresh freshness figure.
        deadline = time.monotonic() + 180
        while True:
            detail = json.loads(freshrank("status", "--json", "--state-dir", state_dir).stdout)["components"]
            stream = detail["stream"]["detail"]
            caught_up = stream and stream["events_admitted"] == published and stream["consumer_lag"] == 0
            checkpointed = detail["stream"]["flink"]["last_checkpoint_id"] is not None
            if caught_up and stream["rows_written"] > 0 and stream["freshness_p99_ms"] > 0 and checkpointed:
                break
            assert time.monotonic() < deadline, detail["stream"]
            time.sleep(2)
        assert 0 <= detail["stream"]["flink"]["last_checkpoint_age_s"] < 60, detail["stream"]["flink"]

        # The feed API of the same stack answers; no model is trained yet, so the answer says so.
        api = report["components"]["serve"]["address"]
        with urllib.request.urlopen(f"http://{api}/v1/feed/u-1?k=5", timeout=10) as response:
            feed = json.loads(response.read())
        assert response.status == 200 and "model:missing" in feed["degraded"]
    finally:
        down = freshrank("down", "--state-dir", state_dir)
    assert down.returncode == 0, down.stdout + down.stderr
    pids = [report["supervisor_pid"], *(c["pid"] for c in report["components"].values())]
    assert not any(pid_alive(pid) for pid in pids)
    # Nothing any component started is left (the Flink JVM is a grandchild), and every port is free.
    assert not any(group_members(c["pid"]) for c in report["components"].values())
    addresses = [c["address"] for c in report["components"].values()]
    dashboard = flink["dashboard"].removeprefix("http://")
    assert wait_ports_free([*addresses, dashboard], timeout_s=0) == []
    after = freshrank("status", "--json", "--state-dir", state_dir)
    assert after.returncode == 1
    assert json.loads(after.stdout)["running"] is False

    # `make down && make up`: the same ports again at once, while the first run's
    # connections are still in TIME-WAIT.
    ports = {name: c["address"].rpartition(":")[2] for name, c in report["components"].items()}
    monkeypatch.setenv("FRESHRANK_SERVE_PORT", ports["serve"])
    again = freshrank(
        "up", "--detach", "--state-dir", state_dir, "--broker-port", ports["broker"],
        "--redis-port", ports["redis"], "--stream-port", ports["stream"],
        "--flink-ui-port", dashboard.rpartition(":")[2],
    )  # fmt: skip
    try:
        assert again.returncode == 0, again.stdout + again.stderr
        restarted = json.loads(freshrank("status", "--json", "--state-dir", state_dir).stdout)
        assert restarted["healthy"] is True
        assert [c["address"] for c in restarted["components"].values()] == addresses
        assert restarted["components"]["stream"]["flink"]["dashboard"] == flink["dashboard"]
    finally:
        assert freshrank("down", "--state-dir", state_dir).returncode == 0
