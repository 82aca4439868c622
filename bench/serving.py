"""`freshrank bench serving`: the feed API under open-loop load, against the path a Feast user would write.

It starts its own Redis, runs `feast apply`, fills the Feast online store with the
features of a synthetic world (replayed with `features/`, written through Feast),
writes the catalog, a candidate list of N items per user, and a LightGBM ranker
exported to ONNX, then starts `freshrank serve` as its own process.

- `freshrank`: a separate load-generator process (`bench.loadgen`) sends
  GET /v1/feed/{user} (or POST /v1/rank with the N candidates in the body) at a
  fixed rate; latency counts from each request's due time, so queueing shows.
- `capacity` (`--find-max`): after the fixed-rate run, the same API under rising
  open-loop rates (+25 % a step from 100/s until two steps in a row fail, then two
  bisections) with the criteria p99 <= 10 ms, < 1 % degraded, no errors; reports the
  highest rate that held and every step with the server's CPU per request and
  per-stage p50/p99 over that step.
- `baseline`: what a Feast user would write otherwise, in this process, one request
  at a time: `get_online_features` for the user and for the N candidate items,
  `feature_matrix`, the same ONNX model (one intra-op thread), sort. It is
  reported closed loop (it cannot sustain the API's rate: its achieved_rps is
  its ceiling).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.freshness import quantiles
from feature_repo.definitions import AS_OF_FIELD, ITEM_VIEW, USER_VIEW
from feature_repo.layout import FeatureRow, redis_host_port
from features.candidates import encode_candidates, popular_global_key, user_key
from features.definitions import ITEM_FEATURE_NAMES, USER_FEATURE_NAMES
from features.events import InteractionEvent
from features.item import replay_item
from features.ranking import feature_matrix
from features.user import replay_user
from registry.layout import load as load_registered
from sdk.clock import wall_clock_ms
from simulator.catalog import CatalogItem, write_catalog
from simulator.config import WorldConfig
from simulator.world import SyntheticWorld
from stack.components import redis_component
from stack.health import http_healthy, scrape
from stack.ports import free_port
from stack.processes import Component, running
from stack.settings import StackSettings
from streaming.online_store import OnlineStoreSink

Log = Callable[[str], None]


@dataclass(frozen=True)
class SeededWorld:
    users: list[str]
    items: list[str]
    catalog: list[CatalogItem]
    catalog_path: Path
    events: list[InteractionEvent]


def seed_world(
    redis_address: str,
    state_dir: Path,
    users: int = 2000,
    items: int = 1500,
    seconds: float = 60.0,
    seed: int = 0,
) -> SeededWorld:
    """Replay a synthetic world with `features/` and write every user's and item's row as the stream job does."""
    now = wall_clock_ms()
    world = SyntheticWorld(
        WorldConfig(
            users=users,
            items=items,
            seed=seed,
            rate=1000,
            seconds=seconds,
            start_ms=now - int(seconds * 1000) - 1000,
            record_ground_truth=False,
        )
    )
    events = list(world.events())
    catalog = world.catalog()
    categories = {item.item_id: item.category for item in catalog}
    by_user: dict[str, list[InteractionEvent]] = defaultdict(list)
    by_item: dict[str, list[InteractionEvent]] = defaultdict(list)
    for event in events:
        by_user[event.user_id].append(event)
        by_item[event.item_id].append(event)
    rows = [
        FeatureRow(USER_VIEW, user, dict(replay_user(evs, categories, now)), now, now * 1000, None)
        for user, evs in by_user.items()
    ] + [
        FeatureRow(ITEM_VIEW, item, dict(replay_item(evs, now)), now, now * 1000, None) for item, evs in by_item.items()
    ]
    sink = OnlineStoreSink(redis_address)
    sink.open()
    for start in range(0, len(rows), 500):
        sink.write(rows[start : start + 500])
    sink.close()
    catalog_path = state_dir / "catalog.parquet"
    write_catalog(catalog, catalog_path)
    return SeededWorld(sorted(by_user), [item.item_id for item in catalog], catalog, catalog_path, events)


def write_candidate_lists(redis_address: str, world: SeededWorld, n_candidates: int, seed: int = 0) -> None:
    """Every user gets n random catalog items as their cached list; the global popular list too."""
    import redis

    client = redis.Redis(*redis_host_port(redis_address))
    rng = random.Random(seed)
    pipe = client.pipeline(transaction=False)
    for user in world.users:
        pipe.set(user_key(user), encode_candidates(rng.sample(world.items, min(n_candidates, len(world.items)))))
    pipe.set(popular_global_key(), encode_candidates(world.items[:n_candidates]))
    pipe.execute()
    client.close()


def train_model(
    registry: Path,
    users: int = 1000,
    items: int = 500,
    seconds: float = 10_800.0,
    seed: int = 0,
    serving_trees: int | None = None,
) -> Path:
    """The project's ranker (`freshrank train` defaults: 3 h of a synthetic world), registered; returns its dir."""
    from registry.layout import register
    from training.evaluate import run_experiment
    from training.ranker import TrainConfig
    from training.sources import synthetic_source

    source = synthetic_source(users=users, items=items, seconds=seconds, seed=seed)
    experiment = run_experiment(source, train_config=TrainConfig(serving_trees=serving_trees))
    return register(registry, experiment.onnx, experiment.model_spec(source.name)).directory


