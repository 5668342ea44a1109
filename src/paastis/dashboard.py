"""The dashboard: one self-contained HTML page for people, served by the admin listener.

The page holds no data and needs no token to load; its script asks for the system API token
and reads and acts through the system API with it.
"""

from __future__ import annotations

import base64
import hashlib
import re
from importlib import resources

from aiohttp import web

PAGE = resources.files("paastis").joinpath("dashboard.html").read_bytes()


def inline_hashes(page: bytes, tag: str) -> list[str]:
    """CSP source expressions allowing exactly the page's own inline `<tag>` blocks."""
    blocks = re.findall(rb"<%s>(.*?)</%s>" % (tag.encode(), tag.encode()), page, re.S)
    return [f"'sha256-{base64.b64encode(hashlib.sha256(b).digest()).decode()}'" for b in blocks]


# Nothing but the page's own script and style runs, and it talks to this origin only: an app
# name or status string from the provider can never become code next to the token.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src " + " ".join(inline_hashes(PAGE, "script")),
        "style-src " + " ".join(inline_hashes(PAGE, "style")),
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)


def dashboard_response() -> web.Response:
    response = web.Response(body=PAGE, content_type="text/html", charset="utf-8")
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response
