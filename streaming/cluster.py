"""A local standalone Flink session cluster from the PyFlink wheel's own distribution: what to run, not running it.

Why: in thread mode every Python operator of one JVM runs in that JVM's one
embedded interpreter, under one GIL, so parallelism inside the mini-cluster
cannot use a second core. A standalone cluster (a JobManager and N
TaskManagers, each its own JVM and interpreter, one slot each) runs the job at
parallelism N on N cores; it is also how the job runs under the Flink operator
(`streaming.job_main` submitted to a session cluster). With `split_operators`
the item operator has a slot sharing group of its own: half the TaskManagers
read and compute user features, the other half compute item features, at
parallelism N / 2 (README, "Scale-out").

This module builds the cluster's configuration directory, the commands that
start the JobManager, the TaskManagers and the submission, and each
TaskManager's environment. It starts no process: `stack/flink_cluster.py` supervises
them with the local stack's process helpers.

Metrics: each TaskManager's interpreter serves /metrics on its own port, the
job's `metrics_port` plus the TaskManager's index (TaskManager 0 on
`metrics_port`, 1 on `metrics_port + 1`, ...), told through the TaskManager's
environment (`TASK_MANAGER_METRICS_PORT_ENV`, read by `streaming.metrics.serve`).
Readers scrape them all and sum the counters (`stack.health.scrape_all`).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from streaming.job import flink_options
from streaming.metrics import TASK_MANAGER_METRICS_PORT_ENV
from streaming.settings import StreamSettings

# Sized for a laptop: the defaults of the wheel's config.yaml (1600m + 1728m per TaskManager) add up to
# 5 GB with two TaskManagers. State is on the JVM heap (hashmap backend); the Python operators' own
# memory (entity caches) is outside these figures, in the same process.
JOBMANAGER_PROCESS_MEMORY = "1024m"
TASKMANAGER_PROCESS_MEMORY = "1536m"
# Managed memory serves RocksDB and process-mode Python workers, neither of which the job uses.
TASKMANAGER_MANAGED_FRACTION = "0.05"

# Files of the wheel's conf/ that the start scripts read besides config.yaml (log4j-console for
# start-foreground, log4j-cli for `flink run`).
_LOGGING_FILES = ("log4j-console.properties", "log4j-cli.properties", "log4j.properties", "logback-console.xml")


def flink_home() -> Path:
    """The Flink distribution inside the PyFlink wheel (bin/, lib/, conf/, opt/)."""
    import pyflink

    return Path(pyflink.__file__).parent


def project_root() -> Path:
    """The directory holding the `streaming` package: the TaskManagers' interpreters import the job from it."""
    return Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class ClusterPlan:
    """Where one local cluster listens and keeps its files; everything else derives from it."""

    task_managers: int
    parallelism: int  # task_managers, or half of them when the item operator has TaskManagers of its own
    host: str
    rest_port: int
    rpc_port: int
    metrics_port: int
    work_dir: Path  # config, pid files and temporary files
    log_dir: Path  # Flink's logs, the operators' log lines included

    @property
    def conf_dir(self) -> Path:
        return self.work_dir / "conf"

    @property
    def rest_url(self) -> str:
        return f"http://{self.host}:{self.rest_port}"

    def metrics_ports(self) -> list[int]:
        """TaskManager i serves /metrics on metrics_port + i (none when metrics are off)."""
        if not self.metrics_port:
            return []
        return [self.metrics_port + index for index in range(self.task_managers)]


def cluster_options(settings: StreamSettings, plan: ClusterPlan) -> dict[str, str]:
    """The cluster's Flink configuration: the job's options of the mini-cluster, plus where each process listens.

    The restore path is not here: a session cluster's config applies to every job it runs, so the
    checkpoint to resume from goes with the submission (`flink run -s`).
    """
    values = flink_options(settings, restore_from=None)
    values.update(
        {
            "parallelism.default": str(plan.parallelism),
            # One slot per TaskManager: each parallel instance gets its own JVM and interpreter (its own GIL).
            "taskmanager.numberOfTaskSlots": "1",
            "jobmanager.rpc.address": plan.host,
            "jobmanager.rpc.port": str(plan.rpc_port),
            "jobmanager.bind-host": plan.host,
            "taskmanager.bind-host": plan.host,
            "taskmanager.host": plan.host,
            "rest.address": plan.host,
            "rest.bind-address": plan.host,
            "rest.port": str(plan.rest_port),
            "jobmanager.memory.process.size": JOBMANAGER_PROCESS_MEMORY,
            "taskmanager.memory.process.size": TASKMANAGER_PROCESS_MEMORY,
            "taskmanager.memory.managed.fraction": TASKMANAGER_MANAGED_FRACTION,
            # A TaskManager that dies is replaced by nothing here: fail over to the survivors' slots quickly
            # rather than wait out the default 50 s heartbeat timeout (`freshrank stream` exits anyway).
            "heartbeat.timeout": "20000",
            "env.pid.dir": str(plan.work_dir.resolve()),
            "io.tmp.dirs": str((plan.work_dir / "tmp").resolve()),
        }
    )
    return values


