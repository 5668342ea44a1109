"""The aiohttp interfaces the proxy builds on beyond its documented API. Each is used in one
place (named below); when an aiohttp release changes one, this file fails first and says which."""

from __future__ import annotations

import inspect

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter


def parameters(function: object) -> list[str]:
    return list(inspect.signature(function).parameters)  # type: ignore[arg-type]


def test_request_handler_hooks_used_by_proxy_connection_exist() -> None:
    # paastis/proxy/connection.py subclasses RequestHandler for the head deadline and its own
    # bad-request answers.
    handler = web.RequestHandler
    assert parameters(handler.handle_error) == ["self", "request", "status", "exc", "message"]
    assert parameters(handler.finish_response) == ["self", "request", "resp", "start_time"]
    assert parameters(handler.data_received) == ["self", "data"]
    assert parameters(handler.connection_made) == ["self", "transport"]
    assert "manager" in parameters(handler.__init__)
    assert {"keepalive_timeout", "auto_decompress", "access_log", "logger"} <= set(
        parameters(handler.__init__)
    )


def test_server_makes_requests_through_its_request_factory_attribute() -> None:
    # paastis/proxy/connection.py wraps `request_factory` to learn when a head was parsed.
    assert "request_factory" in parameters(web.Server.__init__)
    assert "__call__" in vars(web.Server)  # the protocol factory ProxyServer overrides


def test_a_handlers_parser_can_be_replaced_to_take_the_connection_over() -> None:
    # paastis/proxy/websocket.py: take_over_connection() hands the client's bytes to the tunnel
    # after a 101, as aiohttp's own WebSocketResponse does.
    assert parameters(web.RequestHandler.set_parser)[:2] == ["self", "parser"]


def test_a_request_exposes_raw_headers_its_protocol_and_its_writer() -> None:
    # Raw header bytes (fidelity), the connection (tunnel), the writer (answers written as bytes).
    for name in ("raw_headers", "protocol", "writer", "transport", "raw_path", "keep_alive"):
        assert hasattr(web.BaseRequest, name), name
    assert {"write", "drain"} <= set(dir(AbstractStreamWriter))


def test_a_stream_response_can_report_its_own_keep_alive() -> None:
    # paastis/proxy/answer.py: RawAnswer overrides prepare/write_eof/keep_alive, which aiohttp's
    # connection handler calls (finish_response) and reads after each answer.
    assert isinstance(inspect.getattr_static(web.StreamResponse, "keep_alive"), property)
    assert inspect.iscoroutinefunction(web.StreamResponse.prepare)
    assert inspect.iscoroutinefunction(web.StreamResponse.write_eof)
