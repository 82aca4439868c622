"""The serving benchmark's server-side figures: quantiles from histogram deltas, as Prometheus computes them."""

from __future__ import annotations

import math

from bench.serving import histogram_quantile, stage_summary


def test_histogram_quantile_interpolates_inside_the_bucket() -> None:
    buckets = [(0.001, 50.0), (0.002, 90.0), (0.004, 100.0), (math.inf, 100.0)]
    assert histogram_quantile(0.5, buckets) == 0.001
    assert math.isclose(histogram_quantile(0.7, buckets), 0.0015)
    assert math.isclose(histogram_quantile(0.99, buckets), 0.0038)
    assert math.isnan(histogram_quantile(0.99, [(0.001, 0.0), (math.inf, 0.0)]))


def test_stage_summary_covers_only_the_window_between_two_scrapes() -> None:
    before = {"score": {"buckets": {0.001: 1000.0, 0.002: 1000.0, math.inf: 1000.0}, "sum": 0.5, "count": 1000.0}}
    after = {"score": {"buckets": {0.001: 1000.0, 0.002: 1100.0, math.inf: 1100.0}, "sum": 0.65, "count": 1100.0}}
    summary = stage_summary(before, after)["score"]
    assert summary["count"] == 100 and summary["mean_ms"] == 1.5
    assert 1.0 < summary["p50_ms"] <= summary["p99_ms"] <= 2.0
