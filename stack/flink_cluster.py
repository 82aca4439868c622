"""`freshrank stream --task-managers N`: a local standalone Flink cluster, supervised, with the job submitted to it.

The JobManager and each TaskManager are child processes in their own process
group (the local stack's `start_process`, which also has them get SIGTERM if
`freshrank stream` dies). The job (`streaming.job_main`) is submitted with the
wheel's `flink run` and resumes from the newest retained checkpoint. This
module never leaves a process behind and never carries on short of a
TaskManager: if one dies, every process is stopped and `ClusterError` says
which one and why, so the caller can exit non-zero.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

from stack.health import http_healthy
from stack.ports import free_port, port_bindable
from stack.processes import Component, start_process, stop_process, tail, wait_healthy
from stack.settings import StackError
from streaming.cluster import (
    ClusterPlan,
    base_env,
    jobmanager_command,
    submit_command,
    taskmanager_command,
    taskmanager_env,
    write_conf_dir,
)
from streaming.errors import FlinkRestUnavailable
from streaming.flink_rest import registered_task_managers
from streaming.job import latest_checkpoint
from streaming.settings import StreamSettings

SUBMIT_TIMEOUT_S = 300.0  # the client starts a JVM and a Python interpreter; ~50 s on a busy 2-core machine


class ClusterError(StackError):
    """The local cluster could not start, or one of its processes died; the message says which and why."""


def plan_cluster(settings: StreamSettings, host: str = "127.0.0.1") -> ClusterPlan:
    """Ports and directories of the cluster for `settings`; ClusterError if a TaskManager's metrics port is taken."""
    # The TaskManagers bind their metrics ports only once the job runs: the JobManager's must not be among them.
    metrics = {settings.metrics_port + index for index in range(settings.task_managers)}

    def other_port() -> int:
        port = free_port(host)
        while port in metrics:
            port = free_port(host)
        return port

    plan = ClusterPlan(
        task_managers=settings.task_managers,
        parallelism=settings.cluster_parallelism,
        host=host,
        rest_port=settings.flink_ui_port or other_port(),
        rpc_port=other_port(),
        metrics_port=settings.metrics_port,
        work_dir=settings.cluster_dir.resolve(),
        log_dir=settings.flink_log_dir.resolve(),
    )
    for port in plan.metrics_ports():
        error = port_bindable(settings.metrics_bind_address, port)
        if error is not None:
            raise ClusterError(
                f"TaskManager /metrics port {port} is taken ({error.strerror}): TaskManager i serves on "
                f"FRESHRANK_STREAM_METRICS_PORT + i, so ports {plan.metrics_ports()} must all be free. "
                "Pick another FRESHRANK_STREAM_METRICS_PORT."
            )
    return plan


