"""The declared views `freshrank bench freshness --declared N` adds are ones the stream job accepts."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.freshness import declared_repo
from feature_repo.declared import check, drafts_from_repo

pytestmark = pytest.mark.filterwarnings("ignore:Stream feature views are experimental:RuntimeWarning")


def test_the_bench_declares_n_aggregations_the_job_runs(tmp_path: Path) -> None:
    repo = declared_repo(tmp_path, "bench-freshrank", 10)
    accepted, refused = check(drafts_from_repo(repo), "bench-freshrank")
    assert refused == []
    assert {view.name: len(view.aggregations) for view in accepted} == {
        "bench_item_declared": 5,
        "bench_user_declared": 5,
    }
    functions = {a.function for view in accepted for a in view.aggregations}
    assert functions == {"sum", "count", "mean", "max", "count_distinct", "min"}
