"""The reverse proxy: Host -> app, wake when needed, stream the request and the answer.

routing (target, Host, app key) · handler (the request's path through paastis) · forward (the
HTTP hop) · websocket (the tunnel after a 101) · upstream (connections to apps) · headers (the
header rules) · answer (bytes written to the client) · connection (the client connections) ·
failures (paastis' own answers) · access_log (the log line and metrics of each request).
"""

from paastis.proxy.access_log import RequestRecorder
from paastis.proxy.connection import ProxyServer
from paastis.proxy.forward import Forwarder, Timeouts
from paastis.proxy.handler import Proxy, ProxyPolicy
from paastis.proxy.upstream import UpstreamPool

__all__ = [
    "Forwarder",
    "Proxy",
    "ProxyPolicy",
    "ProxyServer",
    "RequestRecorder",
    "Timeouts",
    "UpstreamPool",
]
