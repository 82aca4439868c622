"""Child processes of the local stack: started in their own process group, waited for, stopped with all they started.

Written once and used by the supervisor, the local Flink cluster, the benchmarks and
the tests. Stopping never returns while a process of the group is left (a Flink JVM
outlives its Python parent by seconds and holds its port).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stack.settings import StackError


@dataclass
class Component:
    """One supervised child process and how to tell that it works."""

    name: str
    address: str
    command: list[str]
    healthy: Callable[[], bool]
    after_start: Callable[[], None] = lambda: None
    before_start: Callable[[], None] = lambda: None
    env: dict[str, str] = field(default_factory=dict)
    startup_timeout_s: float = 60.0
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    dashboard: str | None = None  # a web UI of the component, if it has one (the stream job's Flink dashboard)
    # Every /metrics address of the component when it has more than `address` (one per TaskManager).
    metrics: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        description = {
            "address": self.address,
            "pid": self.process.pid if self.process else None,
            "restarts": self.restarts,
            "command": self.command,
        }
        if self.dashboard is not None:
            description["dashboard"] = self.dashboard
        if self.metrics:
            description["metrics"] = self.metrics
        return description


def _die_with_parent() -> None:
    """Child-side hook: get SIGTERM when the supervisor dies, so no orphan outlives it (Linux)."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def start_process(component: Component, log_dir: Path) -> None:
    log_dir.mkdir(parents=True, exist_ok=True)
    component.before_start()
    log = open(log_dir / f"{component.name}.log", "ab")  # noqa: SIM115 - the child owns it
    try:
        component.process = subprocess.Popen(
            component.command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **component.env},
            # Own process group: stopping a component also stops what it started (the Flink JVM).
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
    except OSError as error:
        raise StackError(f"could not start {component.name} ({component.command[0]}): {error}") from None
    finally:
        log.close()


def wait_healthy(component: Component, log_dir: Path, timeout_s: float | None = None) -> None:
    timeout_s = timeout_s or component.startup_timeout_s
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if component.process is not None and component.process.poll() is not None:
            raise StackError(
                f"{component.name} exited with code {component.process.returncode} during start; "
                f"see {log_dir / (component.name + '.log')}:\n{tail(log_dir / (component.name + '.log'))}"
            )
        if component.healthy():
            component.after_start()
            return
        time.sleep(0.1)
    raise StackError(f"{component.name} did not become healthy at {component.address} within {timeout_s:.0f} s")


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group, from /proc.

    A component is its own process group (start_new_session), and what it starts
    stays in it: the Flink JVM of `freshrank stream` serves the job's /metrics
    port and outlives its Python parent by seconds. Waiting for the leader alone
    left that port taken when `freshrank down` returned.
    """
    if not pgid:
        return []
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the command (which may contain spaces and parentheses): state ppid pgrp ...
        state, _ppid, pgrp = stat.rpartition(")")[2].split()[:3]
        if int(pgrp) == pgid and state != "Z":
            members.append(int(entry.name))
    return members


def wait_group_gone(pgid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while group_members(pgid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def stop_group(pgid: int, grace_s: float = 10.0) -> None:
    """SIGTERM a process group, SIGKILL it after `grace_s`; return once none of it is left."""
    if pgid <= 0 or pgid == os.getpgrp():  # 0 would signal our own group
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    if not wait_group_gone(pgid, grace_s):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        wait_group_gone(pgid, grace_s)


def stop_process(component: Component, grace_s: float = 10.0) -> None:
    process = component.process
    if process is None:
        return
    stop_group(process.pid, grace_s)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(grace_s)


def signal_process(component: Component, sig: int, timeout_s: float = 60.0) -> None:
    """Send `sig` to the component's whole process group; returns once its leader has exited.

    With SIGKILL this is a crash (how the fault tests kill a job): unlike `stop_process` nothing gets a grace period.
    """
    process = component.process
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    process.wait(timeout_s)


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def running(component: Component, log_dir: Path, timeout_s: float | None = None) -> Iterator[Component]:
    """Start a component, wait until healthy, stop it on exit. Used by tests and benchmarks."""
    start_process(component, log_dir)
    try:
        wait_healthy(component, log_dir, timeout_s)
        yield component
    finally:
        stop_process(component)


def pid_alive(pid: int | None) -> bool:
    """Whether a process with this pid exists (0 and None never do)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
