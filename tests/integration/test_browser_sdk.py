"""The browser SDK (sdk/js) in headless Debian Chromium against a running `freshrank up`.

A page served from its own origin loads the built SDK as an ES module and tracks events
the way a feed page would: one client flushes batches with fetch (CORS, X-API-Key), a
second one is left with a full queue and the page is navigated away, so only its
`navigator.sendBeacon` on page hide can deliver. Both users' clicks must show up in the
user features in Redis, computed by the stream job of the same stack.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from feature_repo.definitions import USER_VIEW
from stack.ports import free_port
from tests.integration.streamjob import online_rows

SDK_DIR = Path(__file__).resolve().parents[2] / "sdk" / "js"

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>feed</title></head>
<body><p>feed page</p>
<script type="module">
import { FreshrankClient } from "/sdk/index.js";
const api = new URLSearchParams(location.search).get("api");
// Batches by fetch, flushed quickly.
window.feed = new FreshrankClient({ endpoint: api, apiKey: "dev-key", batchSize: 20, flushIntervalMs: 100 });
// Never flushes by itself: only the page-hide beacon can deliver its events.
window.leaving = new FreshrankClient({ endpoint: api, apiKey: "dev-key", batchSize: 500, flushIntervalMs: 3600000 });
window.sdkReady = true;
</script></body></html>
"""


def freshrank(*args: str, env: dict[str, str], timeout: float = 400) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.fixture(scope="module")
def sdk_build() -> Path:
    if not (SDK_DIR / "node_modules").exists():
        pytest.fail("sdk/js has no node_modules: run `npm ci --prefix sdk/js` (make install and .ci/run do)")
    build = subprocess.run(["npm", "run", "build"], cwd=SDK_DIR, capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stdout + build.stderr
    return SDK_DIR / "dist" / "src"


@pytest.fixture(scope="module")
def page_server(sdk_build: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("page")
    (root / "index.html").write_text(PAGE)
    shutil.copytree(sdk_build, root / "sdk")

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def stack(page_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """`freshrank up --detach` on free ports (never the defaults: another stack may run), CORS for the page."""
    state_dir = str(tmp_path_factory.mktemp("browser-stack"))
    env = {**os.environ, "FRESHRANK_SERVE_PORT": str(free_port()), "FRESHRANK_SERVE_CORS_ORIGINS": page_server}
    ports = ["--broker-port", "0", "--redis-port", "0", "--stream-port", str(free_port()), "--flink-ui-port", "0"]
    up = freshrank("up", "--detach", "--state-dir", state_dir, *ports, env=env)
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        report = json.loads(freshrank("status", "--json", "--state-dir", state_dir, env=env).stdout)
        yield {**report, "state_dir": Path(state_dir)}
    finally:
        down = freshrank("down", "--state-dir", state_dir, env=env)
        assert down.returncode == 0, down.stdout + down.stderr


def user_clicks(stack: dict[str, Any], user_id: str) -> float:
    redis = stack["components"]["redis"]["address"]
    registry = stack["state_dir"] / "feast" / "registry.db"
    row = online_rows(redis, registry, USER_VIEW, [user_id])[user_id]
    return float(row.get("user_clicks_5m") or 0)


def wait_for_clicks(stack: dict[str, Any], user_id: str, expected: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while (seen := user_clicks(stack, user_id)) != expected:
        assert seen < expected, f"{user_id}: {seen} clicks in Redis, more than the {expected} tracked"
        assert time.monotonic() < deadline, f"{user_id}: {seen} of {expected} clicks reached Redis"
        time.sleep(0.5)


def test_events_from_the_browser_sdk_reach_the_features_in_redis(
    stack: dict[str, Any], page_server: str, browser: Any
) -> None:
    api = f"http://{stack['components']['serve']['address']}"
    browser.get(f"{page_server}/index.html?api={api}")
    deadline = time.monotonic() + 30
    while not browser.execute_script("return window.sdkReady === true"):
        assert time.monotonic() < deadline, browser.get_log("browser") if hasattr(browser, "get_log") else "no SDK"
        time.sleep(0.1)

    stats = browser.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        for (let i = 0; i < 30; i++) {
          const item = "web-i" + (i % 5);
          window.feed.track({ user_id: "web-u1", item_id: item, event_type: "impression", position: i % 10 });
          if (i % 3 === 0) window.feed.track({ user_id: "web-u1", item_id: item, event_type: "click" });
        }
        window.feed.flush().then(() => done(window.feed.stats));
        """
    )
    assert stats["queued"] == 0 and stats["accepted"] == 40 and stats["rejected"] == 0, stats

    queued = browser.execute_script(
        """
        for (let i = 0; i < 7; i++) {
          window.leaving.track({ user_id: "web-u2", item_id: "web-i" + i, event_type: "click", device: "web" });
        }
        return window.leaving.stats;
        """
    )
    assert queued["queued"] == 7 and queued["accepted"] == 0
    browser.get("about:blank")  # page hide: the beacon is the only way out for web-u2's events

    wait_for_clicks(stack, "web-u1", 10)
    wait_for_clicks(stack, "web-u2", 7)
