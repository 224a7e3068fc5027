"""One recommendation run for one room: context → provider → checked actions → stored, with the
run (provider, attempts, tokens, outcome) recorded in ``ai_runs``."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from cloud.ai.actions import ActionRejected, checked, room_devices
from cloud.ai.builtin import BuiltinAdvisor
from cloud.ai.context import build_context
from cloud.ai.models import Advice
from cloud.ai.provider import Provider, ProviderError
from cloud.ai.settings import AiConfig
from cloud.db import recommendations as recs_db
from cloud.db.database import Database

log = logging.getLogger(__name__)


async def generate(
    db: Database,
    provider: Provider,
    config: AiConfig,
    room_id: str,
    *,
    farm_id: str,
    trigger: str,
    requested_by: int | None,
    now: datetime,
) -> dict[str, Any]:
    """Advise one room now and store the result. A ProviderError propagates (``transient``
    ones are worth a retry) unless the built-in advisor stands in for a failed Bedrock."""
    ctx = await build_context(db, farm_id, room_id, now=now, window_hours=config.window_hours)
    if ctx is None:
        return {"farm_id": farm_id, "room_id": room_id, "skipped": "room not found"}
    run_id = await recs_db.start_run(
        db,
        farm_id,
        room_id,
        provider=provider.name,
        model=provider.model,
        trigger=trigger,
        requested_by=requested_by,
    )
    note = None
    try:
        advice = await provider.advise(ctx)
    except ProviderError as exc:
        if provider.name == "builtin" or not config.bedrock.fallback_to_builtin:
            await _finish(db, run_id, None, exc, status="failed", error=str(exc), count=0)
            raise
        log.warning(
            "%s failed for room %s (%s); using the built-in advisor", provider.name, room_id, exc
        )
        note = f"{exc}; the built-in advisor answered instead"
        advice = (await BuiltinAdvisor().advise(ctx)).model_copy(
            update={
                "attempts": exc.attempts,
                "input_tokens": exc.input_tokens,
                "output_tokens": exc.output_tokens,
            }
        )
    devices = await room_devices(db, farm_id, room_id)
    items = []
    for suggestion in advice.suggestions:
        reason = suggestion.reason
        try:
            action = checked(suggestion.action, room_id, devices)
        except ActionRejected as exc:
            action = None
            reason = f"{reason} (its suggested action was dropped: {exc})"
        items.append(
            {
                "key": suggestion.key,
                "severity": suggestion.severity,
                "title": suggestion.title,
                "reason": reason[:2000],
                "action": action,
            }
        )
    rows = await recs_db.store(
        db, farm_id, room_id, source=advice.provider, run_id=run_id, items=items
    )
    await _finish(db, run_id, advice, None, status="succeeded", error=note, count=len(rows))
    return {
        "farm_id": farm_id,
        "room_id": room_id,
        "run_id": run_id,
        "provider": advice.provider,
        "recommendations": len(rows),
    }


async def _finish(
    db: Database,
    run_id: int,
    advice: Advice | None,
    exc: ProviderError | None,
    *,
    status: str,
    error: str | None,
    count: int,
) -> None:
    source: Any = advice if advice is not None else exc
    await recs_db.finish_run(
        db,
        run_id,
        status=status,
        attempts=source.attempts if source is not None else 1,
        input_tokens=source.input_tokens if source is not None else None,
        output_tokens=source.output_tokens if source is not None else None,
        recommendations=count,
        error=error,
    )