class LocalFlinkCluster:
    """A JobManager and N TaskManagers on this machine, running the stream job until stopped."""

    def __init__(self, settings: StreamSettings, plan: ClusterPlan, log: Callable[[str], None]) -> None:
        self.settings = settings
        self.plan = plan
        self.log = log
        env = base_env(plan)
        rest = f"{plan.host}:{plan.rest_port}"
        self.jobmanager = Component(
            name="jobmanager",
            address=rest,
            command=jobmanager_command(),
            healthy=lambda: http_healthy(rest, "/overview"),
            env=env,
            startup_timeout_s=180.0,
        )
        self.taskmanagers = [
            Component(
                name=f"taskmanager-{index}",
                # What it serves: its interpreter's /metrics (none when metrics are off).
                address=f"{plan.host}:{plan.metrics_port + index}" if plan.metrics_port else plan.host,
                command=taskmanager_command(),
                healthy=self._registered_at_least(index + 1),
                env={**env, **taskmanager_env(plan, index)},
                startup_timeout_s=180.0,
            )
            for index in range(plan.task_managers)
        ]
        self._stopping = False

    @property
    def processes(self) -> list[Component]:
        return [self.jobmanager, *self.taskmanagers]

    def _registered_at_least(self, count: int) -> Callable[[], bool]:
        return lambda: self._registered() >= count

    def _registered(self) -> int:
        try:
            return registered_task_managers(self.plan.rest_url)
        except FlinkRestUnavailable:
            return 0

    def start(self) -> None:
        """Write the config, start the JobManager and the TaskManagers, submit the job; ClusterError on failure."""
        write_conf_dir(self.settings, self.plan)
        self.settings.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        self.log(f"Flink cluster config: {self.plan.conf_dir}; logs: {self.plan.log_dir}")
        for component in self.processes:
            start_process(component, self.plan.log_dir)
        try:
            for component in self.processes:
                wait_healthy(component, self.plan.log_dir)
        except StackError as error:
            raise ClusterError(str(error)) from None
        self.log(f"Flink cluster up: JobManager {self.plan.rest_url}, {self.plan.task_managers} TaskManagers")
        restore_from = latest_checkpoint(self.settings.checkpoint_dir)
        if restore_from is not None:
            self.log(f"resuming from checkpoint {restore_from}")
        self._submit(restore_from)

    def _submit(self, restore_from: Path | None) -> None:
        client = Component(
            name="flink-run",
            address=self.plan.rest_url,
            command=submit_command(self.plan, restore_from),
            healthy=lambda: True,
            env=base_env(self.plan),
        )
        start_process(client, self.plan.log_dir)
        assert client.process is not None
        deadline = time.monotonic() + SUBMIT_TIMEOUT_S
        while client.process.poll() is None:
            if self._stopping or time.monotonic() > deadline:
                stop_process(client)
                if self._stopping:
                    return
                raise ClusterError(f"`flink run` did not submit the job within {SUBMIT_TIMEOUT_S:.0f} s")
            self._raise_if_dead()
            time.sleep(0.2)
        if client.process.returncode != 0:
            log = self.plan.log_dir / "flink-run.log"
            raise ClusterError(f"`flink run` failed with code {client.process.returncode}; see {log}:\n{tail(log, 30)}")
        self.log(f"job submitted at parallelism {self.plan.parallelism}; dashboard {self.plan.rest_url}")

    def _raise_if_dead(self) -> None:
        for component in self.processes:
            process = component.process
            if process is not None and process.poll() is not None:
                log = self.plan.log_dir / f"{component.name}.log"
                raise ClusterError(
                    f"{component.name} exited with code {process.returncode}; the job cannot run at parallelism "
                    f"{self.plan.task_managers} without it, so the cluster is stopped. "
                    f"See {log} and {self.plan.log_dir}/flink-*.log:\n{tail(log)}"
                )

    def supervise(self, poll_s: float = 0.5) -> None:
        """Block until `request_stop` (or SIGTERM/SIGINT); ClusterError as soon as a process has died."""
        while not self._stopping:
            self._raise_if_dead()
            time.sleep(poll_s)

    def request_stop(self, _signum: int = 0, _frame: object = None) -> None:
        self._stopping = True

    def stop(self) -> None:
        """Stop the TaskManagers, then the JobManager (SIGTERM, SIGKILL after a grace period); waits until gone.

        The job is suspended, not cancelled: its retained checkpoints stay for the next start to resume from.
        """
        self._stopping = True
        for component in reversed(self.processes):
            stop_process(component)


def run_cluster(settings: StreamSettings, log: Callable[[str], None]) -> None:
    """Start the cluster, submit the job and supervise until SIGTERM/SIGINT; ClusterError if any process dies."""
    cluster = LocalFlinkCluster(settings, plan_cluster(settings), log)
    signal.signal(signal.SIGTERM, cluster.request_stop)
    signal.signal(signal.SIGINT, cluster.request_stop)
    try:
        cluster.start()
        cluster.supervise()
    finally:
        cluster.stop()
