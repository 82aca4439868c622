"""The freshness benchmark's report drawn as a PNG: the share of rows at most so stale, job against baseline.

Both curves are cumulative distributions at the stream job's histogram bounds
(`freshrank_stream_freshness_seconds`): the job's from its histogram, the baseline's
from its raw samples binned at the same bounds. Between two bounds the line is drawn
straight; what the rows did there is not measured.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

FRESHNESS_BAR_MS = 1000.0


class PlotError(Exception):
    """The plot cannot be drawn; the message says what to fix."""


def check_plotting() -> None:
    """Refuse before a benchmark runs, not after, when the plot could not be drawn."""
    if importlib.util.find_spec("matplotlib") is None:
        raise PlotError(
            "--plot needs matplotlib, which is in the project's dev group: `uv sync` (or `pip install matplotlib`)"
        )


def plot_freshness(report: dict[str, Any], path: Path) -> Path:
    """Draw the job's and the baseline's freshness distributions of a `bench freshness` report into `path`."""
    check_plotting()
    import matplotlib

    matplotlib.use("Agg")  # no display: a file only
    import matplotlib.pyplot as plt

    runs: list[tuple[str, dict[str, Any]]] = [
        ("freshrank (PyFlink job)", report),
        ("baseline (consumer loop + Feast push)", report.get("baseline") or {}),
    ]
    missing = [label for label, run in runs if not run.get("freshness_cdf")]
    if missing:
        raise PlotError(f"no freshness distribution to plot for {', '.join(missing)}: no row was measured")
    figure, axes = plt.subplots(figsize=(8, 4.8), dpi=110)
    for label, run in runs:
        bounds = [bound for bound, _ in run["freshness_cdf"]]
        shares = [share for _, share in run["freshness_cdf"]]
        quantile = run["freshness_ms"]
        axes.plot(
            bounds,
            shares,
            marker="o",
            label=f"{label}: p50 {quantile['p50']:,.0f} ms, p99 {quantile['p99']:,.0f} ms, "
            f"{run['throughput_eps']:,.0f} events/s",
        )
    axes.axvline(FRESHNESS_BAR_MS, color="grey", linestyle="--", label="1 s")
    axes.set_xscale("log")
    axes.set_ylim(0, 1.02)
    axes.set_xlabel("freshness, ms (row readable minus its newest event's time; log scale)")
    axes.set_ylabel("share of rows at most this stale")
    axes.set_title(
        f"bench freshness: {report['rate_eps']:,.0f} events/s for {report['seconds']:.0f} s, "
        f"{report['events_sent']:,} events, commit {report.get('git_commit') or '?'}"
    )
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="upper left", fontsize="small")  # the curves rise to the right: this corner stays clear
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    plt.close(figure)
    return path