def model_metrics(model_dir: Path) -> dict[str, Any]:
    metadata: dict[str, Any] = json.loads((model_dir / "metadata.json").read_text())
    extra = metadata.get("extra") or {}
    metrics = metadata.get("metrics") or {}
    return {
        "trees": extra.get("best_iteration"),
        "auc": (metrics.get("auc") or {}).get("ranker_live"),
        "ndcg@10": (metrics.get("ndcg@10") or {}).get("ranker_live"),
        "full_model": extra.get("full_model"),
    }


def http_json(url: str, timeout_s: float = 5.0) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")
    except OSError:
        return 0, None


def api_component(env: dict[str, str], port: int) -> Component:
    """`freshrank serve` with `env` added to this process's environment; healthy once /readyz says a model is loaded."""
    address = f"127.0.0.1:{port}"
    return Component(
        name="serve",
        address=address,
        command=[sys.executable, "-m", "cli", "serve", "--log-level", "warning"],
        healthy=lambda: http_healthy(address, "/readyz", timeout_s=1.0),
        env=env,
        startup_timeout_s=120.0,
    )


def raw_requests(world: SeededWorld, port: int, path: str, n_candidates: int, count: int = 500) -> list[str]:
    rng = random.Random(1)
    host = f"127.0.0.1:{port}"
    requests = []
    for _ in range(count):
        user = rng.choice(world.users)
        if path == "feed":
            requests.append(f"GET /v1/feed/{user}?k=20 HTTP/1.1\r\nHost: {host}\r\n\r\n")
        else:
            body = json.dumps({"user_id": user, "candidates": rng.sample(world.items, n_candidates), "k": 20})
            requests.append(
                f"POST /v1/rank HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n{body}"
            )
    return requests


