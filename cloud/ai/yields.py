"""Yield prediction for rooms in pinning or fruiting: expected fresh weight of the coming flush,
with a range, from the substrate, the species' biological efficiency and the room's climate.

Model, per flush n of the current substrate load:

    expected_n = M_dry × BE_typical × share_n × f(TIB)
    range_n    = M_dry × [BE_low, BE_high] × share_n × f(TIB)
    f(TIB)     = 0.6 + 0.4 × TIB

- M_dry, dry substrate mass (kg): entered, or wet mass × (1 − moisture).
- BE, biological efficiency: fresh mushrooms per dry substrate over the whole crop, the standard
  yield measure of mushroom cultivation (Chang & Miles, "Mushrooms: Cultivation, Nutritional
  Value, Medicinal Effect, and Environmental Impact", 2nd ed., CRC Press 2004; Stamets,
  "Growing Gourmet and Medicinal Mushrooms", 3rd ed., Ten Speed Press 2000). The ranges below are
  round figures inside what the literature reports for indoor cultivation on supplemented
  sawdust or straw. Pleurotus ostreatus: a high conversion of substrate to fruit bodies (Sánchez,
  "Cultivation of Pleurotus ostreatus and other edible mushrooms", Appl. Microbiol. Biotechnol.
  85:1321–1337, 2010); on wheat straw 76–107 % by pre-treatment (Jaramillo Mejía & Albertó,
  Rev. Iberoam. Micol. 30:125–129, 2013). Lentinula edodes on supplemented sawdust: BE two to
  three times higher after a 116-day than a 58-day spawn run (Royse, "Effect of spawn run time
  and substrate nutrition on yield and size of the shiitake mushroom", Mycologia 77:756–762,
  1985), so the range is wide. Hericium erinaceus is the least documented: its range here is
  the most uncertain (Stamets 2000).
- share_n: the part of the crop each flush gives, 50/30/15/5 % for flushes 1–4 (later flushes
  yield less and less; this split is an assumption of ours, not a published figure).
- f(TIB): climate penalty from the share of time with every measured metric in its profile band
  since the flush began (``room_hourly``). A room never in band keeps 60 % of its potential,
  an assumption chosen to be mild; with no climate data the factor is 1.

Every prediction is stored daily; recorded harvests are compared with the last prediction made
before each flush's first harvest, and that error is what calibrates the figures above for a
farm. Nothing here is fitted automatically.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from cloud.db import derived as derived_db
from cloud.db import harvests as harvests_db
from cloud.db.database import Database

log = logging.getLogger(__name__)

# (low, typical, high) biological efficiency as a fraction.
BIOLOGICAL_EFFICIENCY: dict[str, tuple[float, float, float]] = {
    "oyster": (0.5, 0.75, 1.0),
    "shiitake": (0.5, 0.7, 0.9),
    "lions_mane": (0.35, 0.55, 0.75),
}
FLUSH_SHARES = (0.5, 0.3, 0.15, 0.05)
TIB_FLOOR = 0.6
# A flush's climate is counted from its start, but never further back than this.
MAX_FLUSH_DAYS = 21
MODEL = (
    "expected = dry substrate × biological efficiency × flush share × (0.6 + 0.4 × time in "
    "band); see cloud/ai/yields.py for sources"
)


def flush_share(flush: int) -> float:
    return FLUSH_SHARES[flush - 1] if 1 <= flush <= len(FLUSH_SHARES) else 0.0


def climate_factor(time_in_band: float | None) -> float:
    if time_in_band is None:
        return 1.0
    return TIB_FLOOR + (1 - TIB_FLOOR) * min(max(time_in_band, 0.0), 1.0)


def predict(
    species: str, dry_mass_kg: float, flush: int, time_in_band: float | None
) -> dict[str, float]:
    """Expected, low and high fresh weight (kg) of one flush."""
    low, typical, high = BIOLOGICAL_EFFICIENCY[species]
    base = dry_mass_kg * flush_share(flush) * climate_factor(time_in_band)
    return {
        "expected_kg": round(base * typical, 3),
        "low_kg": round(base * low, 3),
        "high_kg": round(base * high, 3),
        "factor": round(climate_factor(time_in_band), 4),
    }


async def predict_room(db: Database, room: dict[str, Any], *, now: datetime) -> dict[str, Any]:
    """Store today's prediction for the room's coming flush; the stored row."""
    farm_id = room["farm_id"]
    substrate = await harvests_db.substrate(db, farm_id, room["id"])
    assert substrate is not None
    done = await harvests_db.flushes(db, farm_id, room["id"], since=substrate["loaded_at"])
    flush = (max(f["flush"] for f in done) + 1) if done else 1
    flush_start = max(
        [substrate["loaded_at"], room["stage_started"], *(f["last_at"] for f in done)]
    )
    flush_start = max(flush_start, now - timedelta(days=MAX_FLUSH_DAYS))
    tib, minutes = await derived_db.time_in_band(
        db, farm_id, room["id"], start=flush_start, end=now
    )
    figures = predict(room["species"], substrate["dry_mass_kg"], flush, tib)
    return await harvests_db.store_prediction(
        db,
        {
            "farm_id": farm_id,
            "room_id": room["id"],
            "flush": flush,
            "day": now.date(),
            "time_in_band": tib,
            **figures,
            "inputs": {
                "species": room["species"],
                "dry_mass_kg": substrate["dry_mass_kg"],
                "biological_efficiency": BIOLOGICAL_EFFICIENCY[room["species"]],
                "flush_share": flush_share(flush),
                "climate_since": flush_start.isoformat(),
                "climate_minutes": minutes,
            },
        },
    )


async def predict_yield(
    db: Database, *, now: datetime, room_id: str | None = None, farm_id: str | None = None
) -> int:
    """Predict every room in pinning or fruiting with a substrate (or just ``room_id`` of
    ``farm_id``; a room id alone names that room in every farm)."""
    count = 0
    for room in await harvests_db.growing_rooms(db):
        if room_id is not None and room["id"] != room_id:
            continue
        if farm_id is not None and room["farm_id"] != farm_id:
            continue
        await predict_room(db, room, now=now)
        count += 1
    return count


async def report(db: Database, farm_id: str, room_id: str) -> dict[str, Any]:
    """The substrate, the current prediction, and each harvested flush against its prediction."""
    substrate = await harvests_db.substrate(db, farm_id, room_id)
    if substrate is None:
        return {"model": MODEL, "substrate": None, "current": None, "flushes": []}
    since = substrate["loaded_at"]
    flushes = []
    for done in await harvests_db.flushes(db, farm_id, room_id, since=since):
        judged = await harvests_db.prediction_for(
            db, farm_id, room_id, flush=done["flush"], day=done["first_at"].date(), since=since
        )
        actual = float(done["actual_kg"])
        entry: dict[str, Any] = {"flush": done["flush"], "actual_kg": round(actual, 3)}
        if judged is not None:
            expected = judged["expected_kg"]
            entry.update(
                predicted_kg=expected,
                low_kg=judged["low_kg"],
                high_kg=judged["high_kg"],
                predicted_on=judged["day"],
                error_kg=round(actual - expected, 3),
                error_pct=round(100 * (actual - expected) / expected, 1) if expected else None,
                within_range=judged["low_kg"] <= actual <= judged["high_kg"],
            )
        flushes.append(entry)
    errors = [abs(f["error_pct"]) for f in flushes if f.get("error_pct") is not None]
    return {
        "model": MODEL,
        "substrate": substrate,
        "current": await harvests_db.latest_prediction(db, farm_id, room_id, since=since),
        "flushes": flushes,
        "mean_abs_error_pct": round(sum(errors) / len(errors), 1) if errors else None,
    }
