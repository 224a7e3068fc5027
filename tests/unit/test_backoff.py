"""shared.backoff: the one reconnect schedule (jittered, capped, exponential, reset on success)."""
from __future__ import annotations

import pytest

from shared.backoff import Backoff


def test_each_delay_is_between_half_the_cap_and_the_cap() -> None:
    for _ in range(50):
        backoff = Backoff(0.5, 30.0)
        for failure in range(1, 20):
            cap = min(30.0, 0.5 * 2 ** (failure - 1))
            assert cap / 2 <= backoff.delay() <= cap
        assert backoff.failures == 19


def test_delays_are_jittered() -> None:
    firsts = {Backoff(1.0, 10.0).delay() for _ in range(20)}
    assert len(firsts) > 1


def test_the_cap_holds_after_many_failures() -> None:
    backoff = Backoff(1.0, 20.0)
    delays = [backoff.delay() for _ in range(5000)]  # 2**4999 would overflow a float
    assert all(d <= 20.0 for d in delays[-100:])
    assert min(delays[-100:]) >= 10.0


def test_reset_after_a_success_starts_the_schedule_again() -> None:
    backoff = Backoff(2.0, 60.0)
    for _ in range(8):
        backoff.delay()
    backoff.reset()
    assert backoff.failures == 0
    assert 1.0 <= backoff.delay() <= 2.0


def test_zero_means_no_wait_and_negative_is_refused() -> None:
    assert Backoff(0.0, 0.0).delay() == 0.0
    with pytest.raises(ValueError):
        Backoff(-1.0, 5.0)