def run_load(port: int, rps: float, seconds: float, requests: list[str], work_dir: Path) -> dict[str, Any]:
    spec_path = work_dir / "loadgen.json"
    spec_path.write_text(
        json.dumps({"host": "127.0.0.1", "port": port, "rps": rps, "seconds": seconds, "requests": requests})
    )
    result = subprocess.run(
        [sys.executable, "-m", "bench.loadgen", str(spec_path)],
        capture_output=True,
        text=True,
        timeout=seconds + 120,
        check=True,
    )
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def run_baseline(
    redis_address: str, feast_registry: Path, world: SeededWorld, model_dir: Path, n_candidates: int, seconds: float
) -> dict[str, Any]:
    """Feast get_online_features for the user and the candidates, feature_matrix, ONNX: one request at a time."""
    from feature_repo.store import open_store
    from serving.models import load_model

    store = open_store(redis_address, feast_registry)
    model = load_model(model_dir)
    metas = {item.item_id: item.meta for item in world.catalog}
    user_refs = [f"{USER_VIEW}:{name}" for name in (*USER_FEATURE_NAMES, AS_OF_FIELD)]
    item_refs = [f"{ITEM_VIEW}:{name}" for name in (*ITEM_FEATURE_NAMES, AS_OF_FIELD)]
    rng = random.Random(2)
    latencies, errors = [], 0
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        user = rng.choice(world.users)
        candidates = rng.sample(world.items, n_candidates)
        t0 = time.perf_counter()
        try:
            user_dict = store.get_online_features(features=user_refs, entity_rows=[{"user_id": user}]).to_dict()
            item_dict = store.get_online_features(
                features=item_refs, entity_rows=[{"item_id": i} for i in candidates]
            ).to_dict()
            user_row = {name: user_dict[name][0] for name in USER_FEATURE_NAMES}
            item_rows = [{name: item_dict[name][n] for name in ITEM_FEATURE_NAMES} for n in range(len(candidates))]
            matrix = feature_matrix(user_row, item_rows, [metas.get(i) for i in candidates], wall_clock_ms())
            scores = model.score(matrix)
            [candidates[i] for i in np.argsort(-scores)[:20]]
        except Exception:
            errors += 1
            continue
        latencies.append((time.perf_counter() - t0) * 1000)
    elapsed = time.monotonic() - started
    return {
        "latency_ms": quantiles(latencies),
        "errors": errors,
        "achieved_rps": round(len(latencies) / elapsed, 1),
        "requests": len(latencies),
        "mode": "closed loop, one request at a time",
    }


Histograms = dict[str, dict[str, Any]]


def stage_histograms(metrics_address: str) -> Histograms:
    """The API's stage histograms right now: per stage, cumulative counts per bucket bound, sum and count."""
    series = scrape(metrics_address) or {}
    out: Histograms = {}
    for key, value in series.items():
        if not key.startswith("freshrank_serve_stage_seconds_bucket{"):
            continue
        stage = key.split('stage="', 1)[1].split('"', 1)[0]
        bound = float(key.split('le="', 1)[1].split('"', 1)[0])
        entry = out.setdefault(stage, {"buckets": {}, "sum": 0.0, "count": 0.0})
        entry["buckets"][bound] = value
    for stage, entry in out.items():
        entry["sum"] = series.get(f'freshrank_serve_stage_seconds_sum{{stage="{stage}"}}', 0.0)
        entry["count"] = series.get(f'freshrank_serve_stage_seconds_count{{stage="{stage}"}}', 0.0)
    return out


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus' histogram_quantile: linear interpolation inside the bucket holding the q-th observation."""
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return float("nan")
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, cumulative in buckets:
        if cumulative >= rank:
            if bound == float("inf"):
                return lower_bound
            inside = cumulative - lower_count
            return lower_bound + (bound - lower_bound) * ((rank - lower_count) / inside if inside else 1.0)
        lower_bound, lower_count = bound, cumulative
    return lower_bound


def stage_summary(before: Histograms, after: Histograms) -> dict[str, dict[str, float]]:
    """Per stage over the window between two scrapes: requests, mean, p50 and p99 in ms (p99 interpolated)."""
    out: dict[str, dict[str, float]] = {}
    for stage, now in after.items():
        then = before.get(stage, {"buckets": {}, "sum": 0.0, "count": 0.0})
        count = now["count"] - then["count"]
        if count <= 0:
            continue
        buckets = sorted((bound, value - then["buckets"].get(bound, 0.0)) for bound, value in now["buckets"].items())
        out[stage] = {
            "count": count,
            "mean_ms": round(1000 * (now["sum"] - then["sum"]) / count, 3),
            "p50_ms": round(1000 * histogram_quantile(0.5, buckets), 3),
            "p99_ms": round(1000 * histogram_quantile(0.99, buckets), 3),
        }
    return out


