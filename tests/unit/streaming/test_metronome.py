"""The tick metronome spaces ticks evenly and never catches up in a burst (the old datagen source's ~1 s floor)."""

from __future__ import annotations

import pytest

from streaming.operators import Metronome


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 6))
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock(100.0)
    monkeypatch.setattr("streaming.operators.time.monotonic", fake.monotonic)
    monkeypatch.setattr("streaming.operators.time.sleep", fake.sleep)
    return fake


def test_ticks_pass_one_interval_apart(clock: FakeClock) -> None:
    metronome = Metronome(50)
    passed = []
    for n in range(5):
        assert metronome.map(n) == n
        passed.append(round(clock.now - 100.0, 6))
    assert passed == [0.0, 0.02, 0.04, 0.06, 0.08]


def test_time_spent_downstream_counts_towards_the_interval(clock: FakeClock) -> None:
    metronome = Metronome(50)
    metronome.map(0)
    clock.now += 0.015  # the tick took 15 ms to hand on
    metronome.map(1)
    assert clock.slept == [0.005]


def test_after_a_stall_ticks_do_not_burst_to_catch_up(clock: FakeClock) -> None:
    metronome = Metronome(50)
    metronome.map(0)
    clock.now += 1.0  # a GC pause, a busy machine
    metronome.map(1)  # late: passes at once
    metronome.map(2)  # then one interval again, not the 49 ticks "owed"
    assert clock.slept == [0.02]
