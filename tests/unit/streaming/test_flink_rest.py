"""The Flink REST reader says where it looked and why nothing answered (the answered case: tests/integration)."""

from __future__ import annotations

import pytest

from stack.ports import free_port
from streaming.errors import FlinkRestUnavailable
from streaming.flink_rest import job_status
from tests.py4j_like_server import py4j_like_server


def test_a_rest_api_that_does_not_answer_is_named_with_the_reason() -> None:
    address = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(FlinkRestUnavailable, match=rf"Flink REST API at {address} is not reachable \(.*refused"):
        job_status(address, timeout_s=1.0)


def test_a_port_held_by_something_that_is_not_http_is_unreachable_not_a_crash() -> None:
    # CI saw it: PyFlink's py4j gateway held the dashboard port and answered `!xn`.
    with py4j_like_server() as address:
        url = f"http://{address}"
        with pytest.raises(FlinkRestUnavailable, match=rf"Flink REST API at {url} is not reachable"):
            job_status(url, timeout_s=2.0)
