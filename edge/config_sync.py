"""Applying the cloud's config to this edge: a ``ConfigPush`` (rooms, stages, rules, devices).

Cloud config is an overlay on the TOML config: rooms and devices it names replace the file's,
the file's others stay, except the rooms the cloud says another edge of the farm serves
(``other_rooms``): those and their devices are dropped, so a room moved away stops being automated
here and its devices' logins and topics stop working (readings already taken still upload).
A push is validated whole, then applied: stored with its version in one transaction (stages,
disabled rules), broker password file and device ACL rewritten (a device registered in the cloud
can connect about a second later), automation reloaded. One that cannot be applied is refused
whole, with an alert. The applied overlay is in the database and re-applied at every start
(``restore``); a changed TOML file is put back under it (``rebase_local``).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from datetime import datetime
from typing import Final

from pydantic import ValidationError

from edge.alerts import AlertMonitor
from edge.automation import Automation
from edge.config import DeviceConfig, EdgeSettings, RoomConfig
from edge.credentials import CredentialsError, sync_broker_files
from edge.store import outbox as sync_rows
from edge.store import state as state_rows
from edge.store.db import Database
from shared.models import utcnow
from shared.sync import ConfigApplied, ConfigPush

log = logging.getLogger(__name__)

CONFIG_ALERT: Final = "sync:config_rejected"


class ConfigRejected(ValueError):
    """A pushed config that cannot be applied as a whole (nothing of it is applied)."""


def overlay(
    rooms: list[RoomConfig], devices: list[DeviceConfig], push: ConfigPush, edge_username: str
) -> tuple[list[RoomConfig], list[DeviceConfig]]:
    """The TOML rooms and devices with the pushed ones put over them (same id: replaced), less
    the farm's rooms another edge serves (``other_rooms``) and their devices."""
    elsewhere = set(push.other_rooms)
    merged_rooms = {r.id: r for r in rooms if r.id not in elsewhere}
    merged_devices = {d.id: d for d in devices if d.room not in elsewhere}
    try:
        for room in push.rooms:
            merged_rooms[room.id] = RoomConfig(
                id=room.id, name=room.name, species=room.species, stage=room.stage,
                stage_started=room.stage_started, rules=room.rules,  # type: ignore[arg-type]
            )
        for device in push.devices:
            local = merged_devices.get(device.id)
            # Limits set in the cloud win; without them the file's (or the role's default).
            safety = device.safety if device.safety is not None else (
                local.safety if local else None)
            merged_devices[device.id] = DeviceConfig(
                id=device.id, room=device.room, kind=device.kind, actuator=device.actuator,
                safety=safety, name=local.name if local else "",
            )
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        raise ConfigRejected(f"{'.'.join(map(str, err['loc']))}: {err['msg']}") from None
    for merged in merged_devices.values():
        if merged.room not in merged_rooms:
            raise ConfigRejected(f"device {merged.id} is in unknown room {merged.room!r}")
        if merged.id == edge_username:
            raise ConfigRejected(f"device id {merged.id!r} is the edge's own broker username")
    for spec in push.devices:
        hashed = spec.password_hash
        if hashed is not None and (not hashed.startswith("$argon2") or set(hashed) & {":", "\n"}):
            raise ConfigRejected(f"device {spec.id}: password_hash is not an argon2 hash")
    return list(merged_rooms.values()), list(merged_devices.values())


