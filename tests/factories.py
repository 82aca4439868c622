"""Small builders of valid events for tests, and a check of what a module import pulls in."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from typing import Any

from features.events import EventType, InteractionEvent

NOW_MS = 1_795_000_000_000  # 2026-11-18, a fixed clock for pure tests


def make_event(**overrides: Any) -> InteractionEvent:
    event = InteractionEvent(
        event_id="e-1",
        user_id="u-1",
        item_id="i-1",
        event_type=EventType.VIEW,
        event_time_ms=NOW_MS - 1000,
        watch_ms=12_000,
        request_id="r-1",
        position=3,
        variant="control",
        device="ios",
        country="US",
    )
    return dataclasses.replace(event, **overrides)


def avro_string_length(length: int) -> bytes:
    """Zigzag varint length prefix of an Avro string of `length` bytes: frames hostile string bodies."""
    n, out = length << 1, bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def top_level_packages_imported_by(*modules: str) -> set[str]:
    """The top-level packages that importing `modules` loads, in a fresh interpreter (not this test process)."""
    code = (
        f"import json, sys; import {', '.join(modules)}; "
        "json.dump(sorted({m.partition('.')[0] for m in sys.modules}), sys.stdout)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(json.loads(done.stdout))
