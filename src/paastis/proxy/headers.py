"""The header rules of both hops, on raw bytes so that every value passes byte for byte."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from yarl import URL

from paastis.proxy.answer import Framing, http_date

RawHeaders = Sequence[tuple[bytes, bytes]]

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Never forwarded to an app, whether the system API is on or not.
SYSTEM_HEADERS = frozenset({b"paastisproxytarget", b"paastisproxysystemapitoken"})
# Set for the upstream hop by paastis itself (Expect is answered to the client).
REPLACED_IN_REQUESTS = frozenset(
    {
        b"host",
        b"expect",
        b"content-length",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
    }
)
DROPPED_FROM_REQUESTS = HOP_BY_HOP | SYSTEM_HEADERS | REPLACED_IN_REQUESTS
# paastis' entry in `Via` (RFC 9110 §7.6.3): its received-by pseudonym is how a loop is seen.
# The entry is `<the request's HTTP version> paastis`, e.g. `1.1 paastis`.
VIA_PSEUDONYM = "paastis"


@dataclass(frozen=True)
class Client:
    """What the forwarded headers tell the app about the client's request."""

    remote: str
    scheme: str  # of the client's connection: http or https
    authority: str  # the checked host[:port] it was routed by

    @property
    def origin(self) -> bytes:
        return f"{self.scheme}://{self.authority}".encode()


@dataclass(frozen=True)
class Upstream:
    """The app's base URL, as the request head needs it."""

    url: URL

    @property
    def host_header(self) -> bytes:
        return self.url.raw_authority.encode()  # host[:port], as the upstream expects it

    @property
    def origin(self) -> bytes:
        return str(self.url.origin()).encode()

    def target(self, path: str) -> bytes:
        """The upstream's path prefix plus the request's own path and query, as sent."""
        prefix = self.url.raw_path.rstrip("/")
        return (prefix + path).encode("utf-8", "surrogateescape")


def tokens(values: list[bytes]) -> frozenset[bytes]:
    """The lowercased tokens of comma-separated header values (`Connection: close, X-Foo`)."""
    if not values:
        return frozenset()
    return frozenset(
        token.strip().lower() for value in values for token in value.split(b",") if token.strip()
    )


def carries_our_via(via_values: list[str]) -> bool:
    """Whether a request already went through paastis (its `Via` values): a forwarding loop."""
    for value in via_values:
        for entry in value.split(","):
            parts = entry.split()
            if len(parts) >= 2 and parts[1].lower() == VIA_PSEUDONYM:
                return True
    return False


def upstream_request_head(
    method: str,
    path: str,
    raw: RawHeaders,
    *,
    named: frozenset[bytes],
    via: bytes,
    client: Client,
    upstream: Upstream,
    body_length: int | None,
    chunked: bool,
    upgrade: bytes | None = None,
) -> bytes:
    """The request head for the app: the client's headers byte for byte, less hop-by-hop and
    system headers (and those `named` in the client's `Connection`), with Host, X-Forwarded-*,
    Via and the body's framing set by paastis."""
    own_origin = client.origin
    forwarded_for: list[bytes] = []
    claimed_proto = b""
    lines = [
        b"%b %b HTTP/1.1\r\nHost: %b\r\n"
        % (method.encode(), upstream.target(path), upstream.host_header)
    ]
    for name, value in raw:
        lowered = name.lower()
        if lowered in DROPPED_FROM_REQUESTS or lowered in named or lowered.startswith(b"proxy-"):
            if lowered == b"x-forwarded-for":
                forwarded_for.append(value)
            elif lowered == b"x-forwarded-proto":
                claimed_proto = value.strip().lower()
            continue
        if lowered == b"origin" and value == own_origin:
            value = upstream.origin
        lines.append(b"%b: %b\r\n" % (name, value))
    remote = client.remote.encode()
    previous = b", ".join(forwarded_for)
    # A load balancer in front (TLS terminated there) knows the client's scheme better.
    proto = claimed_proto if claimed_proto in (b"http", b"https") else client.scheme.encode()
    lines.append(
        b"X-Forwarded-For: %b\r\nX-Forwarded-Proto: %b\r\nX-Forwarded-Host: %b\r\nVia: %b\r\n"
        % (
            previous + b", " + remote if previous else remote,
            proto,
            client.authority.encode(),
            via,
        )
    )
    if upgrade is not None:
        lines.append(b"Connection: Upgrade\r\nUpgrade: %b\r\n" % upgrade)
    if chunked:
        lines.append(b"Transfer-Encoding: chunked\r\n")
    elif body_length is not None:
        lines.append(b"Content-Length: %d\r\n" % body_length)
    lines.append(b"\r\n")
    return b"".join(lines)


def client_answer_head(
    status: int,
    reason: bytes,
    raw: RawHeaders,
    *,
    named: frozenset[bytes],
    framing: Framing,
    keep_alive: bool,
    http10_client: bool,
    locations: LocationRewrite | None,
    extra: Iterable[tuple[bytes, bytes]] = (),
) -> bytes:
    """The answer head for the client: the app's headers byte for byte, less hop-by-hop ones
    and those `named` in the app's `Connection` (but for a 101, whose Upgrade and Connection
    belong to the handshake), with a `Date` when the app sent none and this hop's framing."""
    switching = status == 101
    if switching:
        named = frozenset()
    lines = [b"HTTP/1.1 %d %b\r\n" % (status, reason)]
    has_date = False
    keeps_length = framing in (Framing.LENGTH, Framing.NONE)
    for name, value in raw:
        lowered = name.lower()
        if lowered in HOP_BY_HOP or lowered in named or lowered.startswith(b"proxy-"):
            if not (switching and lowered in (b"connection", b"upgrade")):
                continue
        elif lowered == b"content-length":
            if not keeps_length:
                continue
        elif lowered == b"date":
            has_date = True
        elif lowered == b"location" and locations is not None:
            value = locations.rewrite(value)
        lines.append(b"%b: %b\r\n" % (name, value))
    if not has_date:
        lines.append(b"Date: %b\r\n" % http_date())
    lines.extend(b"%b: %b\r\n" % pair for pair in extra)
    if framing is Framing.CHUNKED:
        lines.append(b"Transfer-Encoding: chunked\r\n")
    if not switching:
        if not keep_alive:
            lines.append(b"Connection: close\r\n")
        elif http10_client:
            lines.append(b"Connection: keep-alive\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


@dataclass(frozen=True)
class LocationRewrite:
    """A redirect to the app's own origin (under its path prefix) stays behind paastis."""

    base: URL  # the app's upstream URL
    client: Client

    def rewrite(self, value: bytes) -> bytes:
        try:
            location = value.decode("ascii")
            target = URL(location, encoded=True)
            if not target.absolute or target.origin() != self.base.origin():
                return value
        except (UnicodeDecodeError, ValueError):
            return value
        path = target.raw_path
        prefix = self.base.raw_path.rstrip("/")
        if prefix and (path == prefix or path.startswith(prefix + "/")):
            path = path[len(prefix) :] or "/"
        query = f"?{target.raw_query_string}" if target.raw_query_string else ""
        fragment = f"#{target.raw_fragment}" if target.raw_fragment else ""
        return f"{self.client.scheme}://{self.client.authority}{path}{query}{fragment}".encode()
