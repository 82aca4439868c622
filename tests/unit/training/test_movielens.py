"""MovieLens conversion and the wheel checks, on a tiny fake wheel (no network)."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from features.events import MIN_EVENT_TIME_MS, EventType
from training import movielens
from training.errors import SourceError

INTER = (
    "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    "1\t10\t5\t881250949\n"
    "1\t11\t2\t881250960\n"
    "1\t12\t4\t881260000\n"  # more than 5 minutes later: a new slate
    "2\t10\t3\t881250000\n"
)
ITEMS = (
    "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n10\tA\t1995\tComedy Drama\n11\tB\t\t\n"
)
USERS = "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n1\t24\tM\tx\t1\n"


def fake_wheel(path: Path) -> str:
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in (("ml-100k.inter", INTER), ("ml-100k.item", ITEMS), ("ml-100k.user", USERS)):
            archive.writestr(movielens.WHEEL_DIR + name, text)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_ratings_become_slates_of_impressions_with_engagement_from_the_rating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    digest = fake_wheel(tmp_path / movielens.RECBOLE_WHEEL)
    monkeypatch.setattr(movielens, "RECBOLE_WHEEL_SHA256", digest)
    out = movielens.fetch_ml100k(tmp_path)  # the wheel is already cached: pip is not called
    source = movielens.ml100k_source(tmp_path)
    assert (out / "events.parquet").exists() and source.name == "ml-100k"
    events = source.events
    assert min(e.event_time_ms for e in events) == MIN_EVENT_TIME_MS  # shifted to 2020-01-01
    impressions = [e for e in events if e.event_type is EventType.IMPRESSION and e.user_id == "ml-user-1"]
    assert [(e.request_id, e.item_id, e.position) for e in impressions] == [
        ("ml-1-0", "ml-item-10", 0),
        ("ml-1-0", "ml-item-11", 1),
        ("ml-1-1", "ml-item-12", 0),
    ]
    outcomes = {(e.item_id, e.event_type) for e in events if e.user_id == "ml-user-1"}
    assert ("ml-item-10", EventType.COMPLETE) in outcomes and ("ml-item-12", EventType.COMPLETE) in outcomes
    assert ("ml-item-11", EventType.VIEW) in outcomes and ("ml-item-11", EventType.COMPLETE) not in outcomes
    assert source.catalog["ml-item-10"].category == "Comedy" and source.catalog["ml-item-11"].category is None
    assert source.catalog["ml-item-11"].created_ms is None


def test_a_wheel_with_the_wrong_hash_is_refused_and_deleted(tmp_path: Path) -> None:
    wheel = tmp_path / movielens.RECBOLE_WHEEL
    fake_wheel(wheel)
    with pytest.raises(SourceError, match="sha256"):
        movielens.download_wheel(tmp_path)
    assert not wheel.exists()


def test_a_failing_download_says_what_failed(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="failed"):
        movielens.download_wheel(tmp_path, pip=["false"])
