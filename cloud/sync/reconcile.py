"""Edits made on an edge's local page, reconciled with the cloud's config: last writer wins by
version, and the losing edit is kept in the audit log.

An edge edit says which config version it was made on (``base_version``: the last version the
edge had applied). Every room and rule remembers the farm version of its last change and who made
it. If another writer (the cloud, or another edge) changed the same room or rule after
``base_version``, that change is the later one by version and wins: the edge's edit is written to
the audit log as ``config.conflict`` and the edge gets the winning config with the next push.
Otherwise the edit is applied (which bumps the farm's version, so the edge is sent the merged
config, its own edit included) and logged as ``config.edge_edit``. An edge's own earlier edits
never count against it. The granularity is the room (stage, profile rules) or the rule.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from cloud.db import sync as sync_db
from cloud.db.database import Cursor
from cloud.sync.records import ConfigChangeItem, RuleEnabledChange, StageChange

log = logging.getLogger(__name__)


def profile_rule_room(rule_id: str, room_ids: list[str]) -> str | None:
    """The room of a profile rule: shared.profiles names them ``{room_id}-{what}`` (the longest
    matching room id wins, so room "a-b" is not mistaken for room "a")."""
    rooms = [r for r in room_ids if rule_id.startswith(r + "-")]
    return max(rooms, key=len) if rooms else None


class Reconciler:
    """Applies one batch's config changes for one edge, inside the batch's transaction."""

    def __init__(self, cur: Cursor, *, farm_id: str, edge_id: str) -> None:
        self._cur = cur
        self.farm_id = farm_id
        self.edge_id = edge_id
        self._marked = False

    async def apply(self, item: ConfigChangeItem, *, seq: int, at: datetime) -> str:
        """``applied``, ``conflict``, ``unchanged`` or ``ignored`` (unknown target)."""
        if not self._marked:
            await sync_db.mark_origin(self._cur, self.edge_id)
            self._marked = True
        change = item.change
        if isinstance(change, StageChange):
            return await self._stage(item, change, seq=seq, at=at)
        return await self._rule_enabled(item, change, seq=seq)

    async def _stage(
        self, item: ConfigChangeItem, change: StageChange, *, seq: int, at: datetime
    ) -> str:
        room = await sync_db.room_for_update(self._cur, self.farm_id, change.room_id)
        if room is None:
            return await self._note("ignored", change.room_id, item, seq, reason="no such room")
        if self._lost(room, item):
            return await self._note("conflict", change.room_id, item, seq, winner=room)
        if room["stage"] == change.stage:
            return "unchanged"
        await sync_db.set_stage(self._cur, self.farm_id, change.room_id, change.stage, at)
        return await self._note("applied", change.room_id, item, seq)

    async def _rule_enabled(
        self, item: ConfigChangeItem, change: RuleEnabledChange, *, seq: int
    ) -> str:
        rules = await sync_db.rules_for_update(
            self._cur, self.farm_id, change.rule_id, change.room_id
        )
        if rules:
            outcomes = [await self._cloud_rule(item, change, rule, seq) for rule in rules]
            for outcome in ("conflict", "applied"):
                if outcome in outcomes:
                    return outcome
            return "unchanged"
        # Not a cloud rule: one of the edge's profile rules, disabled per room.
        room_id = change.room_id or profile_rule_room(
            change.rule_id, await sync_db.room_ids(self._cur, self.farm_id)
        )
        if room_id is None:
            return await self._note(
                "ignored", change.rule_id, item, seq, reason="unknown rule and no room_id"
            )
        room = await sync_db.room_for_update(self._cur, self.farm_id, room_id)
        if room is None:
            return await self._note("ignored", room_id, item, seq, reason="no such room")
        if self._lost(room, item):
            return await self._note("conflict", room_id, item, seq, winner=room)
        disabled = set(room["disabled_rules"])
        wanted = disabled - {change.rule_id} if change.enabled else disabled | {change.rule_id}
        if wanted == disabled:
            return "unchanged"
        await sync_db.set_disabled_rules(self._cur, self.farm_id, room_id, sorted(wanted))
        return await self._note("applied", room_id, item, seq)

    async def _cloud_rule(
        self, item: ConfigChangeItem, change: RuleEnabledChange, rule: dict[str, Any], seq: int
    ) -> str:
        target = f"{rule['room_id']}/{rule['id']}"
        if self._lost(rule, item):
            return await self._note("conflict", target, item, seq, winner=rule)
        if rule["body"].get("enabled", True) == change.enabled:
            return "unchanged"
        body = {**rule["body"], "enabled": change.enabled}
        await sync_db.set_rule_body(self._cur, self.farm_id, rule["room_id"], rule["id"], body)
        return await self._note("applied", target, item, seq)

    def _lost(self, row: dict[str, Any], item: ConfigChangeItem) -> bool:
        newer = int(row["config_version"]) > item.base_version
        return newer and row["config_origin"] != self.edge_id

    async def _note(
        self,
        outcome: str,
        target: str,
        item: ConfigChangeItem,
        seq: int,
        *,
        winner: dict[str, Any] | None = None,
        reason: str | None = None,
    ) -> str:
        detail: dict[str, Any] = {
            "edge_id": self.edge_id,
            "seq": seq,
            "change": item.change.model_dump(mode="json"),
            "base_version": item.base_version,
            "edge_version": item.version,
            "edge_clock_at": item.at,
        }
        if winner is not None:
            detail["winner"] = winner["config_origin"] or "cloud"
            detail["winning_version"] = int(winner["config_version"])
        if reason is not None:
            detail["reason"] = reason
        action = {
            "applied": "config.edge_edit",
            "conflict": "config.conflict",
            "ignored": "config.edge_edit_ignored",
        }[outcome]
        await sync_db.audit_entry(
            self._cur, farm_id=self.farm_id, action=action, target=target, detail=detail
        )
        if outcome == "conflict":
            log.info(
                "edge %s edit of %s (on version %d) lost to version %d",
                self.edge_id,
                target,
                item.base_version,
                detail["winning_version"],
            )
        return outcome
