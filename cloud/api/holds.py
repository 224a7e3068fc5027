"""Manual holds on actuators from the cloud, and the edge's effective automation state."""

from __future__ import annotations

from cloud.api.routing import Route

ROUTES: list[Route] = []
