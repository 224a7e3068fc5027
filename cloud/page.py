"""The dashboard page: ``/`` and ``/static/…`` served from the package's ``static`` folder (plain
files, no build step), under a Content-Security-Policy that allows only our own scripts and
styles — no inline script or style, nothing from another origin."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

STATIC_DIR = Path(__file__).with_name("static")
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".webmanifest": "application/manifest+json",
}


def _headers(path: Path) -> dict[str, str]:
    return {
        "Content-Type": TYPES[path.suffix] + ("; charset=utf-8" if path.suffix != ".png" else ""),
        "Content-Security-Policy": PAGE_CSP,
        # Revalidate every load: a new release must not run against a stale module.
        "Cache-Control": "no-cache",
    }


def add_page_routes(app: web.Application, folder: Path = STATIC_DIR) -> None:
    """``GET /`` → index.html, ``GET /static/{name}`` → the folder's files (a fixed list, read
    when the app is built: no path from a request ever reaches the file system)."""
    files = {p.name: p for p in folder.iterdir() if p.is_file() and p.suffix in TYPES}

    async def index(request: web.Request) -> web.StreamResponse:
        path = files["index.html"]
        return web.FileResponse(path, headers=_headers(path))

    async def asset(request: web.Request) -> web.StreamResponse:
        path = files.get(request.match_info["name"])
        if path is None:
            raise web.HTTPNotFound()
        return web.FileResponse(path, headers=_headers(path))

    app.router.add_get("/", index)
    app.router.add_get("/static/{name}", asset)
