"""Start-up errors a user can fix must say what to do, not print a traceback."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from cli.stack import StackError, claim_port, java_version

runner = CliRunner()


def test_a_taken_port_names_the_port_and_the_way_out() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(StackError, match=rf"127.0.0.1:{port} is already in use.*--broker-port 0"):
            claim_port("127.0.0.1", port, "broker", "--broker-port")


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
