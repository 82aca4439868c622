"""An open-loop HTTP load generator: requests leave at a fixed arrival rate whatever the server does.

Run as its own process (`python -m bench.loadgen SPEC.json`) so the load
generator's CPU does not share an event loop or a GIL with the server. Request
i is due at start + i / rps; its latency is measured from that due time, not
from when it was sent, so a server that falls behind shows the queueing it
causes instead of hiding it (no coordinated omission). Connections are
HTTP/1.1 keep-alive, opened on demand when all are busy.

The spec file: {"host", "port", "rps", "seconds", "timeout_s", "requests": [raw
request bytes as latin-1 strings]}; requests are used round-robin. Prints one
JSON object: latencies (ms) of completed requests, errors by kind, achieved rate.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Results:
    latencies_ms: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    degraded: int = 0
    first_due: float = 0.0
    last_done: float = 0.0

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def exchange(self, request: bytes) -> tuple[int, bytes]:
        """Send one request, read the whole response; returns the status code and the body."""
        self.writer.write(request)
        status_line = await self.reader.readuntil(b"\r\n")
        status = int(status_line.split(b" ", 2)[1])
        length = 0
        while True:
            line = await self.reader.readuntil(b"\r\n")
            if line == b"\r\n":
                break
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        body = await self.reader.readexactly(length) if length else b""
        return status, body

    def close(self) -> None:
        self.writer.close()


async def run(spec: dict[str, Any]) -> Results:
    host, port = spec["host"], int(spec["port"])
    rps, seconds, timeout_s = float(spec["rps"]), float(spec["seconds"]), float(spec.get("timeout_s", 5.0))
    requests = [r.encode("latin-1") for r in spec["requests"]]
    idle: list[Connection] = []
    results = Results()
    loop = asyncio.get_running_loop()

    async def one(request: bytes, due: float) -> None:
        connection = idle.pop() if idle else None
        try:
            if connection is None:
                reader, writer = await asyncio.open_connection(host, port)
                connection = Connection(reader, writer)
            status, body = await asyncio.wait_for(connection.exchange(request), timeout_s)
        except TimeoutError:
            results.error("timeout")
            if connection is not None:
                connection.close()
            return
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as error:
            results.error(type(error).__name__)
            if connection is not None:
                connection.close()
            return
        done = loop.time()
        idle.append(connection)
        if status != 200:
            results.error(f"http_{status}")
            return
        results.latencies_ms.append((done - due) * 1000)
        results.last_done = done
        if b'"degraded":[]' not in body:
            results.degraded += 1

    total = int(rps * seconds)
    start = loop.time() + 0.2
    results.first_due = start
    tasks = []
    for i in range(total):
        due = start + i / rps
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(requests[i % len(requests)], due)))
    await asyncio.gather(*tasks)
    for connection in idle:
        connection.close()
    return results


def main() -> None:
    spec = json.loads(open(sys.argv[1]).read())
    import uvloop

    wall = time.monotonic()
    results = uvloop.run(run(spec))
    elapsed = results.last_done - results.first_due if results.latencies_ms else 0.0
    report = {
        "latencies_ms": results.latencies_ms,
        "errors": results.errors,
        "completed": len(results.latencies_ms),
        "degraded": results.degraded,
        "sent": int(float(spec["rps"]) * float(spec["seconds"])),
        "achieved_rps": len(results.latencies_ms) / elapsed if elapsed > 0 else 0.0,
        "wall_s": time.monotonic() - wall,
    }
    sys.stdout.write(json.dumps(report))


if __name__ == "__main__":
    main()
