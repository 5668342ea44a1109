"""The OpenAPI document of the system API: a valid OpenAPI 3.1 document, served without a token
on both listeners, and the live implementation checked against it by schemathesis (Scalingo API
emulator, a test upstream; the start and stop routes really act on an app)."""

from __future__ import annotations

import asyncio
import json
from importlib import resources

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck
from openapi_spec_validator import validate
from schemathesis import GenerationMode

import paastis
from conftest import url_of
from harness import SYSTEM_API, SYSTEM_TOKEN, scalingo_env
from waiting import eventually

DOCUMENT = json.loads(resources.files("paastis").joinpath("openapi.json").read_text())
# Examples per operation: enough to try each route's inputs, few enough for a quick suite.
MAX_EXAMPLES = 12
SEED = 20_26


def test_the_document_is_valid_openapi_3_1():
    validate(DOCUMENT)  # raises on an invalid document
    assert DOCUMENT["openapi"].startswith("3.1.")


def test_the_document_has_the_package_version():
    assert DOCUMENT["info"]["version"] == paastis.__version__


def test_the_document_describes_every_route_of_design_section_6():
    operations = {
        (method.upper(), path)
        for path, item in DOCUMENT["paths"].items()
        for method in item
        if method != "parameters"
    }

    assert operations == {
        ("GET", "/apps"),
        ("DELETE", "/apps"),
        ("GET", "/apps/{name}"),
        ("POST", "/apps/{name}/start"),
        ("POST", "/apps/{name}/stop"),
        ("GET", "/events"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
    }


async def test_the_document_is_served_without_a_token_on_the_system_api(scalingo, paastis):
    _emulator, api_url = scalingo
    proxy = await paastis(scalingo_env(api_url, **SYSTEM_API))

    async with proxy.get(
        "anything.example.net", "/openapi.json", headers={"PaastisProxyTarget": "system"}
    ) as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        assert await response.json() == DOCUMENT


async def test_the_document_is_served_without_a_token_on_the_admin_listener(scalingo, paastis):
    _emulator, api_url = scalingo
    proxy = await paastis(scalingo_env(api_url), admin=True)

    async with proxy.session.get(proxy.admin_url + "/openapi.json") as response:
        assert response.status == 200
        assert await response.json() == DOCUMENT
    async with proxy.session.post(proxy.admin_url + "/openapi.json") as response:
        assert response.status == 405
        assert response.headers["Allow"] == "GET"


def run_schemathesis(
    base_url: str, headers: dict[str, str], skip: frozenset[str] = frozenset()
) -> list[str]:
    """Checks every operation of the live API (but those labelled in `skip`) against its
    document; returns the failures.

    Runs in a worker thread: schemathesis calls the API with blocking `requests` while the
    server under test keeps serving on the test's event loop.
    """
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json", headers=headers)
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.label in skip:
            continue
        explicit = (
            [operation.Case(path_parameters={"name": "hello"})]
            if "{name}" in (operation.path)
            else []
        )

        @hypothesis.seed(SEED)
        @hypothesis.settings(
            max_examples=MAX_EXAMPLES,
            database=None,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
        )
        @hypothesis.given(
            case=operation.as_strategy(GenerationMode.POSITIVE)
            | operation.as_strategy(GenerationMode.NEGATIVE)
        )
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate(headers={**headers, "PaastisProxySystemApiToken": SYSTEM_TOKEN})

        for case in explicit:
            check = hypothesis.example(case=case)(check)
        try:
            check()
        except (Exception, BaseExceptionGroup) as exc:
            failures.append(f"{operation.label}: {exc}")
    return failures


@pytest.mark.timeout(120)
@pytest.mark.parametrize("listener", ["main", "admin"])
async def test_the_live_system_api_conforms_to_its_document(
    scalingo, upstream_factory, paastis, listener
):
    emulator, api_url = scalingo
    _upstream, server = await upstream_factory("hello")
    emulator.add_app("hello", base_url=url_of(server))
    emulator.add_app("sleepy", status="stopped")
    proxy = await paastis(scalingo_env(api_url, **SYSTEM_API), admin=listener == "admin")
    await proxy.tick()
    if listener == "main":
        base_url, headers, skip = proxy.url, {"PaastisProxyTarget": "system"}, frozenset()
    else:
        # The admin listener serves the metrics without a token, as the document says.
        base_url, headers, skip = proxy.admin_url, {}, frozenset({"GET /metrics"})

    failures = await asyncio.to_thread(run_schemathesis, base_url, headers, skip)

    assert failures == []
    # The examples named a real app: its start and stop routes acted on it.
    await eventually(lambda: emulator.count("scale", app="hello") >= 1, what="hello scaled")
