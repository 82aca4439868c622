"""The stream job's Flink dashboard and REST API, served by its local mini-cluster.

One `freshrank stream` job runs for the module, its dashboard on a free port. The
dashboard itself is loaded in headless Debian Chromium, as a user opening the
address `freshrank up` prints would see it; the REST fields `freshrank status`
reads are checked against the running job.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from simulator.catalog import write_catalog
from stack.health import flink_detail, flink_problems
from stack.processes import Component
from streaming.flink_rest import JOB_NAME
from tests.integration.streamjob import StreamJob, encoded, produce_raw, wait_until, world_events


@pytest.fixture(scope="module")
def job(
    bootstrap: str, redis_server: Component, feast_registry: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StreamJob]:
    work_dir = tmp_path_factory.mktemp("dashboard-job")
    topic, dlq = f"test-ui-{uuid.uuid4().hex[:12]}", f"test-ui-dlq-{uuid.uuid4().hex[:12]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, 8, 1), NewTopic(dlq, 1, 1)]).values():
        future.result(timeout=30)
    events, _categories, world = world_events(500, seed=11)
    write_catalog(world.catalog(), work_dir / "catalog.parquet")
    produce_raw(bootstrap, topic, list(encoded(events)))
    stream = StreamJob.configured(
        work_dir,
        bootstrap=bootstrap,
        topic=topic,
        dlq_topic=dlq,
        redis_address=redis_server.address,
        feast_registry=feast_registry,
        catalog=work_dir / "catalog.parquet",
        checkpoint_interval_ms="1000",
    )
    stream.start()
    try:
        yield stream
    finally:
        stream.kill()


def test_status_reads_state_restarts_and_the_last_checkpoint_from_the_rest_api(job: StreamJob) -> None:
    wait_until(lambda: flink_detail(job.dashboard).get("last_checkpoint_id"), 120, "a completed checkpoint")
    first = flink_detail(job.dashboard)
    assert first["reachable"] is True, first
    assert first["name"] == JOB_NAME and first["state"] == "RUNNING" and first["restarts"] == 0, first
    assert first["checkpoints_completed"] >= 1
    # A checkpoint every second: the last one is recent, and a newer one follows.
    assert 0 <= first["last_checkpoint_age_s"] < 60, first
    newer = first["last_checkpoint_id"] + 1
    wait_until(lambda: flink_detail(job.dashboard)["last_checkpoint_id"] >= newer, 120, "a newer checkpoint")
    assert flink_problems(flink_detail(job.dashboard)) == []


def test_the_dashboard_in_chromium_shows_the_job_running(job: StreamJob, browser: Any) -> None:
    job_id = flink_detail(job.dashboard)["job_id"]
    browser.get(f"{job.dashboard}/#/job/running")
    # The dashboard is an Angular app: it fills the running-jobs table from /jobs/overview,
    # each row's status in a <flink-job-badge>.
    badge_in_row = """
        const row = [...document.querySelectorAll("tr")].find(r => r.cells[0] && r.cells[0].innerText === arguments[0]);
        const badge = row && row.querySelector("flink-job-badge");
        return badge ? badge.innerText.trim() : null;
    """
    wait_until(lambda: browser.execute_script(badge_in_row, JOB_NAME) == "RUNNING", 60, "the job RUNNING in the list")

    # A click on the row opens the job's page, as a user would: the same job, RUNNING, with its operators.
    browser.execute_script(
        "[...document.querySelectorAll('tr')].find(r => r.cells[0] && r.cells[0].innerText === arguments[0]).click()",
        JOB_NAME,
    )
    page_badge = "const b = document.querySelector('flink-job-badge'); return b ? b.innerText.trim() : null;"

    def job_page() -> str:
        return str(browser.execute_script("return document.body.innerText"))

    wait_until(lambda: job_id in job_page() and "UserFeaturesByPartition" in job_page(), 60, "the job's page")
    assert f"/job/running/{job_id}" in browser.current_url
    assert browser.execute_script(page_badge) == "RUNNING"
