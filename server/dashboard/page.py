"""The dashboard's page and its script and style, served from the package (no CDN, nothing
from outside), with headers that let the page run only its own script."""

from __future__ import annotations

from pathlib import Path

STATIC = Path(__file__).with_name("static")

# the page, its script and its style only: no inline script or style, no eval, no framing
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

# path -> (file, content type)
ASSETS = {
    "/dashboard": ("dashboard.html", "text/html; charset=utf-8"),
    "/dashboard/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/dashboard/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
    "/dashboard/icon.svg": ("icon.svg", "image/svg+xml"),
}


def load_assets() -> dict[str, tuple[bytes, str]]:
    """Each path's bytes and content type, read once."""
    return {path: ((STATIC / name).read_bytes(), content_type) for path, (name, content_type) in ASSETS.items()}
