"""Reads the stream job's state from Flink's REST API: what the dashboard shows, for `freshrank status`.

The local mini-cluster serves the API on `FRESHRANK_STREAM_FLINK_UI_PORT`; a
Flink cluster (the operator's `<deployment>-rest` service) serves the same API.
This module only reads: it never cancels, rescales or triggers anything.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from streaming.errors import FlinkRestUnavailable

# The name `freshrank stream` submits the job under (streaming/job.py), and the one looked up here.
JOB_NAME = "freshrank-features"


@dataclass(frozen=True)
class FlinkJobStatus:
    """One job as the dashboard shows it. Ages use the JobManager's clock, so a skewed client clock is harmless."""

    job_id: str
    name: str
    state: str
    restarts: int
    checkpoints_completed: int
    checkpoints_failed: int
    last_checkpoint_id: int | None
    last_checkpoint_age_s: float | None


def _get(base_url: str, path: str, timeout_s: float) -> Any:
    try:
        with urllib.request.urlopen(f"{base_url}{path}", timeout=timeout_s) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise FlinkRestUnavailable(f"Flink REST API at {base_url} answered {error.code} to {path}") from None
    except (OSError, ValueError, http.client.HTTPException) as error:
        # HTTPException: something that is not an HTTP server holds the port (BadStatusLine).
        reason = getattr(error, "reason", error)
        raise FlinkRestUnavailable(f"Flink REST API at {base_url} is not reachable ({reason})") from None


def job_status(base_url: str, job_name: str = JOB_NAME, timeout_s: float = 3.0) -> FlinkJobStatus:
    """The newest job called `job_name` on the cluster at `base_url`; FlinkRestUnavailable if there is none."""
    jobs = [job for job in _get(base_url, "/jobs/overview", timeout_s)["jobs"] if job["name"] == job_name]
    if not jobs:
        raise FlinkRestUnavailable(f"Flink REST API at {base_url} answers but runs no job named {job_name!r}")
    job_id = str(max(jobs, key=lambda job: int(job["start-time"]))["jid"])
    detail = _get(base_url, f"/jobs/{job_id}", timeout_s)
    checkpoints = _get(base_url, f"/jobs/{job_id}/checkpoints", timeout_s)
    metrics = _get(base_url, f"/jobs/{job_id}/metrics?get=numRestarts", timeout_s)
    restarts = next((int(float(m["value"])) for m in metrics if m.get("id") == "numRestarts"), 0)
    latest = (checkpoints.get("latest") or {}).get("completed")
    return FlinkJobStatus(
        job_id=job_id,
        name=str(detail["name"]),
        state=str(detail["state"]),
        restarts=restarts,
        checkpoints_completed=int(checkpoints["counts"]["completed"]),
        checkpoints_failed=int(checkpoints["counts"]["failed"]),
        last_checkpoint_id=int(latest["id"]) if latest else None,
        last_checkpoint_age_s=max(0.0, (int(detail["now"]) - int(latest["latest_ack_timestamp"])) / 1000)
        if latest
        else None,
    )


def registered_task_managers(base_url: str, timeout_s: float = 3.0) -> int:
    """How many TaskManagers have registered with the JobManager at `base_url`."""
    return len(_get(base_url, "/taskmanagers", timeout_s)["taskmanagers"])