def wheel_config(home: Path) -> dict[str, str]:
    """The wheel's conf/config.yaml, flattened to dotted keys (it carries the JVM's --add-opens for Java 17)."""
    loaded: Any = yaml.safe_load((home / "conf" / "config.yaml").read_text()) or {}
    return flatten(loaded)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value).lower() if isinstance(value, bool) else str(value)
    return flat


def config_yaml(options: Mapping[str, str]) -> str:
    """config.yaml in Flink's flattened form: one `key: value` per line, every value a YAML string."""
    return yaml.safe_dump(dict(sorted(options.items())), default_flow_style=False, width=10**6)


def write_conf_dir(settings: StreamSettings, plan: ClusterPlan, home: Path | None = None) -> Path:
    """Write the cluster's FLINK_CONF_DIR: the wheel's config overlaid with `cluster_options`, and its log4j files."""
    home = home or flink_home()
    plan.conf_dir.mkdir(parents=True, exist_ok=True)
    (plan.work_dir / "tmp").mkdir(parents=True, exist_ok=True)
    for name in _LOGGING_FILES:
        if (home / "conf" / name).exists():
            shutil.copyfile(home / "conf" / name, plan.conf_dir / name)
    options = {**wheel_config(home), **cluster_options(settings, plan)}
    (plan.conf_dir / "config.yaml").write_text(config_yaml(options))
    return plan.conf_dir


def base_env(plan: ClusterPlan, home: Path | None = None) -> dict[str, str]:
    """Variables every process of the cluster needs (the start scripts find the distribution and config by them)."""
    home = home or flink_home()
    venv_bin = str(Path(sys.executable).parent)
    return {
        "FLINK_HOME": str(home),
        "FLINK_CONF_DIR": str(plan.conf_dir.resolve()),
        "FLINK_LOG_DIR": str(plan.log_dir.resolve()),
        "FLINK_PID_DIR": str(plan.work_dir.resolve()),
        # The TaskManagers' embedded interpreters import `streaming` (the job's functions are pickled by
        # reference to it); PyFlink's client runs `python` from PATH.
        "PYTHONPATH": str(project_root()),
        "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""),
    }


def jobmanager_command(home: Path | None = None) -> list[str]:
    home = home or flink_home()
    return ["bash", str(home / "bin" / "jobmanager.sh"), "start-foreground"]


def taskmanager_command(home: Path | None = None) -> list[str]:
    home = home or flink_home()
    return ["bash", str(home / "bin" / "taskmanager.sh"), "start-foreground"]


def taskmanager_env(plan: ClusterPlan, index: int) -> dict[str, str]:
    """TaskManager `index`'s own variables: the port its interpreter serves /metrics on."""
    ports = plan.metrics_ports()
    return {TASK_MANAGER_METRICS_PORT_ENV: str(ports[index])} if ports else {}


def submit_command(plan: ClusterPlan, restore_from: Path | None, home: Path | None = None) -> list[str]:
    """`flink run` of `streaming.job_main`, detached, at the plan's parallelism; resuming from `restore_from` if given.

    The client builds the graph in a Python process of its own, configured (like the operators,
    whose settings it pickles) by the FRESHRANK_STREAM_* variables of its environment.
    """
    home = home or flink_home()
    command = [
        "bash",
        str(home / "bin" / "flink"),
        "run",
        "--detached",
        "--jobmanager",
        f"{plan.host}:{plan.rest_port}",
        "--parallelism",
        str(plan.parallelism),
        "--pyClientExecutable",
        sys.executable,
        "--pyExecutable",
        sys.executable,
    ]
    if restore_from is not None:
        command += ["--fromSavepoint", restore_from.resolve().as_uri()]
    return [*command, "--pyModule", "streaming.job_main"]