def process_group_cpu_s(pgid: int) -> float:
    """User + system CPU seconds of every live process in a process group (the API and its workers)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # field 5 of stat: process group
            total += int(fields[11]) + int(fields[12])
    return total / tick


@dataclass(frozen=True)
class Window:
    """One load window against the API: the load generator's report plus the server's view of it."""

    rps: float
    load: dict[str, Any]
    stages: dict[str, dict[str, float]]
    cpu_ms_per_request: float | None

    def summary(self) -> dict[str, Any]:
        completed = self.load["completed"]
        return {
            "rps": self.rps,
            "latency_ms": quantiles(self.load["latencies_ms"]),
            "errors": sum(self.load["errors"].values()),
            "error_kinds": self.load["errors"],
            "sent": self.load["sent"],
            "degraded_share": round(self.load["degraded"] / max(1, completed), 4),
            "achieved_rps": round(self.load["achieved_rps"], 1),
            "server_cpu_ms_per_request": self.cpu_ms_per_request,
            "stages": self.stages,
        }

    def sustained(self, p99_ms: float, degraded_share: float) -> bool:
        s = self.summary()
        return bool(s["errors"] == 0 and s["latency_ms"]["p99"] <= p99_ms and s["degraded_share"] < degraded_share)


def measure(port: int, pgid: int, rps: float, seconds: float, requests: list[str], work_dir: Path) -> Window:
    """Open-loop load at `rps` for `seconds`, with the API's stage histograms and CPU over that window."""
    address = f"127.0.0.1:{port}"
    before, cpu_before = stage_histograms(address), process_group_cpu_s(pgid)
    load = run_load(port, rps, seconds, requests, work_dir)
    cpu = process_group_cpu_s(pgid) - cpu_before
    stages = stage_summary(before, stage_histograms(address))
    answered = load["completed"] + sum(load["errors"].values())
    return Window(rps, load, stages, round(1000 * cpu / answered, 3) if answered else None)


# What "sustained" means for the capacity search (the target).
SUSTAINED_P99_MS = 10.0
SUSTAINED_DEGRADED_SHARE = 0.01


def find_max_rate(
    port: int, pgid: int, requests: list[str], work_dir: Path, step_seconds: float, log: Log, start_rps: float = 100.0
) -> dict[str, Any]:
    """The highest rate the API sustains (p99 <= 10 ms, < 1 % degraded, no errors).

    Rates climb by 25 % from `start_rps` until two steps in a row fail, then the gap above the best
    passing rate is bisected twice. A ladder rather than a pure bisection: on a shared machine a low
    rate can fail on a scheduling hiccup, and one bad step must not end the search below the answer.
    """
    steps: list[dict[str, Any]] = []

    def attempt(rps: float) -> bool:
        window = measure(port, pgid, rps, step_seconds, requests, work_dir)
        ok = window.sustained(SUSTAINED_P99_MS, SUSTAINED_DEGRADED_SHARE)
        summary = window.summary()
        steps.append({**summary, "sustained": ok})
        log(
            f"  {rps:.0f}/s: p99 {summary['latency_ms']['p99']} ms, degraded {summary['degraded_share']:.2%}, "
            f"errors {summary['errors']}, cpu {summary['server_cpu_ms_per_request']} ms/request -> "
            f"{'sustained' if ok else 'not sustained'}"
        )
        return ok

    best, failed_above, failures_in_a_row = 0.0, None, 0
    rps = start_rps
    while failures_in_a_row < 2 and rps <= 5000:
        if attempt(rps):
            best, failures_in_a_row, failed_above = rps, 0, None
        else:
            failures_in_a_row += 1
            failed_above = failed_above or rps
        rps = round(rps * 1.25)
    high = failed_above or rps
    for _ in range(2):
        middle = round((best + high) / 2)
        if best == 0 or middle in (best, high):
            break
        if attempt(middle):
            best = middle
        else:
            high = middle
    return {
        "criteria": {"p99_ms_at_most": SUSTAINED_P99_MS, "degraded_share_below": SUSTAINED_DEGRADED_SHARE, "errors": 0},
        "step_seconds": step_seconds,
        "max_sustained_rps": best,
        "first_failing_rps": high,
        "steps": steps,
    }


