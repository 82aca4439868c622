"""The local stack's ports, processes and probes: failures a user can fix say what to do; nothing is left behind."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stack.components import java_version, stream_component
from stack.health import flink_problems, http_healthy, scrape
from stack.ports import claim_port, ephemeral_port_range, free_port, free_ports, port_bindable, split_address
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


def test_port_zero_gives_distinct_ports_a_server_can_listen_on_and_the_kernel_never_hands_out() -> None:
    # Below the ephemeral range: no process binding port 0 (the PyFlink gateway) can take it
    # between the pick and the component's bind. Two picks before either is bound must differ.
    low, _ = ephemeral_port_range()
    ports = [claim_port("127.0.0.1", 0, "broker", "--broker-port") for _ in range(20)]
    assert len(set(ports)) == len(ports)
    assert all(port < low for port in ports)
    for port in ports:
        with socket.socket() as server:  # what the component does with it
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind(("127.0.0.1", port))
            server.listen()


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


def test_the_stack_gives_the_job_its_dashboard_port_and_a_job_without_one_never_takes_8081(tmp_path: Path) -> None:
    settings = StackSettings(state_dir=tmp_path)
    broker, redis = Component("broker", "127.0.0.1:1", [], lambda: True), Component("redis", "127.0.0.1:2", [], bool)
    stream = stream_component(settings, broker, redis, metrics_port=3, ui_port=18081)
    assert stream.env["FRESHRANK_STREAM_FLINK_UI_PORT"] == "18081"
    assert stream.describe()["dashboard"] == "http://127.0.0.1:18081"
    # The freshness benchmark starts a job next to whatever stack runs: Flink picks its port.
    unannounced = stream_component(settings, broker, redis, metrics_port=3)
    assert unannounced.env["FRESHRANK_STREAM_FLINK_UI_PORT"] == "0" and "dashboard" not in unannounced.describe()


def test_a_job_the_rest_api_shows_restarting_is_a_problem() -> None:
    restarting = {"reachable": True, "state": "RESTARTING"}
    assert flink_problems(restarting) == ["Flink job RESTARTING"]
    assert flink_problems({"reachable": True, "state": "RUNNING"}) == []


def test_probes_of_a_port_held_by_something_that_is_not_http_say_unhealthy() -> None:
    # CI saw PyFlink's py4j gateway on a component's port; a probe must not crash the supervisor.
    with py4j_like_server(connections=2) as address:
        assert http_healthy(address, timeout_s=2.0) is False
        assert scrape(address, timeout_s=2.0) is None


def test_a_block_of_free_ports_is_consecutive_bindable_and_never_handed_out_again() -> None:
    start = free_ports(3)
    block = {start, start + 1, start + 2}
    assert all(port_bindable("127.0.0.1", port) is None for port in block)
    assert not block & {free_port() for _ in range(50)}


def test_a_component_address_splits_into_host_and_port_and_a_malformed_one_says_which() -> None:
    assert split_address("127.0.0.1:6379") == ("127.0.0.1", 6379)
    assert split_address("::1:8081") == ("::1", 8081)
    for bad in ("6379", "localhost:", ":6379", "localhost:http"):
        with pytest.raises(ValueError, match=repr(bad)):
            split_address(bad)
