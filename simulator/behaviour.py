"""How simulated users behave: the probabilities and timings every outcome is drawn from.

The model, per impression of item i to user u at position p (all terms on the
logit scale unless said otherwise):

- examination: ``p_examine = (1 + p) ** -EXAMINATION_DECAY`` (position bias).
- affinity ``a = log(C * theta_u[c_i]) + country_tilt[c_i] + drift_u[c_i]``:
  a long-term preference ``theta_u`` (mostly a few categories), a per-country
  tilt, and a short-term drift that resets to a random session mood when a
  session starts, decays and wanders with every slate, and moves towards the
  categories the user just clicked and watched.
- freshness ``f = exp(-age / FRESHNESS_TAU_MS)``, quality ``q`` (creator plus item).
- ``relevance = P(click | examined)
  = sigmoid(CLICK_BIAS + CLICK_AFFINITY*a + CLICK_QUALITY*q + CLICK_FRESHNESS*f)``
- after a click the user watches: completes with ``sigmoid(w - 1 - 0.6*log(duration/25 s))``,
  else watches the fraction ``U ** exp(-w)`` of the item (U uniform), with
  ``w = WATCH_BIAS + WATCH_AFFINITY*a + WATCH_QUALITY*q + WATCH_FRESHNESS*f + device bias``.
- engaged watch = a complete, or a view with ``watch_ms >= ENGAGED_WATCH_FRACTION * duration_ms``.
- likes and shares follow engaged watches only; a skip follows an examined,
  not clicked impression with probability SKIP_GIVEN_PASSED.

Timing: a slate's impressions at request time + 5 ms per position; clicks
0.3-5 s and skips 0.2-4 s after the impression; view and complete when the
watch ends (click + watch_ms), likes and shares during the watch. Sessions:
users hold one of a fixed number of session slots, ask for about
SESSION_MEAN_REQUESTS slates, then rest for minutes (less when the traffic
needs more users than are rested).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

EXAMINATION_DECAY = 0.7
ENGAGED_WATCH_FRACTION = 0.5
SKIP_GIVEN_PASSED = 0.7

CLICK_BIAS = -2.2
CLICK_AFFINITY = 0.9
CLICK_QUALITY = 0.6
CLICK_FRESHNESS = 0.8
WATCH_BIAS = -1.8
WATCH_AFFINITY = 0.5
WATCH_QUALITY = 0.9
WATCH_FRESHNESS = 0.3
COMPLETE_OFFSET = -1.0
COMPLETE_DURATION = 0.6
REFERENCE_DURATION_MS = 25_000
LIKE_BIAS, LIKE_AFFINITY, LIKE_QUALITY = -3.0, 0.5, 0.8
SHARE_BIAS, SHARE_AFFINITY, SHARE_QUALITY = -4.5, 0.3, 0.9
FRESHNESS_TAU_MS = 6 * 3600 * 1000

# Interest drift, in affinity units.
MOOD_SD = 0.6
DRIFT_DECAY = 0.85
DRIFT_SD = 0.2
CLICK_BOOST = 0.15
ENGAGED_BOOST = 0.15
# Drift stays within +-DRIFT_LIMIT so a run of clicks cannot lock a user into one category.
DRIFT_LIMIT = 1.5

# Sessions: a user asks for several slates in a row, then rests for minutes.
SESSION_MEAN_REQUESTS = 8
SESSION_PACE_S = 20.0
SESSION_GAP_MIN_MS = 60_000
SESSION_GAP_MEAN_MS = 240_000

# Outcome timing relative to the impression (click, skip) or the click (the rest).
IMPRESSION_SPACING_MS = 5
CLICK_DELAY_MIN_MS = 300
CLICK_DELAY_MEAN_MS = 1200
CLICK_DELAY_MAX_MS = 5000
SKIP_DELAY_MIN_MS = 200
SKIP_DELAY_MEAN_MS = 1000
SKIP_DELAY_MAX_MS = 4000


def sigmoid(z: FloatArray) -> FloatArray:
    out: FloatArray = 1.0 / (1.0 + np.exp(-z))
    return out
