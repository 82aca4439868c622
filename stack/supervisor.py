"""`freshrank up`'s supervisor: starts the components in order, restarts the dead, records what runs.

What it runs is written to `<state_dir>/state.json` so `freshrank status` and
`freshrank down` can find it from another process.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stack.processes import Component, start_process, stop_group, stop_process, tail, wait_healthy
from stack.settings import StackError, StackSettings


class Supervisor:
    """Starts components in order, restarts any that die, stops them all in reverse on SIGINT/SIGTERM."""

    MAX_RESTARTS = 5

    def __init__(self, settings: StackSettings, components: list[Component], log: Callable[[str], None]) -> None:
        self.settings = settings
        self.components = components
        self.log = log
        self._stopping = False

    @property
    def log_dir(self) -> Path:
        return self.settings.state_dir / "logs"

    def run(self, on_ready: Callable[[], None] = lambda: None) -> None:
        signal.signal(signal.SIGTERM, self._request_stop)
        signal.signal(signal.SIGINT, self._request_stop)
        try:
            for component in self.components:
                self.log(f"starting {component.name} on {component.address}")
                start_process(component, self.log_dir)
                self._write_state(ready=False)
                wait_healthy(component, self.log_dir)
                self.log(f"{component.name} is healthy")
            self._write_state(ready=True)
            on_ready()
            while not self._stopping:
                self._restart_dead()
                time.sleep(0.5)
        finally:
            self.stop()

    def stop(self) -> None:
        self._stopping = True
        for component in reversed(self.components):
            if component.process is not None and component.process.poll() is None:
                self.log(f"stopping {component.name}")
            stop_process(component)
        self.settings.state_file.unlink(missing_ok=True)

    def _request_stop(self, signum: int, _frame: object) -> None:
        self._stopping = True

    def _restart_dead(self) -> None:
        for component in self.components:
            process = component.process
            if process is None or process.poll() is None:
                continue
            if component.restarts >= self.MAX_RESTARTS:
                raise StackError(
                    f"{component.name} died {component.restarts + 1} times; giving up. "
                    f"Last log lines:\n{tail(self.log_dir / (component.name + '.log'))}"
                )
            component.restarts += 1
            self.log(f"{component.name} exited with code {process.returncode}; restart {component.restarts}")
            # What the dead process started (the Flink JVM) may still hold its port.
            stop_group(process.pid)
            time.sleep(min(2.0**component.restarts / 4, 5.0))
            start_process(component, self.log_dir)
            wait_healthy(component, self.log_dir)
            self._write_state(ready=True)

    def _write_state(self, ready: bool) -> None:
        state = {
            "supervisor_pid": os.getpid(),
            "ready": ready,
            "state_dir": str(self.settings.state_dir.resolve()),
            "components": {c.name: c.describe() for c in self.components},
        }
        write_state(self.settings.state_file, state)


def write_state(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(state, indent=2))
    temporary.replace(path)


def read_state(settings: StackSettings) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads(settings.state_file.read_text())
    except (OSError, ValueError):
        return None
    return state
