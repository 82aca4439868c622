"""The drawn world: the items (a catalog that keeps growing) and the users, as arrays indexed by number.

Drawn once per world from one seeded Generator, items first, then users; the
play-through (`simulator.run`) only reads them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from simulator.behaviour import REFERENCE_DURATION_MS
from simulator.config import WorldConfig
from simulator.sampling import rank_weights

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

MIN_DURATION_MS = 5_000
MAX_DURATION_MS = 180_000
INITIAL_CATALOG_SPAN_MS = 3 * 24 * 3600 * 1000
ITEMS_PER_CREATOR = 8
POPULARITY_TAU_MS = 6 * 3600 * 1000
# Clicks per event, a first guess to seed popularity near its steady state.
CLICKS_PER_EVENT_GUESS = 0.06


@dataclass(frozen=True)
class Items:
    """Every item of the span, numbered in creation order, so the items that exist at time t are a prefix."""

    created: IntArray
    category: IntArray
    quality: FloatArray
    """Logit scale: creator quality plus item noise, mean 0."""
    duration: IntArray
    creator: IntArray
    initial_popularity: FloatArray
    """Decayed click counts at start_ms, near their steady state for the configured traffic."""
    ids: list[str]
    creator_ids: list[str]
    category_names: list[str]
    by_category: IntArray
    """Item numbers grouped by category, then creation order: "an item of category k that exists at t"."""
    by_category_key: IntArray
    """`category * n_items + item` along `by_category`, sorted: searchsorted finds a category's prefix."""

    def __len__(self) -> int:
        return len(self.created)


@dataclass(frozen=True)
class Users:
    """Every user of the world, numbered from 0."""

    affinity: FloatArray
    """(users, categories): long-term preference plus the country's tilt, on the logit scale."""
    device_watch_bias: FloatArray
    activity: FloatArray
    """How likely each user is to start a session (sums to 1)."""
    activity_cdf: FloatArray
    ids: list[str]
    country: list[str]
    device: list[str]


def draw_items(rng: np.random.Generator, config: WorldConfig) -> Items:
    c = config.categories
    start, end = config.start_ms, config.end_ms
    category_weights = rng.dirichlet(np.full(c, 2.0))
    n_creators = max(1, config.items // ITEMS_PER_CREATOR)
    creator_category = rng.choice(c, size=n_creators, p=category_weights)
    creator_quality = rng.normal(0.0, 0.7, n_creators)

    n_new = int(rng.poisson(config.new_items_per_minute * config.seconds / 60.0))
    n_items = config.items + n_new
    initial_created = start - rng.integers(1, INITIAL_CATALOG_SPAN_MS, config.items)
    new_created = rng.integers(start, end, n_new)
    created: IntArray = np.sort(np.concatenate([initial_created, new_created])).astype(np.int64)
    creator = rng.integers(0, n_creators, n_items)
    own_category = rng.random(n_items) < 0.7
    category: IntArray = np.where(
        own_category, creator_category[creator], rng.choice(c, size=n_items, p=category_weights)
    ).astype(np.int64)
    quality: FloatArray = creator_quality[creator] + rng.normal(0.0, 0.7, n_items)
    duration: IntArray = np.clip(
        rng.lognormal(math.log(REFERENCE_DURATION_MS), 0.6, n_items), MIN_DURATION_MS, MAX_DURATION_MS
    ).astype(np.int64)
    # Popularity is a decayed click count; seed it near its steady state for the
    # configured traffic so the popular pool starts settled instead of being
    # taken over by whatever gets the first clicks.
    age_days = (start - created) / 86_400_000
    exposure = np.clip(age_days / 2, 0, 1)
    weight = np.exp(0.8 * quality + rng.normal(0.0, 0.7, n_items)) * exposure
    weight = np.where(created < start, weight, 0.0)
    steady_clicks = config.rate * CLICKS_PER_EVENT_GUESS * POPULARITY_TAU_MS / 1000
    width = max(6, len(str(n_items)))
    by_category: IntArray = np.lexsort((np.arange(n_items), category)).astype(np.int64)
    return Items(
        created=created,
        category=category,
        quality=quality,
        duration=duration,
        creator=creator,
        initial_popularity=steady_clicks * weight / max(float(weight.sum()), 1e-12),
        ids=[f"item-{i:0{width}d}" for i in range(n_items)],
        creator_ids=[f"creator-{i:0{width}d}" for i in range(n_creators)],
        category_names=[f"cat-{k:02d}" for k in range(c)],
        by_category=by_category,
        by_category_key=category[by_category] * n_items + by_category,
    )


def draw_users(rng: np.random.Generator, config: WorldConfig) -> Users:
    c, u = config.categories, config.users
    theta = 0.75 * rng.dirichlet(np.full(c, 0.3), u) + 0.25 / c
    user_country = rng.choice(len(config.countries), size=u, p=rank_weights(len(config.countries)))
    user_device = rng.choice(len(config.devices), size=u, p=rank_weights(len(config.devices)))
    country_tilt = rng.normal(0.0, 0.3, (len(config.countries), c))
    affinity: FloatArray = np.log(c * theta) + country_tilt[user_country]
    device_watch_bias: FloatArray = rng.normal(0.0, 0.2, len(config.devices))[user_device]
    activity = rng.lognormal(0.0, 1.0, u)
    cdf = np.cumsum(activity / activity.sum())
    cdf[-1] = 1.0
    width = max(6, len(str(u)))
    return Users(
        affinity=affinity,
        device_watch_bias=device_watch_bias,
        activity=activity / activity.sum(),
        activity_cdf=cdf,
        ids=[f"user-{i:0{width}d}" for i in range(u)],
        country=[config.countries[k] for k in user_country.tolist()],
        device=[config.devices[k] for k in user_device.tolist()],
    )
