"""The Flink REST reader says where it looked and why nothing answered (the answered case: tests/integration)."""

from __future__ import annotations

import pytest

from cli.stack import free_port
from streaming.errors import FlinkRestUnavailable
from streaming.flink_rest import job_status


def test_a_rest_api_that_does_not_answer_is_named_with_the_reason() -> None:
    address = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(FlinkRestUnavailable, match=rf"Flink REST API at {address} is not reachable \(.*refused"):
        job_status(address, timeout_s=1.0)
