"""REST API: one module per resource, each exporting ``ROUTES``; ``all_routes()`` is the table."""

from __future__ import annotations

from cloud.api import (
    ai,
    alerts,
    auth,
    automation,
    commands,
    dashboard,
    devices,
    edge_sync,
    edges,
    farms,
    harvests,
    history,
    holds,
    logbook,
    members,
    notifications,
    pending,
    rooms,
    system,
    telemetry,
    users,
    vocabulary,
    ws,
)
from cloud.api.routing import Route

MODULES = (
    system,
    vocabulary,
    auth,
    users,
    farms,
    members,
    rooms,
    devices,
    pending,
    telemetry,
    commands,
    automation,
    holds,
    history,
    ai,
    harvests,
    logbook,
    notifications,
    alerts,
    edges,
    edge_sync,
    dashboard,
    ws,
)


def all_routes() -> list[Route]:
    """Every API route, in documentation order."""
    return [route for module in MODULES for route in module.ROUTES]


__all__ = ["Route", "all_routes"]
