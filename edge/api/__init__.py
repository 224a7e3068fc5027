"""The edge's local API and offline page (aiohttp): farm state, manual control, rules, stages.

``create_api_app(...)`` is all the composition root needs; see ``auth`` for login and CSRF.
"""

from __future__ import annotations

from edge.api.factory import create_api_app

__all__ = ["create_api_app"]
