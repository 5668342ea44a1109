"""URLs fit for logs and error messages: their secrets replaced by `***`."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit


def mask_url(url: str) -> str:
    """The URL with its password (in the authority or the query) replaced by `***`."""
    try:
        parts = urlsplit(url)
    except ValueError:
        # Unparseable (e.g. `redis://[::1`): hide whatever sits between `://` and `@`.
        return re.sub(r"(?<=://)[^/@]*@", "***@", url)
    has_query_password = any(key.lower() == "password" for key, _ in parse_qsl(parts.query))
    if "@" not in parts.netloc and not has_query_password:
        return url  # nothing to hide: shown exactly as given
    netloc = parts.netloc
    userinfo, at, host = netloc.rpartition("@")
    if at:
        user, colon, _password = userinfo.partition(":")
        netloc = f"{user}:***@{host}" if colon else f"***@{host}"
    query = parts.query
    if query:
        pairs = [
            (key, "***" if key.lower() == "password" else value)
            for key, value in parse_qsl(query, keep_blank_values=True)
        ]
        query = urlencode(pairs, safe="*")
    # Not urlunsplit: it drops the empty authority of unix:///path.
    masked = f"{parts.scheme}://{netloc}{parts.path}"
    if query:
        masked += f"?{query}"
    return masked + (f"#{parts.fragment}" if parts.fragment else "")
