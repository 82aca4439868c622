"""The Flink REST reader says where it looked and why nothing answered (the answered case: tests/integration)."""

from __future__ import annotations

import socket
import threading

import pytest

from cli.stack import free_port
from streaming.errors import FlinkRestUnavailable
from streaming.flink_rest import job_status


def test_a_rest_api_that_does_not_answer_is_named_with_the_reason() -> None:
    address = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(FlinkRestUnavailable, match=rf"Flink REST API at {address} is not reachable \(.*refused"):
        job_status(address, timeout_s=1.0)


def test_a_port_held_by_something_that_is_not_http_is_unreachable_not_a_crash() -> None:
    # CI saw it: PyFlink's py4j gateway held the dashboard port and answered `!xn`.
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()

        def answer_like_py4j() -> None:
            connection, _ = server.accept()
            with connection:
                connection.recv(4096)
                connection.sendall(b"!xn\n")

        thread = threading.Thread(target=answer_like_py4j, daemon=True)
        thread.start()
        address = f"http://127.0.0.1:{server.getsockname()[1]}"
        with pytest.raises(FlinkRestUnavailable, match=rf"Flink REST API at {address} is not reachable"):
            job_status(address, timeout_s=2.0)
        thread.join(timeout=5)
