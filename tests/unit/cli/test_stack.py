"""Start-up errors a user can fix must say what to do, not print a traceback."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.local_stack import _flink_text
from cli.main import app
from stack.components import java_version, stream_component
from stack.health import flink_detail, flink_problems, http_healthy, scrape
from stack.ports import claim_port, ephemeral_port_range, free_port, free_ports, port_bindable
from stack.processes import Component, group_members, stop_group
from stack.settings import StackError, StackSettings
from tests.py4j_like_server import py4j_like_server

runner = CliRunner()


def test_a_taken_port_names_the_port_and_the_way_out() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(StackError, match=rf"127.0.0.1:{port} is already in use.*--broker-port 0"):
            claim_port("127.0.0.1", port, "broker", "--broker-port")


def test_a_port_whose_last_server_left_connections_in_time_wait_can_be_claimed() -> None:
    # The server side closes first (as the stack's servers do after a health check), so its
    # port keeps a TIME-WAIT connection for up to 60 s after the listener is gone. The
    # listener sets SO_REUSEADDR like every server of the stack (uvicorn, Valkey, Tansu).
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = listener.accept()
        accepted.close()
        client.recv(1)  # sees the server's FIN
        client.close()
    probe = socket.socket()
    with pytest.raises(OSError):
        probe.bind(("127.0.0.1", port))  # what a bind without SO_REUSEADDR meets
    probe.close()
    assert claim_port("127.0.0.1", port, "feed API", "--port") == port


def test_stop_group_returns_once_the_grandchildren_are_gone_too() -> None:
    # A leader that starts a child which ignores SIGTERM, like a JVM busy shutting down.
    script = (
        "import subprocess, sys, time; "
        "subprocess.Popen([sys.executable, '-c', "
        "'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)']); "
        "time.sleep(60)"
    )
    leader = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while len(group_members(leader.pid)) < 2:
            assert time.monotonic() < deadline
        stop_group(leader.pid, grace_s=0.5)
        assert group_members(leader.pid) == []
    finally:
        leader.kill()
        leader.wait()


def test_port_zero_picks_a_free_port_the_kernel_never_hands_out() -> None:
    # Below the ephemeral range: no process binding port 0 (the PyFlink gateway) can
    # take it between the pick and the component's bind.
    low, high = ephemeral_port_range()
    assert low < high
    ports = {claim_port("127.0.0.1", 0, "broker", "--broker-port") for _ in range(20)}
    assert all(1024 <= port < low for port in ports)
    assert all(port_bindable("127.0.0.1", port) is None for port in ports)
    assert len(ports) > 1


def test_a_free_port_skips_ports_that_listen(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # Only the taken port and one more below the "ephemeral range": the free one is picked.
        monkeypatch.setattr("stack.ports._FREE_PORTS_FROM", port)
        monkeypatch.setattr("stack.ports.ephemeral_port_range", lambda: (port + 2, 60999))
        if port_bindable("127.0.0.1", port + 1) is not None:
            pytest.skip(f"port {port + 1} is busy on this machine")
        monkeypatch.setattr("stack.ports._handed_out", set())
        assert free_port() == port + 1
        # Handed out once, never again from this process: the next pick is the kernel's (the fallback).
        assert free_port() != port + 1


def test_missing_java_is_explained(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(StackError, match="Java was not found.*openjdk-17"):
        java_version()


def test_up_with_a_taken_port_exits_1_with_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = runner.invoke(app, ["up", "--state-dir", str(tmp_path), "--redis-port", str(port)])
    assert result.exit_code == 1
    assert "already in use" in result.output
    assert "Traceback" not in result.output


def test_status_without_a_stack_says_so_and_exits_1(tmp_path: Path) -> None:
    result = runner.invoke(app, ["status", "--state-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "no local stack is running" in result.output


def test_up_with_the_flink_dashboard_port_taken_names_the_option(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        ports = ["--broker-port", "0", "--redis-port", "0", "--stream-port", "0", "--flink-ui-port", str(port)]
        result = runner.invoke(app, ["up", "--state-dir", str(tmp_path), *ports])
    assert result.exit_code == 1
    assert "Flink dashboard" in result.output and "--flink-ui-port 0" in result.output


def test_the_stack_gives_the_job_its_dashboard_port_and_a_job_without_one_never_takes_8081(tmp_path: Path) -> None:
    settings = StackSettings(state_dir=tmp_path)
    broker, redis = Component("broker", "127.0.0.1:1", [], lambda: True), Component("redis", "127.0.0.1:2", [], bool)
    stream = stream_component(settings, broker, redis, metrics_port=3, ui_port=18081)
    assert stream.env["FRESHRANK_STREAM_FLINK_UI_PORT"] == "18081"
    assert stream.describe()["dashboard"] == "http://127.0.0.1:18081"
    # The freshness benchmark starts a job next to whatever stack runs: Flink picks its port.
    unannounced = stream_component(settings, broker, redis, metrics_port=3)
    assert unannounced.env["FRESHRANK_STREAM_FLINK_UI_PORT"] == "0" and "dashboard" not in unannounced.describe()


def test_status_shows_an_unreachable_rest_api_without_calling_the_job_down() -> None:
    dashboard = f"http://127.0.0.1:{free_port()}"
    flink = flink_detail(dashboard)
    assert flink["reachable"] is False and dashboard in flink["error"]
    assert flink_problems(flink) == []
    assert "not reachable" in _flink_text(flink)


def test_a_job_the_rest_api_shows_restarting_is_a_problem() -> None:
    restarting = {"reachable": True, "state": "RESTARTING"}
    assert flink_problems(restarting) == ["Flink job RESTARTING"]
    assert flink_problems({"reachable": True, "state": "RUNNING"}) == []


def test_status_text_names_the_last_checkpoint_and_its_age() -> None:
    flink = {
        "reachable": True,
        "state": "RUNNING",
        "restarts": 2,
        "last_checkpoint_id": 41,
        "last_checkpoint_age_s": 1.34,
        "checkpoints_completed": 40,
        "checkpoints_failed": 1,
    }
    text = _flink_text(flink)
    assert "RUNNING" in text and "2 restarts" in text and "checkpoint 41 completed 1.3 s ago" in text
    assert "no completed checkpoint yet" in _flink_text({**flink, "last_checkpoint_id": None})


def test_probes_of_a_port_held_by_something_that_is_not_http_say_unhealthy() -> None:
    # CI saw PyFlink's py4j gateway on a component's port; a probe must not crash the supervisor.
    with py4j_like_server(connections=2) as address:
        assert http_healthy(address, timeout_s=2.0) is False
        assert scrape(address, timeout_s=2.0) is None


def test_up_on_two_task_managers_with_the_second_metrics_port_taken_names_it(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        taken = sock.getsockname()[1]
        ports = ["--broker-port", "0", "--redis-port", "0", "--flink-ui-port", "0", "--stream-port", str(taken - 1)]
        result = runner.invoke(app, ["up", "--state-dir", str(tmp_path), "--task-managers", "2", *ports])
    assert result.exit_code == 1
    assert "metrics of TaskManager 1" in result.output and f"127.0.0.1:{taken}" in result.output
    assert "Traceback" not in result.output


def test_stream_refuses_a_parallelism_other_than_its_task_managers() -> None:
    result = runner.invoke(app, ["stream", "--task-managers", "2", "--parallelism", "3"])
    assert result.exit_code == 1
    assert "pass only --task-managers" in " ".join(result.output.split())


def test_a_block_of_free_ports_is_consecutive_bindable_and_never_handed_out_again() -> None:
    start = free_ports(3)
    block = {start, start + 1, start + 2}
    assert all(port_bindable("127.0.0.1", port) is None for port in block)
    assert not block & {free_port() for _ in range(50)}
