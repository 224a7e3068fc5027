"""cloud.sync.pace.BatchPacer: the batch interval an instance asks of edges, from how long it took
to store batches (and how late its event loop ran), on a clock the test moves."""

from __future__ import annotations

import pytest

from cloud.sync.pace import HEADER, BatchPacer
from shared.sync import MAX_BATCH_INTERVAL_S, batch_interval


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def window(pacer: BatchPacer, clock: Clock, batch_s: float, n: int = 20, lag_s: float = 0.0,
           ) -> float:
    """One window of ``n`` batches that each took ``batch_s``; the interval asked after it."""
    for _ in range(n):
        pacer.observe_lag(lag_s)
        pacer.observe(batch_s)
    clock.now += pacer.window_s
    return pacer.interval_s()


def make(clock: Clock, memory_s: float = 0.0) -> BatchPacer:
    return BatchPacer(high_s=0.1, low_s=0.03, max_s=30, floor_s=2, window_s=2,
                      memory_s=memory_s, clock=clock)


def test_fast_batches_ask_nothing() -> None:
    clock = Clock()
    pacer = make(clock)
    for _ in range(10):
        assert window(pacer, clock, 0.01) == 0
    assert pacer.header() == {}


def test_slow_batches_ask_for_longer_intervals_held_while_each_takes_effect() -> None:
    clock = Clock()
    pacer = make(clock)
    assert window(pacer, clock, 0.5) == pytest.approx(2.5)  # from the floor, a quarter more
    # Each answer asks for it give or take a fifth: edges answered together drift apart.
    asked = [float(pacer.header()[HEADER]) for _ in range(200)]
    assert 2.0 <= min(asked) < 2.2 and 2.8 < max(asked) <= 3.0
    # Still slow one window later, but the edges have not all heard 2.5 s yet: it holds.
    assert window(pacer, clock, 0.5) == pytest.approx(2.5)
    assert window(pacer, clock, 0.5) == pytest.approx(3.125)
    intervals = [window(pacer, clock, 0.5) for _ in range(100)]
    assert intervals == sorted(intervals)
    assert intervals[-1] == 30  # never past max_s


def test_the_interval_comes_back_down_and_off_when_batches_are_fast_again() -> None:
    clock = Clock()
    pacer = make(clock)
    for _ in range(12):
        window(pacer, clock, 0.5)
    high = pacer.interval_s()
    assert high > 5
    seen = [window(pacer, clock, 0.01) for _ in range(60)]
    assert seen[-1] == 0 and pacer.header() == {}
    falling = [s for s in seen if s]
    assert falling == sorted(falling, reverse=True) and min(falling) >= 2  # never under the floor


def test_it_stays_clear_of_the_interval_batches_became_slow_at() -> None:
    """Probing back below the load that made batches slow would make them slow again: until
    memory_s after the last slow window, the interval stays a tenth above the one at which they
    became slow (not the larger ones asked while a queue drained); then it may come down."""
    clock = Clock()
    pacer = make(clock, memory_s=120)
    while pacer.interval_s() < 3.8:  # slow from the start: at the edges' own pace (the floor)
        window(pacer, clock, 0.5)
    calm = [window(pacer, clock, 0.01) for _ in range(40)]
    assert min(calm) == pytest.approx(2.2) and calm[-1] == pytest.approx(2.2)
    while window(pacer, clock, 0.5) == pytest.approx(2.2):  # slow again, at 2.2 s
        pass
    assert pacer.interval_s() == pytest.approx(2.75)
    calm = [window(pacer, clock, 0.01) for _ in range(30)]  # 60 s: within the memory
    assert min(calm) == pytest.approx(2.42)
    later = [window(pacer, clock, 0.01) for _ in range(60)]
    assert later[-1] == 0


def test_between_the_thresholds_it_holds() -> None:
    clock = Clock()
    pacer = make(clock)
    for _ in range(4):
        window(pacer, clock, 0.5)
    held = pacer.interval_s()
    assert [window(pacer, clock, 0.06) for _ in range(10)] == [held] * 10


def test_event_loop_lag_counts_as_slowness() -> None:
    """Requests waiting to be read do not show in a handler's own time: the loop's lag does."""
    clock = Clock()
    pacer = make(clock)
    assert window(pacer, clock, 0.02, lag_s=0.2) == pytest.approx(2.5)
    assert pacer.last_signal_s == pytest.approx(0.22)


def test_a_few_batches_are_not_enough_to_judge_and_none_at_all_ends_pacing() -> None:
    clock = Clock()
    pacer = make(clock)
    assert window(pacer, clock, 5.0, n=3) == 0
    window(pacer, clock, 0.5)
    assert pacer.interval_s() > 0
    clock.now += 10 * pacer.window_s  # no batch came: nobody to pace
    assert window(pacer, clock, 0.5, n=0) == 0


def test_pacing_off() -> None:
    clock = Clock()
    pacer = BatchPacer(max_s=0, clock=clock)
    assert not pacer.enabled
    assert window(pacer, clock, 5.0) == 0


def test_the_thresholds_must_make_a_band() -> None:
    with pytest.raises(ValueError):
        BatchPacer(high_s=0.05, low_s=0.05)


@pytest.mark.parametrize(("value", "seconds"), [
    (None, 0.0), ("", 0.0), ("4.5", 4.5), ("0", 0.0), ("-3", 0.0), ("nan", 0.0), ("soon", 0.0),
    ("inf", MAX_BATCH_INTERVAL_S), ("3600", MAX_BATCH_INTERVAL_S),
])
def test_the_edge_reads_the_header_defensively(value: str | None, seconds: float) -> None:
    assert batch_interval(value) == seconds
