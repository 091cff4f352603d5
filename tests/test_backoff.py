"""Reconnect delays: bounded, growing, jittered, never zero, repeatable with a seed."""

from __future__ import annotations

import random

import pytest

from roomcast.backoff import Backoff


class _Extreme(random.Random):
    """A Random whose draws are always ``value`` (0.0 = lowest possible, ~1.0 = highest)."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


def test_the_lowest_draw_is_still_a_real_delay() -> None:
    # A server refusing at once must never be hit by back-to-back reconnects.
    backoff = Backoff(initial=0.5, rng=_Extreme(0.0))
    delays = [backoff.next() for _ in range(20)]
    assert delays == [0.125] * 20


def test_upper_bound_doubles_up_to_the_cap() -> None:
    backoff = Backoff(initial=0.5, cap=30.0, factor=2.0, rng=_Extreme(1.0))
    delays = [backoff.next() for _ in range(10)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0]


@pytest.mark.parametrize("seed", range(20))
def test_every_delay_lies_in_its_attempts_range(seed: int) -> None:
    backoff = Backoff(initial=0.5, cap=30.0, factor=2.0, rng=random.Random(seed))
    for n in range(15):
        delay = backoff.next()
        assert 0.125 <= delay <= min(30.0, 0.5 * 2.0**n)


def test_full_jitter_spreads_clients_over_the_whole_range() -> None:
    # 1,000 clients dropped together, each at its 5th attempt (upper bound 8 s): their
    # retries must cover the range, not cluster around the exponential value.
    rng = random.Random(1234)
    draws: list[float] = []
    for _ in range(1000):
        backoff = Backoff(initial=0.5, rng=rng)
        draws.append([backoff.next() for _ in range(5)][-1])
    assert min(draws) < 1.0
    assert max(draws) > 7.0
    assert sum(d < 4.0 for d in draws) == pytest.approx(500, abs=60)


def test_same_seed_same_delays() -> None:
    a = Backoff(rng=random.Random(7))
    b = Backoff(rng=random.Random(7))
    assert [a.next() for _ in range(10)] == [b.next() for _ in range(10)]


def test_reset_starts_again_from_initial() -> None:
    backoff = Backoff(initial=1.0, cap=60.0, rng=_Extreme(1.0))
    for _ in range(5):
        backoff.next()
    assert backoff.attempts == 5
    backoff.reset()
    assert backoff.attempts == 0
    assert backoff.next() == 1.0
    assert backoff.attempts == 1


def test_a_very_long_outage_stays_at_the_cap() -> None:
    # Growing factor ** n naively would overflow a float after ~1,000 attempts.
    backoff = Backoff(initial=0.5, cap=30.0, factor=2.0, rng=_Extreme(1.0))
    for _ in range(5000):
        delay = backoff.next()
    assert delay == 30.0
    assert backoff.attempts == 5000


def test_factor_one_is_constant_jittered_delay() -> None:
    backoff = Backoff(initial=2.0, cap=2.0, factor=1.0, rng=_Extreme(1.0))
    assert [backoff.next() for _ in range(3)] == [2.0, 2.0, 2.0]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial": 0.0},
        {"initial": -1.0},
        {"initial": 5.0, "cap": 1.0},
        {"factor": 0.5},
        {"initial": float("nan")},
    ],
)
def test_settings_that_could_spin_or_shrink_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)  # type: ignore[arg-type]
