"""Session fixtures that start a real Tansu broker and a real Redis server on free ports.

They use the same components as `freshrank up`, so tests run what users run.
Fault tests may stop and restart them through the returned `Component`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from cli.stack import Component, StackSettings, broker_component, free_port, redis_component, running
from feature_repo.store import apply


@pytest.fixture(scope="session")
def stack_settings(tmp_path_factory: pytest.TempPathFactory) -> StackSettings:
    return StackSettings(state_dir=tmp_path_factory.mktemp("stack"), broker_port=0, redis_port=0)


@pytest.fixture(scope="session")
def broker(stack_settings: StackSettings) -> Iterator[Component]:
    component = broker_component(stack_settings, free_port())
    with running(component, stack_settings.state_dir / "logs"):
        yield component


@pytest.fixture(scope="session")
def bootstrap(broker: Component) -> str:
    return broker.address


@pytest.fixture(scope="session")
def redis_server(stack_settings: StackSettings) -> Iterator[Component]:
    component = redis_component(stack_settings, free_port())
    with running(component, stack_settings.state_dir / "logs"):
        yield component


@pytest.fixture
def fresh_topic(bootstrap: str) -> str:
    """A new 8-partition topic per test, so tests never see each other's records."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, 8, 1)])[name].result(timeout=30)
    return name


@pytest.fixture(scope="session")
def feast_registry(redis_server: Component, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`feast apply` once per session, as `freshrank up` does."""
    registry = tmp_path_factory.mktemp("feast") / "registry.db"
    apply(redis_server.address, registry)
    return registry


@pytest.fixture
def dlq_topic(bootstrap: str) -> str:
    name = f"test-dlq-{uuid.uuid4().hex[:12]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, 1, 1)])[name].result(timeout=30)
    return name
