"""What of the automation's state is written to SQLite, and when: rule timers and actuator states
survive a restart, without a write per reading.

A state is written when it changed since it was last written; a rule state whose only change is
numeric (a PID integrator moving on every evaluation) at most every NUMERIC_SAVE_INTERVAL_S, so
a busy room does not cost SD-card writes on every reading.
"""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from typing import Any, Final

from edge.store import state as state_rows
from shared.rules import ActuatorState, RuleState

NUMERIC_SAVE_INTERVAL_S: Final = 60.0


@dataclass(slots=True)
class Restored:
    """The automation's persisted state, as the last run left it."""

    rooms: dict[str, Any] = field(default_factory=dict)  # room id → {stage, stage_started}
    disabled: set[str] = field(default_factory=set)  # rule ids turned off by an operator
    rules: dict[str, RuleState] = field(default_factory=dict)
    actuators: dict[str, ActuatorState] = field(default_factory=dict)


def restore(conn: sqlite3.Connection) -> Restored:
    """Read every persisted automation state (on a reader connection, one snapshot)."""
    return Restored(
        rooms=state_rows.load_prefix(conn, "room:"),
        disabled=set(state_rows.load_prefix(conn, "rule_disabled:")),
        rules={key: RuleState.model_validate(value)
               for key, value in state_rows.load_prefix(conn, "rule:").items()},
        actuators={key: ActuatorState.model_validate(value)
                   for key, value in state_rows.load_prefix(conn, "actuator:").items()},
    )


class StateSaver:
    """Decides which states to write: those changed since written (see the module's note)."""

    def __init__(self) -> None:
        self._saved: dict[str, tuple[str, float]] = {}  # key → (shape, when written)
        self._last_state: dict[str, Any] = {}

    def stage(self, items: dict[str, Any], key: str, state: RuleState | ActuatorState,
              now: float) -> None:
        """Add ``state`` to ``items`` (key → JSON document) if it is to be written now."""
        last = self._last_state.get(key)
        if last is state or last == state:
            return  # nothing changed since it was last saved
        doc = state.model_dump(mode="json")
        if isinstance(state, RuleState):
            # Structural fields decide when a rule's state must be saved at once.
            shape = f"{doc['active']}|{doc['pending_since']}|{doc['cycle_start']}"
        else:
            shape = repr(doc)
        saved = self._saved.get(key)
        if saved is not None and saved[0] == shape:
            if isinstance(state, RuleState) and doc["last_at"] is not None:
                if now - saved[1] < NUMERIC_SAVE_INTERVAL_S:
                    return
            else:
                return
        items[key] = doc
        self._saved[key] = (shape, now)
        self._last_state[key] = state
