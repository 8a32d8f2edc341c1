"""/openapi.json: every aiohttp route is described and every described path is routed; the
request schemas are the models'; the document is valid OpenAPI 3.1; real answers match it."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jsonschema_rs
import pytest
from aiohttp import web
from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

from scheduler.api.models import JobRequest, SessionRequest
from scheduler.api.openapi import build_spec
from scheduler.app import create_app
from scheduler.config import AppConfig
from tests.integration.harness import (
    Daemon,
    daemon_config,
    running_daemon,
    running_emulator,
    wait_for_status,
)

TOKEN = "openapi-test-token-0123456789"
AUTH = {"tokens": [{"name": "team", "token": TOKEN}], "open_paths": ["/healthz", "/metrics"]}
ENDPOINTS = {"echo": {}, "llm": {"default_route": "/v1/chat/completions"}}
METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE"}  # HEAD is implied by GET


def config(auth: dict[str, Any]) -> AppConfig:
    return daemon_config("http://127.0.0.1:9", ENDPOINTS, auth=auth)


def described_routes(app: web.Application) -> list[web.AbstractRoute]:
    """Every route but the Vast-compatible front door's (``vast_*``): those speak Vast's wire
    protocol (bodies and status codes as the official console, autoscaler and worker answer,
    e.g. an empty 401 or 429), not the daemon's API with its ``Error`` bodies, so the spec
    leaves them out; README "Vast-compatible front door" documents them."""
    return [
        r for r in app.router.routes()
        if r.method in METHODS and not (r.name or "").startswith("vast_")
    ]  # fmt: skip


def routed(app: web.Application) -> set[tuple[str, str]]:
    """(method, path template) of every route, regexes stripped: ``{endpoint}``, ``{tail}``."""
    found = set()
    for route in described_routes(app):
        if route.method in METHODS:
            canonical = route.resource.canonical if route.resource is not None else ""
            found.add((route.method.lower(), canonical))
    return found


def described(spec: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method, path) for path, ops in spec["paths"].items() for method in ops}


@pytest.mark.parametrize("auth", [{"enabled": False}, AUTH], ids=["auth-off", "auth-on"])
def test_every_route_is_described_and_every_described_path_is_routed(
    auth: dict[str, Any],
) -> None:
    cfg = config(auth)
    app = create_app(cfg)
    spec = build_spec(cfg)
    assert routed(app) == described(spec)
    assert ("post", "/v1/proxy/{endpoint}/{tail}") in described(spec)
    names = {route.name for route in described_routes(app)}
    operation_ids = {op["operationId"] for ops in spec["paths"].values() for op in ops.values()}
    assert names == operation_ids  # operationId is the aiohttp route name


@pytest.mark.parametrize("auth", [{"enabled": False}, AUTH], ids=["auth-off", "auth-on"])
def test_spec_is_valid_openapi_3_1_with_resolvable_refs(auth: dict[str, Any]) -> None:
    spec = build_spec(config(auth))
    assert spec["openapi"].startswith("3.1")
    errors = [str(e) for e in OPENAPI_31_VALIDATOR.iter_errors(spec)]
    assert not errors, errors
    for name, schema in spec["components"]["schemas"].items():
        # Each component compiles as JSON Schema 2020-12 with the document's refs in scope.
        try:
            jsonschema_rs.Draft202012Validator({**schema, "components": spec["components"]})
        except Exception as exc:  # the validator's own error types vary by version
            pytest.fail(f"components.schemas.{name}: {exc}")
    refs = set(re.findall(r'"\$ref": "#/components/schemas/(\w+)"', repr(spec).replace("'", '"')))
    assert refs <= set(spec["components"]["schemas"]), refs - set(spec["components"]["schemas"])


def test_request_schemas_are_the_models_schemas() -> None:
    spec = build_spec(config(AUTH))
    schemas = spec["components"]["schemas"]
    for model in (JobRequest, SessionRequest):
        expected = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, nested in expected.pop("$defs", {}).items():
            assert schemas[name] == nested
        assert schemas[model.__name__] == expected
    bodies = {
        op["operationId"]: op["requestBody"]["content"]["application/json"]["schema"]
        for ops in spec["paths"].values()
        for op in ops.values()
        if "requestBody" in op
    }
    assert bodies["submit"] == bodies["run"] == {"$ref": "#/components/schemas/JobRequest"}
    assert bodies["open_session"] == {"$ref": "#/components/schemas/SessionRequest"}
    assert bodies["proxy"]["type"] == "object"
    route = schemas["JobRequest"]["properties"]["route"]["anyOf"][0]
    assert route["pattern"].startswith("^/")
    assert route["maxLength"] == 512


def test_path_parameters_match_the_templates() -> None:
    spec = build_spec(config(AUTH))
    for path, ops in spec["paths"].items():
        templated = set(re.findall(r"\{(\w+)\}", path))
        for op in ops.values():
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert declared == templated, (path, op["operationId"])
    endpoint = spec["paths"]["/v1/endpoints/{endpoint}/jobs"]["post"]["parameters"][0]
    assert endpoint["schema"]["enum"] == ["echo", "llm"]


def test_security_follows_the_auth_config() -> None:
    off = build_spec(config({"enabled": False}))
    assert "security" not in off
    assert "securitySchemes" not in off["components"]
    assert all("401" not in op["responses"] for ops in off["paths"].values() for op in ops.values())
    on = build_spec(config(AUTH))
    assert on["security"] == [{"bearer": []}]
    assert on["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "description": "A token from the daemon's auth.tokens"
    }  # fmt: skip
    for path, ops in on["paths"].items():
        for op in ops.values():
            if path in AUTH["open_paths"]:
                assert op["security"] == [], path
                assert "401" not in op["responses"], path
            elif "default" not in op["responses"]:  # run and proxy pass any status through
                assert "401" in op["responses"], path
                unauthorized = op["responses"]["401"]
                assert unauthorized["headers"]["WWW-Authenticate"]["required"] is True
    submit = on["paths"]["/v1/endpoints/{endpoint}/jobs"]["post"]
    assert "403" in submit["responses"]
    assert not any(p["name"] == "X-Tenant" for p in submit["parameters"])  # the token names it


def test_every_error_answer_is_the_error_schema_and_429_503_carry_retry_after() -> None:
    spec = build_spec(config(AUTH))
    for ops in spec["paths"].values():
        for op in ops.values():
            for status, response in op["responses"].items():
                if status.isdigit() and int(status) >= 400 and op["operationId"] != "readyz":
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Error"}
                if status in ("429", "503") and op["operationId"] != "readyz":
                    assert response["headers"]["Retry-After"]["required"] is True


@pytest.fixture
async def daemon() -> AsyncIterator[Daemon]:
    async with running_emulator({"echo": {"workers": 1}, "llm": {"workers": 1}}) as emulator:
        cfg = daemon_config(emulator.autoscaler_url, ENDPOINTS, auth=AUTH)
        async with running_daemon(cfg) as daemon:
            yield daemon


def validator_for(spec: dict[str, Any], name: str) -> jsonschema_rs.Validator:
    schema = {"$ref": f"#/components/schemas/{name}", "components": spec["components"]}
    return jsonschema_rs.Draft202012Validator(schema)


async def test_served_spec_and_real_answers_match_it(
    daemon: Daemon, http: aiohttp.ClientSession
) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with http.get(f"{daemon.url}/openapi.json") as resp:
        assert resp.status == 401  # not among this config's open paths
    async with http.get(f"{daemon.url}/openapi.json", headers=headers) as resp:
        assert resp.status == 200
        spec = await resp.json()
    assert spec == build_spec(daemon.config)
    url = f"{daemon.url}/v1/endpoints/echo/jobs"
    async with http.post(url, json={"payload": {"x": 1}}, headers=headers) as resp:
        created = await resp.json()
    validator_for(spec, "JobCreated").validate(created)
    async with http.get(f"{daemon.url}/v1/jobs/nope", headers=headers) as resp:
        validator_for(spec, "Error").validate(await resp.json())
    # wait_for_status reads the job without a token: give it one through a session default.
    async with aiohttp.ClientSession(headers=headers) as authed:
        job = await wait_for_status(authed, daemon, created["id"], {"succeeded"})
        validator_for(spec, "Job").validate(job)
        async with authed.get(f"{daemon.url}/v1/status") as resp:
            status = await resp.json()
    validator_for(spec, "Status").validate(status)
    # The job's worker is still leased: its row (limit, measured throughput) was validated too.
    (worker,) = status["endpoints"]["echo"]["workers"]
    assert worker["limit"] >= 1
    assert worker["throughput_cost_per_s"] is not None
