"""Python's cycle collector tuned for a long-running asyncio server.

A server's start-up (modules, models, settings, pools) allocates objects that live as long as the
process; every full collection walks them all again, and a full pass stops the event loop. In the
cloud under a fleet's load that was 100-400 ms every 15-30 s per instance (measured with
gc.callbacks during bench/edge_fleet.py), and every batch in flight waited for it: most of the
slowest answers. So once start-up is done, its objects are frozen out of the collector's passes,
and young objects are collected in larger, rarer passes: fewer objects that happen to be alive
during a pass (a request in flight) are promoted to the old generations, which is what made full
passes frequent. Garbage without cycles is still freed at once by reference counting; cyclic
garbage waits a little longer.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)

# gen0 collects after this many net allocations (CPython's default is 700); gen1 after 20 gen0
# passes, gen2 after 100 gen1 passes (and, as always, only when the survivors since the last full
# pass are a quarter of the old generation).
THRESHOLDS = (50_000, 20, 100)


def settle_after_startup() -> None:
    """Call once the process is started: freeze what start-up allocated, set the thresholds."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
    log.debug("collector: %d start-up objects frozen, thresholds %s", gc.get_freeze_count(),
              THRESHOLDS)
