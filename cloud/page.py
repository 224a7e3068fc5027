"""The dashboard page: ``/`` and ``/static/…`` served from the package's ``static`` folder (plain
files, no build step), under a Content-Security-Policy that allows only our own scripts and
styles — no inline script or style, nothing from another origin.

Every file is read once when the app is built, hashed and (when it shrinks) gzipped then, so a
request costs a dictionary look-up: no path from a request ever reaches the file system, and no
request compresses anything. Each answer carries a strong ETag (the content's sha256) and
``Cache-Control: no-cache``: the browser keeps its copy and revalidates it on every load (a 304
with no body), so a new release never runs against a stale module while file names stay as they
are (the views import each other by name)."""

from __future__ import annotations

import gzip
import hashlib
import mimetypes
from dataclasses import dataclass
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
    ".mjs": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".webp": "image/webp",
    ".ico": "image/x-icon",
    ".json": "application/json",
    ".map": "application/json",
    ".txt": "text/plain",
    ".woff2": "font/woff2",
    ".webmanifest": "application/manifest+json",
}
# Already compressed formats: gzip would only cost time.
_STORED = {"image/png", "image/jpeg", "image/webp", "font/woff2"}
_TEXT = ("text/", "application/json", "application/manifest+json", "image/svg+xml")
GZIP_LEVEL = 9  # once per file at start: the smallest transfer is worth the few milliseconds


@dataclass(frozen=True)
class Asset:
    """One static file as served: its bytes, its gzip (None when gzip does not shrink it) and
    their entity tags."""

    name: str
    content_type: str
    body: bytes
    gzipped: bytes | None
    etag: str

    @property
    def gzip_etag(self) -> str:
        # A different representation needs a different strong validator (RFC 9110 8.8.3).
        return self.etag[:-1] + '.gz"'

    @classmethod
    def load(cls, name: str, path: Path) -> Asset:
        body = path.read_bytes()
        content_type = content_type_for(path)
        gzipped = None
        if content_type.split(";")[0] not in _STORED:
            packed = gzip.compress(body, GZIP_LEVEL, mtime=0)  # mtime 0: the same bytes each start
            if len(packed) < len(body):
                gzipped = packed
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        return cls(name, content_type, body, gzipped, etag)


def content_type_for(path: Path) -> str:
    base = TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0]
    base = base or "application/octet-stream"
    return base + ("; charset=utf-8" if base.startswith(_TEXT) else "")


def accepts_gzip(request: web.Request) -> bool:
    """Whether the request's Accept-Encoding allows gzip (``gzip;q=0`` refuses it)."""
    allowed = False
    for item in request.headers.get("Accept-Encoding", "").lower().split(","):
        coding, _, params = item.strip().partition(";")
        coding = coding.strip()
        if coding not in ("gzip", "x-gzip", "*"):
            continue
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if coding == "*" and allowed:
            continue  # an explicit gzip entry wins over the wildcard
        allowed = q > 0
        if coding != "*":
            return allowed
    return allowed


def _matches(if_none_match: str, etags: tuple[str, ...]) -> bool:
    if if_none_match.strip() == "*":
        return True
    for tag in if_none_match.split(","):
        tag = tag.strip().removeprefix("W/")  # If-None-Match compares weakly
        if tag in etags:
            return True
    return False


def load_assets(folder: Path = STATIC_DIR) -> dict[str, Asset]:
    """Every file under ``folder`` (sub-folders as ``a/b.svg``; dot-files and caches left out),
    by the name it is served under."""
    assets = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if not path.is_file() or any(
            part.startswith(".") or part == "__pycache__" for part in rel.parts
        ):
            continue
        name = rel.as_posix()
        assets[name] = Asset.load(name, path)
    return assets


def asset_response(request: web.Request, asset: Asset) -> web.Response:
    """The asset for this request: 304 when the browser's copy is current, gzip when accepted."""
    use_gzip = asset.gzipped is not None and accepts_gzip(request)
    etag = asset.gzip_etag if use_gzip else asset.etag
    headers = {
        "Content-Type": asset.content_type,
        "Content-Security-Policy": PAGE_CSP,
        # Revalidate every load: a new release must not run against a stale module.
        "Cache-Control": "no-cache",
        "ETag": etag,
    }
    if asset.gzipped is not None:
        headers["Vary"] = "Accept-Encoding"
    inm = request.headers.get("If-None-Match")
    if inm is not None and _matches(inm, (asset.etag, asset.gzip_etag)):
        del headers["Content-Type"]
        return web.Response(status=304, headers=headers)
    if use_gzip:
        headers["Content-Encoding"] = "gzip"
    body = asset.gzipped if use_gzip and asset.gzipped is not None else asset.body
    return web.Response(body=body, headers=headers)


def add_page_routes(app: web.Application, folder: Path = STATIC_DIR) -> None:
    """``GET /`` → index.html, ``GET /static/{name}`` → the folder's files, read and compressed
    once, here."""
    assets = load_assets(folder)

    async def index(request: web.Request) -> web.StreamResponse:
        return asset_response(request, assets["index.html"])

    async def static(request: web.Request) -> web.StreamResponse:
        asset = assets.get(request.match_info["name"])
        if asset is None:
            raise web.HTTPNotFound()
        return asset_response(request, asset)

    app.router.add_get("/", index)
    app.router.add_get("/static/{name:.+}", static)
