"""shared.collector: once start-up is done, its objects are frozen out of the cycle collector's
passes and young objects are collected in larger passes (in a fresh interpreter: the thresholds
are process-wide)."""

from __future__ import annotations

import json
import subprocess
import sys

from shared.collector import THRESHOLDS


def test_start_up_objects_are_frozen_and_the_thresholds_raised() -> None:
    code = (
        "import gc, json\n"
        "import cloud.app\n"
        "from shared.collector import settle_after_startup\n"
        "before = gc.get_threshold()\n"
        "settle_after_startup()\n"
        "state = [before, gc.get_threshold(), gc.get_freeze_count(), gc.get_count()[2]]\n"
        "print(json.dumps(state))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         timeout=60)
    before, after, frozen, old = json.loads(out.stdout)
    assert tuple(before) == (700, 10, 10)  # CPython's defaults, as the process started
    assert tuple(after) == THRESHOLDS
    assert frozen > 50_000  # the cloud's modules and models alone are ~100k objects
    assert old == 0  # nothing left in the oldest generation for a full pass to walk
