"""`freshrank up`, `status` and `stream`: start-up errors a user can fix say what to do, not a traceback."""

from __future__ import annotations

import socket
from pathlib import Path

from typer.testing import CliRunner

from cli.local_stack import _flink_text
from cli.main import app
from stack.health import flink_detail, flink_problems
from stack.ports import free_port

runner = CliRunner()


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


def test_status_shows_an_unreachable_rest_api_without_calling_the_job_down() -> None:
    dashboard = f"http://127.0.0.1:{free_port()}"
    flink = flink_detail(dashboard)
    assert flink["reachable"] is False and dashboard in flink["error"]
    assert flink_problems(flink) == []
    assert "not reachable" in _flink_text(flink)


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


def test_split_operators_without_a_pair_of_task_managers_is_refused_with_what_to_add(tmp_path: Path) -> None:
    for command in (
        ["stream", "--split-operators"],
        ["stream", "--split-operators", "--task-managers", "3"],
        ["up", "--state-dir", str(tmp_path), "--split-operators"],
        ["up", "--state-dir", str(tmp_path), "--split-operators", "--task-managers", "1"],
    ):
        result = runner.invoke(app, command)
        assert result.exit_code == 1, (command, result.output)
        output = " ".join(result.output.split())
        assert "--task-managers 2" in output or "must be even" in output, (command, output)
        assert "Traceback" not in result.output
