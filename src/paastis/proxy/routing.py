"""Where a request goes: its request target and authority, checked, and the app key they name."""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass

# RFC 3986 host[:port], narrowed to what DNS names and IP literals really use: no userinfo, no
# path, query or fragment characters, no spaces, no percent-encoding.
AUTHORITY = re.compile(
    r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_][A-Za-z0-9._-]*)(?::(?P<port>[0-9]{1,5}))?"
)
ABSOLUTE_FORM = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<authority>[^/?#]*)(?P<rest>[^#]*)(?:#.*)?", re.S
)


class BadTarget(ValueError):
    """The request's target or Host cannot be routed (answered 400)."""


@dataclass(frozen=True)
class Authority:
    """A checked `host[:port]` as the client sent it."""

    text: str  # exactly as sent, e.g. `myapp.review.example.com:8443`
    host: str
    port: int | None

    @property
    def app_key(self) -> str | None:
        """The first label of the host name, lowercased; None for an IP address."""
        return _app_key(self.host)


@dataclass(frozen=True)
class Target:
    """Where a request goes: the authority it names and its origin-form path and query."""

    authority: Authority
    path: str  # origin-form, e.g. `/search?q=1`; `*` for OPTIONS *


@functools.lru_cache(maxsize=4096)
def parse_authority(value: str) -> Authority:
    """The checked authority, or BadTarget (userinfo, `/`, `?`, `#`, spaces, a bad port...)."""
    match = AUTHORITY.fullmatch(value)
    if match is None:
        raise BadTarget(f"invalid host {value[:80]!r}")
    host, port = match["host"], match["port"]
    if not host.startswith("[") and (".." in host or host.startswith(".")):
        raise BadTarget(f"invalid host {value[:80]!r}")
    if host.startswith("[") and not _is_ipv6(host[1:-1]):
        raise BadTarget(f"invalid host {value[:80]!r}")
    number = None
    if port is not None:
        number = int(port)
        if not 0 < number < 65536:
            raise BadTarget(f"invalid port in {value[:80]!r}")
    return Authority(value, host, number)


def request_target(method: str, raw_target: str, host_headers: list[str]) -> Target:
    """The authority and origin-form path of a request (RFC 9112 §3.2).

    An absolute-form target (`GET http://host/path`) is routed by its own authority and the
    Host header is ignored, as RFC 9112 §3.2.2 says; otherwise exactly one valid Host is needed.
    """
    if raw_target.startswith("/"):
        return Target(_host_header(host_headers), raw_target)
    if raw_target == "*" and method == "OPTIONS":
        return Target(_host_header(host_headers), "*")
    absolute = ABSOLUTE_FORM.fullmatch(raw_target)
    if absolute is None:
        raise BadTarget(f"invalid request target {raw_target[:80]!r}")
    if absolute["scheme"].lower() not in ("http", "https"):
        raise BadTarget(f"unsupported scheme in {raw_target[:80]!r}")
    path = absolute["rest"]
    if not path.startswith("/"):
        path = "/" + path  # `http://host?q` is `/?q`
    return Target(parse_authority(absolute["authority"]), path)


def _host_header(values: list[str]) -> Authority:
    if len(values) != 1:
        raise BadTarget("no Host header" if not values else "more than one Host header")
    value = values[0].strip()
    if not value:
        raise BadTarget("empty Host header")
    return parse_authority(value)


@functools.lru_cache(maxsize=4096)
def _app_key(host: str) -> str | None:
    if host.startswith("["):
        return None  # an IPv6 literal
    name = host.rstrip(".")
    # A host name never ends with a digit (TLDs are letters): only then can it be an IPv4.
    if not name or (name[-1].isdigit() and _is_ip(name)):
        return None
    return name.split(".", 1)[0].lower() or None


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True
