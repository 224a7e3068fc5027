"""Chart history beyond readings: actuator on/off intervals."""

from __future__ import annotations

from cloud.api.routing import Route

ROUTES: list[Route] = []