def run(
    rps: float,
    seconds: float,
    candidates: int,
    log: Log,
    path: str = "feed",
    baseline_seconds: float | None = None,
    workers: int = 1,
    registry: Path | None = None,
    find_max: bool = False,
    step_seconds: float = 15.0,
    serving_trees: int | None = None,
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="freshrank-bench-serving-") as tmp:
        work = Path(tmp)
        stack = StackSettings(state_dir=work, redis_port=0)
        with running(redis_component(stack, free_port()), work / "logs") as redis:
            from feature_repo.store import apply

            feast_registry = work / "feast" / "registry.db"
            log(f"redis on {redis.address}; feast apply")
            apply(redis.address, feast_registry)
            log("replaying a synthetic world into the Feast online store")
            world = seed_world(redis.address, work, items=max(1500, candidates * 2))
            write_candidate_lists(redis.address, world, candidates)
            if registry is None:
                log(f"{len(world.users)} users, {len(world.items)} items; training the ranker (freshrank train)")
                registry = work / "models"
                model_dir = train_model(registry, serving_trees=serving_trees)
            else:
                model_dir = load_registered(registry).directory
            # Read now: a freshly trained model lives in the temporary directory removed below.
            model = {"version": int(model_dir.name), **model_metrics(model_dir)}
            port = free_port()
            env = {
                "FRESHRANK_SERVE_PORT": str(port),
                "FRESHRANK_SERVE_ONLINE_STORE__ADDRESS": redis.address,
                "FRESHRANK_SERVE_MODEL_REGISTRY": str(registry),
                "FRESHRANK_SERVE_CATALOG_PATH": str(world.catalog_path),
                "FRESHRANK_SERVE_EVENTS__TYPE": "memory",
                "FRESHRANK_SERVE_WORKERS": str(workers),
                "FRESHRANK_SERVE_ENVIRONMENT": "dev",
            }
            with running(api_component(env, port), work / "logs") as api:
                assert api.process is not None
                pgid = api.process.pid  # its own process group: the uvicorn workers are in it
                requests = raw_requests(world, port, path, candidates)
                log(f"warm-up, then {rps:.0f} requests/s for {seconds:.0f} s ({path}, {candidates} candidates)")
                run_load(port, min(rps, 50), 3, requests, work)
                window = measure(port, pgid, rps, seconds, requests, work)
                _, sample = http_json(f"http://127.0.0.1:{port}/v1/feed/{world.users[0]}")
                capacity = None
                if find_max:
                    log(f"capacity of {workers} worker(s): the highest rate with p99 <= 10 ms and < 1 % degraded")
                    capacity = find_max_rate(port, pgid, requests, work, step_seconds, log)
            log("baseline: Feast get_online_features + the same model")
            baseline = run_baseline(
                redis.address, feast_registry, world, model_dir, candidates, baseline_seconds or min(seconds, 20)
            )
    measured = window.summary()
    report: dict[str, Any] = {
        "benchmark": "serving",
        "rps": rps,
        "seconds": seconds,
        "candidates": candidates,
        "workers": workers,
        "model": model,
        "path": "GET /v1/feed/{user_id}?k=20" if path == "feed" else "POST /v1/rank (candidates in the body), k=20",
        **{key: value for key, value in measured.items() if key != "rps"},
        "stages_note": "server-side, from one worker's histograms over the measured window; p99 interpolated "
        "inside the bucket",
        "degraded_sample": sample.get("degraded") if isinstance(sample, dict) else None,
        "capacity": capacity,
        "baseline": baseline,
        "machine": {"cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)},
    }
    if report["latency_ms"]["p99"] and baseline["latency_ms"]["p99"]:
        report["baseline_p99_over_freshrank_p99"] = round(
            baseline["latency_ms"]["p99"] / report["latency_ms"]["p99"], 1
        )
    return report
