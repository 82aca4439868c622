"""The freshness benchmark's distributions (job histogram and baseline samples) and their PNG."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest, values
from typer.testing import CliRunner

from bench.freshness import histogram_cdf, samples_cdf
from bench.plot import PlotError, plot_freshness
from cli.main import app

BUCKETS = (0.05, 0.1, 0.5, 1.0, 5.0)


@pytest.fixture(autouse=True)
def in_memory_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    """As the job keeps them (streaming/metrics.py): once Feast is imported, prometheus_client's default
    multiprocess values would share one file per metric name between the tests of this process."""
    monkeypatch.setattr(values, "ValueClass", values.MutexValue)


def scraped(observations: list[float]) -> dict[str, float]:
    """What `stack.health.scrape` makes of a process exposing the job's freshness histogram."""
    registry = CollectorRegistry()
    histogram = Histogram("freshrank_stream_freshness_seconds", "freshness", buckets=BUCKETS, registry=registry)
    for value in observations:
        histogram.observe(value)
    series = {}
    for line in generate_latest(registry).decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            series[name] = float(value)
    return series


def test_the_job_distribution_counts_only_rows_between_the_two_scrapes() -> None:
    before = scraped([30.0, 30.0])  # start-up rows, left out
    after = scraped([30.0, 30.0, 0.02, 0.07, 0.07, 0.3, 2.0])
    assert histogram_cdf(after, before) == [[50.0, 0.2], [100.0, 0.6], [500.0, 0.8], [1000.0, 0.8], [5000.0, 1.0]]
    assert histogram_cdf(before, before) == []


def test_baseline_samples_are_binned_at_the_job_bounds_like_the_histogram() -> None:
    bounds = [50.0, 100.0, 500.0, 1000.0, 5000.0]
    samples = [20.0, 70.0, 70.0, 300.0, 2000.0]
    assert samples_cdf(samples, bounds) == histogram_cdf(scraped([s / 1000 for s in samples]), {})
    assert samples_cdf([100.0], [100.0]) == [[100.0, 1.0]]  # a bound includes its own value, as `le` does
    assert samples_cdf([], bounds) == []


def report(job_cdf: list[list[float]], baseline_cdf: list[list[float]]) -> dict[str, object]:
    run = {"freshness_ms": {"p50": 210.0, "p99": 1200.0}, "throughput_eps": 1000.0}
    return {
        "rate_eps": 1000.0,
        "seconds": 30.0,
        "events_sent": 30_000,
        "git_commit": "abc1234",
        **run,
        "freshness_cdf": job_cdf,
        "baseline": {**run, "freshness_cdf": baseline_cdf},
    }


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_the_plot_is_a_png_of_both_distributions(tmp_path: Path) -> None:
    cdf = [[50.0, 0.1], [500.0, 0.7], [5000.0, 1.0]]
    path = plot_freshness(report(cdf, [[50.0, 0.0], [500.0, 0.1], [5000.0, 0.9]]), tmp_path / "out" / "f.png")
    assert png_size(path) == (880, 528)  # 8 x 4.8 inches at 110 dpi


def test_a_run_without_measured_rows_is_refused_with_the_side_that_lacks_them(tmp_path: Path) -> None:
    with pytest.raises(PlotError, match=r"baseline .*no row was measured"):
        plot_freshness(report([[50.0, 1.0]], []), tmp_path / "f.png")
    assert not (tmp_path / "f.png").exists()


def test_plot_with_another_benchmark_mode_is_refused_before_anything_runs(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["bench", "freshness", "--find-max", "--plot", str(tmp_path / "f.png")])
    assert result.exit_code == 2
    assert "--plot draws the job against the baseline" in result.output
