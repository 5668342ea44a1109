"""The small page a browser gets while its app wakes; it reloads itself until the app answers."""

from __future__ import annotations

import html

from aiohttp import web

from paastis.proxy.answer import own_answer

RETRY_AFTER_SECONDS = 3

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="{retry}">
<title>Waking up {app}…</title>
<style>
  body {{ font-family: system-ui, sans-serif; display: grid; place-items: center;
         min-height: 100vh; margin: 0; background: #f6f7f9; color: #222; }}
  main {{ text-align: center; padding: 2rem; }}
  .spinner {{ width: 2.5rem; height: 2.5rem; margin: 0 auto 1.5rem; border-radius: 50%;
             border: 4px solid #d6dae0; border-top-color: #4a6cf7;
             animation: spin 1s linear infinite; }}
  @keyframes spin {{ to {{ transform: rotate(360deg); }} }}
  p {{ color: #666; }}
</style>
</head>
<body>
<main>
  <div class="spinner" aria-hidden="true"></div>
  <h1>Waking up {app}</h1>
  <p>This app was asleep to save resources. It usually takes a few seconds;
  this page reloads by itself.</p>
</main>
</body>
</html>
"""


def waiting_page(request: web.BaseRequest, app_name: str) -> web.StreamResponse:
    """503 with Retry-After and no caching, so the browser comes back to the woken app."""
    return own_answer(
        request,
        503,
        PAGE.format(app=html.escape(app_name), retry=RETRY_AFTER_SECONDS),
        content_type="text/html; charset=utf-8",
        headers=(("Retry-After", str(RETRY_AFTER_SECONDS)), ("X-Paastis-App-State", "waking")),
    )


def is_browser_navigation(request: web.BaseRequest) -> bool:
    """A top-level page load by a browser; never an XHR, a fetch of JSON or an asset."""
    if request.method not in ("GET", "HEAD"):
        return False
    headers = request.headers
    mode = headers.get("Sec-Fetch-Mode")
    if mode is not None:
        return mode == "navigate"
    if headers.get("X-Requested-With"):
        return False
    return "text/html" in headers.get("Accept", "")
