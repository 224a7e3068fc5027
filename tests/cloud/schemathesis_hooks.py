"""schemathesis hooks for the API fuzz test (loaded by the schemathesis CLI via its config).

aiohttp's HTTP parser refuses a request line over 8 KiB with a plain-text 400 before the request
reaches the app (as nginx and most proxies do): such URLs test the HTTP library, not our API.
A ``filter_case`` hook (unlike ``filter_query``) also applies to the coverage phase's cases.
"""

from __future__ import annotations

from urllib.parse import urlencode

import schemathesis

MAX_URL = 6144


@schemathesis.hook
def filter_case(context: schemathesis.HookContext, case: schemathesis.Case) -> bool:
    query = case.query or {}
    return len(case.formatted_path) + len(urlencode(query, doseq=True)) < MAX_URL
