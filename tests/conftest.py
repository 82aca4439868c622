"""Marks every test under tests/slow, tests/integration and tests/reliability, so `-m "not slow and not integration"`
is a fast loop."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        path = str(item.path)
        if "/tests/slow/" in path:
            item.add_marker(pytest.mark.slow)
        if "/tests/integration/" in path:
            item.add_marker(pytest.mark.integration)
        if "/tests/reliability/" in path:
            item.add_marker(pytest.mark.reliability)
