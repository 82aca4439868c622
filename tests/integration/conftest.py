"""Session fixtures that start a real Tansu broker and a real Redis server on free ports.

They use the same components as `freshrank up`, so tests run what users run.
Fault tests may stop and restart them through the returned `Component`.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from feature_repo.store import apply
from stack.components import broker_component, redis_component
from stack.ports import free_port
from stack.processes import Component, running
from stack.settings import StackSettings

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


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


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Debian's headless Chromium driven by its ChromeDriver (browser downloads by test tools fail here)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # Without the background-networking flags Chromium keeps dialling Google's hosts,
    # which this machine's closed network refuses.
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_script_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
