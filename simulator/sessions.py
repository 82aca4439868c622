"""Sessions: users hold one of a fixed number of session slots, ask for about SESSION_MEAN_REQUESTS slates, then rest.

A slot whose session ends gets a user who has rested (picked by activity), or, when
everybody is resting, the one who has rested longest. A new session starts with a
random mood: the user's interest drift is reset.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from simulator.behaviour import MOOD_SD, SESSION_GAP_MEAN_MS, SESSION_GAP_MIN_MS, SESSION_MEAN_REQUESTS
from simulator.config import WorldConfig
from simulator.population import Users

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

_PICK_TRIES = 8


class Sessions:
    """Which user holds each session slot, who is active, and when each resting user may come back."""

    def __init__(self, cfg: WorldConfig, users: Users, slots: int, rng: np.random.Generator, drift: FloatArray) -> None:
        """Fill every slot with a user (by activity) and give each a session mood in `drift`."""
        self.cfg, self.users, self.slots = cfg, users, slots
        first = rng.choice(cfg.users, size=slots, replace=False, p=users.activity)
        self.slot_user: list[int] = first.tolist()
        self.active: BoolArray = np.zeros(cfg.users, dtype=bool)
        self.active[first] = True
        self.available_at: IntArray = np.full(cfg.users, cfg.start_ms - 1, dtype=np.int64)
        drift[first] = rng.normal(0.0, MOOD_SD, (slots, cfg.categories))

    def assign(self, rng: np.random.Generator, times: IntArray, drift: FloatArray) -> IntArray:
        """Hand each request to a session slot; a slot whose session ends gets a new user."""
        cfg = self.cfg
        n = len(times)
        slots = rng.integers(0, self.slots, n).tolist()
        ends = (rng.random(n) < 1.0 / SESSION_MEAN_REQUESTS).tolist()
        n_end = sum(ends)
        rests = SESSION_GAP_MIN_MS + rng.exponential(SESSION_GAP_MEAN_MS - SESSION_GAP_MIN_MS, n_end)
        gaps = rests.astype(np.int64).tolist()
        candidates = np.searchsorted(self.users.activity_cdf, rng.random((n_end, _PICK_TRIES)), side="right")
        candidates = np.minimum(candidates, cfg.users - 1).tolist()
        moods = rng.normal(0.0, MOOD_SD, (n_end, cfg.categories))
        users = [0] * n
        slot_user, active, available_at = self.slot_user, self.active, self.available_at
        ended = 0
        time_list = times.tolist()
        for j in range(n):
            slot = slots[j]
            user = slot_user[slot]
            users[j] = user
            if not ends[j]:
                continue
            now = time_list[j]
            active[user] = False
            available_at[user] = now + gaps[ended]
            chosen = -1
            for candidate in candidates[ended]:
                if not active[candidate] and available_at[candidate] <= now:
                    chosen = candidate
                    break
            if chosen < 0:
                # Everybody likely is resting: the one who has rested longest comes back early.
                chosen = int(np.argmin(np.where(active, np.iinfo(np.int64).max, available_at)))
            active[chosen] = True
            slot_user[slot] = chosen
            drift[chosen] = moods[ended]
            ended += 1
        return np.asarray(users, dtype=np.int64)
