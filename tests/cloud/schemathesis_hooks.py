"""schemathesis hooks for the API fuzz test (loaded by the schemathesis CLI via its config).

aiohttp's HTTP parser refuses a request line over 8 KiB with a plain-text 400 before the request
reaches the app (as nginx and most proxies do): such URLs test the HTTP library, not our API.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import schemathesis

MAX_QUERY = 4096


@schemathesis.hook
def filter_query(context: schemathesis.HookContext, query: dict[str, Any] | None) -> bool:
    return not query or len(urlencode(query, doseq=True)) < MAX_QUERY
