"""Start-up errors a user can fix must say what to do, not print a traceback."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from cli.stack import StackError, claim_port, group_members, java_version, stop_group

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


def test_port_zero_picks_a_free_port() -> None:
    port = claim_port("127.0.0.1", 0, "broker", "--broker-port")
    assert 0 < port < 65536


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
