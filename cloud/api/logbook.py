"""A room's grow logbook: batches, stage changes, notes, harvests."""

from __future__ import annotations

from cloud.api.routing import Route

ROUTES: list[Route] = []