class ConfigSync:
    """The cloud's config over the TOML's: applies pushes, restores and rebases the overlay."""

    def __init__(
        self,
        settings: EdgeSettings,
        db: Database,
        automation: Automation,
        *,
        alerts: AlertMonitor | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._settings = settings
        self._db = db
        self._automation = automation
        self._alerts = alerts
        self._clock = clock
        # The TOML's own rooms and devices, under the cloud overlay.
        self._base_rooms = list(settings.rooms)
        self._base_devices = list(settings.devices)
        self._applied: ConfigPush | None = None

    @property
    def version(self) -> int:
        """The version of the applied cloud config (0: none)."""
        return self._applied.version if self._applied is not None else 0

    # ---- the overlay ----
    async def restore(self) -> None:
        """At start, before the automation loads: put the last applied cloud config back over the
        TOML config."""
        raw = await self._db.read(sync_rows.get_state, "config")
        if raw is None:
            return
        try:
            push = ConfigPush.model_validate(raw)
            rooms, devices = overlay(
                self._base_rooms, self._base_devices, push, self._settings.broker.edge_username
            )
        except (ValidationError, ConfigRejected) as exc:
            log.error("the stored cloud config no longer applies, ignoring it: %s", exc)
            return
        self._settings.rooms, self._settings.devices = rooms, devices
        self._applied = push
        self._automation.cloud_rooms = {r.id for r in push.rooms}
        log.info("cloud config version %d restored", push.version)

    def rebase_local(self, fresh: EdgeSettings) -> None:
        """The TOML file changed (new devices): keep the cloud overlay on top of its devices."""
        self._base_devices = list(fresh.devices)
        devices = fresh.devices
        if self._applied is not None:
            _, devices = overlay(self._base_rooms, self._base_devices, self._applied,
                                 self._settings.broker.edge_username)
        self._settings.devices = devices

    def cloud_hashes(self) -> dict[str, str]:
        """{device id: argon2 hash} of the devices registered in the cloud (applied config)."""
        return {
            d.id: d.password_hash for d in (self._applied.devices if self._applied else [])
            if d.password_hash
        }

    def cloud_dismissed(self) -> dict[str, float]:
        """{device id: when (unix s)} of the devices waiting for adoption that were dismissed in
        the cloud (applied config); edge.onboarding dismisses its own entries of them."""
        if self._applied is None:
            return {}
        return {d.device_id: d.at.timestamp() for d in self._applied.dismissed}

    def write_credentials(self) -> None:
        """Rebuild the broker password file from the secrets file plus the cloud's device hashes,
        and the ACL map from every device, in one atomic write each: an account the cloud no
        longer lists (and the secrets file does not have) is gone, a new one can log in about a
        second later."""
        hashes = self.cloud_hashes()
        if self._settings.broker.mode != "embedded":
            if hashes:
                log.warning("external broker: %d cloud device password(s) must be installed in"
                            " it by hand", len(hashes))
            return
        sync_broker_files(self._settings, extra_hashes=hashes)

    # ---- applying a push ----
    async def apply(self, push: ConfigPush) -> ConfigApplied | None:
        """Apply a pushed config if it is newer; the answer for the cloud (None: refused)."""
        if push.version <= self.version:
            return ConfigApplied(version=self.version)
        settings = self._settings
        try:
            rooms, devices = overlay(self._base_rooms, self._base_devices, push,
                                     settings.broker.edge_username)
        except ConfigRejected as exc:
            log.error("cloud config version %d refused: %s", push.version, exc)
            if self._alerts is not None:
                await self._alerts.raise_alert(
                    CONFIG_ALERT, kind="sync_config", severity="warning",
                    message=f"cloud config version {push.version} not applied: {exc}",
                )
            return None
        disabled = self._disabled_changes(push)
        await self._db.write(self._store_config, push, disabled, urgent=True)
        previous = {r.id for r in settings.rooms}
        self._applied = push
        settings.rooms, settings.devices = rooms, devices
        self._automation.cloud_rooms = {r.id for r in push.rooms}
        try:
            self.write_credentials()
        except (OSError, CredentialsError) as exc:
            log.error("cloud config %d: broker credentials not written: %s", push.version, exc)
        for gone in previous - {r.id for r in rooms}:
            self._automation.rooms.pop(gone, None)
        await self._automation.load()
        for room_id in list(self._automation.rooms):
            await self._automation.evaluate_room(room_id)
        if self._alerts is not None:
            await self._alerts.resolve(CONFIG_ALERT)
        log.info("cloud config version %d applied: %d room(s), %d device(s)", push.version,
                 len(push.rooms), len(push.devices))
        return ConfigApplied(version=push.version)

    def _disabled_changes(self, push: ConfigPush) -> dict[str, bool]:
        """rule id -> disabled, for every rule the pushed rooms have or name."""
        out: dict[str, bool] = {}
        for spec in push.rooms:
            ids = {r.id for r in self._automation.rules(spec.id)} if (
                spec.id in self._automation.rooms) else set()
            ids |= {str(r.get("id")) for r in spec.rules if r.get("id")}
            for rule_id in ids | set(spec.disabled_rules):
                out[rule_id] = rule_id in spec.disabled_rules
        return out

    def _store_config(
        self, conn: sqlite3.Connection, push: ConfigPush, disabled: dict[str, bool]
    ) -> None:
        """One transaction: the version, the config, stages and disabled rules; flagged so the
        triggers do not send these writes back up as local changes."""
        at = self._clock().timestamp()
        sync_rows.set_state(conn, {"applying_config": True}, at)
        sync_rows.set_state(conn, {"config_version": push.version,
                                   "config": push.model_dump(mode="json")}, at)
        today = self._clock().date().isoformat()
        stages = {}
        for spec in push.rooms:
            runtime = self._automation.rooms.get(spec.id)
            started = spec.stage_started or (
                runtime.stage_started if runtime is not None and runtime.stage == spec.stage
                else today
            )
            stages[f"room:{spec.id}"] = {"stage": spec.stage, "stage_started": started}
        state_rows.save_many(conn, stages, at)
        state_rows.save_many(
            conn, {f"rule_disabled:{rule}": True for rule, off in disabled.items() if off}, at
        )
        for rule, off in disabled.items():
            if not off:
                state_rows.delete(conn, f"rule_disabled:{rule}")
        sync_rows.delete_state(conn, "applying_config")
