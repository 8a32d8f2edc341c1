"""``GET /openapi.json``: the OpenAPI 3.1 description of this daemon, built from its config.

Request bodies are the pydantic models' own JSON schemas (``JobRequest``, ``SessionRequest``),
so the spec cannot drift from validation; ``tests/integration/test_openapi.py`` checks that
every aiohttp route is described here and every path here is routed. The spec describes this
deployment: the endpoint names it serves, and, while auth is on, the bearer scheme with the
open paths marked as such.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from aiohttp import web

from scheduler.api.context import CONFIG, SERVICE
from scheduler.api.models import (
    MAX_ROUTE_CHARS,
    PROXY_TAIL_PATTERN,
    check_worker_route,
)
from scheduler.api.openapi_schemas import (
    ERROR_STATUS,
    STRING,
    Schema,
    answer,
    error_answer,
    header,
    header_param,
    json_body,
    model_schemas,
    path_param,
    ref,
    response_schemas,
)
from scheduler.config import ENDPOINT_NAME, TENANT_NAME, AppConfig


def valid_route(route: str) -> bool:
    try:
        check_worker_route(route)
    except ValueError:
        return False
    return True


class SpecBuilder:
    """One operation at a time, with the errors that the deployment's auth adds."""

    def __init__(self, config: AppConfig) -> None:
        self.config = config
        self.auth = config.auth.enabled
        names = sorted(config.endpoints)
        endpoint_schema: Schema = (
            {"type": "string", "enum": names} if names
            else {"type": "string", "pattern": f"^{ENDPOINT_NAME.pattern}$"}
        )  # fmt: skip
        self.endpoint = path_param("endpoint", endpoint_schema, "A configured endpoint's name")
        self.paths: dict[str, dict[str, Schema]] = {}

    def add(self, method: str, path: str, operation: Schema, errors: tuple[int, ...] = ()) -> None:
        responses = operation.setdefault("responses", {})
        protected = self.auth and path not in self.config.auth.open_paths
        codes = set(errors)
        if protected:
            codes.add(401)
            if "{endpoint}" in path or any(p.get("name") == "X-Tenant" for p in
                                           operation.get("parameters", [])):  # fmt: skip
                codes.add(403)
        if self.auth and not protected:
            operation["security"] = []
        for status in sorted(codes):
            responses[str(status)] = error_answer(status)
        self.paths.setdefault(path, {})[method] = operation

    def known_routes(self) -> list[str]:
        """The worker routes the config names (defaults and per-route estimators)."""
        routes = {
            r for ep in self.config.endpoints.values() for r in (ep.default_route, *ep.routes)
        }
        return sorted(r.removeprefix("/") for r in routes if valid_route(r))

    def tenant(self) -> list[Schema]:
        if self.auth:
            return []  # the token names the tenant; an X-Tenant naming another one gets 403
        return [header_param("X-Tenant", {"type": "string", "pattern": f"^{TENANT_NAME.pattern}$"},
                             "The tenant whose fair share the job counts against")]  # fmt: skip


def job_operations(b: SpecBuilder) -> None:
    job_id = path_param("job_id", STRING, "A job id from a submission")
    body = {"required": True, "content": json_body(ref("JobRequest"))}
    b.add("post", "/v1/endpoints/{endpoint}/jobs", {
        "operationId": "submit", "tags": ["jobs"], "summary": "Queue a job",
        "parameters": [b.endpoint, *b.tenant()], "requestBody": body,
        "responses": {
            "202": {**answer("Queued", json_body(ref("JobCreated")),
                             Location=header("The job's URL")), "links": job_links()},
            "200": answer("The job this idempotency_key already made",
                          json_body(ref("Job")), **{"Idempotent-Replayed": header("true")}),
        },
    }, (400, 404, 413, 422, 429, 503))  # fmt: skip
    b.add("post", "/v1/endpoints/{endpoint}/run", {
        "operationId": "run", "tags": ["jobs"],
        "summary": "Run a job and pass the worker's answer through, streamed",
        "description": "Same body as a submission, without `webhook` or `idempotency_key`.",
        "parameters": [b.endpoint, *b.tenant()], "requestBody": body,
        "responses": {"default": passthrough()},
    })  # fmt: skip
    b.add("get", "/v1/jobs/{job_id}", {
        "operationId": "get_job", "tags": ["jobs"], "summary": "A job's state and answer",
        "parameters": [job_id], "responses": {"200": answer("The job", json_body(ref("Job")))},
    }, (404,))  # fmt: skip
    b.add("delete", "/v1/jobs/{job_id}", {
        "operationId": "cancel_job", "tags": ["jobs"], "summary": "Cancel a job",
        "parameters": [job_id],
        "responses": {"202": answer("Cancelling", json_body(ref("Job")))},
    }, (404, 409))  # fmt: skip


PASSTHROUGH_ERRORS = (400, 401, 403, 404, 409, 410, 413, 422, 429, 502, 503, 504)


def job_links() -> Schema:
    job = {"job_id": "$response.body#/id"}
    return {"GetJob": {"operationId": "get_job", "parameters": job},
            "CancelJob": {"operationId": "cancel_job", "parameters": job}}  # fmt: skip


def session_links() -> Schema:
    session = {"endpoint": "$request.path.endpoint", "session_id": "$response.body#/id"}
    return {"GetSession": {"operationId": "get_session", "parameters": session},
            "CloseSession": {"operationId": "close_session", "parameters": session}}  # fmt: skip


def passthrough() -> Schema:
    """Any status: the worker's own answer, or one of the daemon's errors (the two share
    status codes, so they cannot be told apart by status in the spec)."""
    daemon = "; ".join(f"{code}: {ERROR_STATUS[code]}" for code in PASSTHROUGH_ERRORS)
    return answer(
        "The worker's status, headers and body, streamed as they come (with `X-Job-Id`); or "
        f"the daemon's own `Error` JSON, before or instead of an answer. {daemon}.",
        {"*/*": {"schema": {}}},
    )


def session_operations(b: SpecBuilder) -> None:
    session_id = path_param("session_id", STRING, "A caller session's id")
    session = json_body(ref("Session"))
    b.add("post", "/v1/endpoints/{endpoint}/sessions", {
        "operationId": "open_session", "tags": ["sessions"],
        "summary": "Pin a conversation to one worker",
        "parameters": [b.endpoint],
        "requestBody": {"required": True, "content": json_body(ref("SessionRequest"))},
        "responses": {"201": {**answer("Opened", session), "links": session_links()}},
    }, (400, 404, 413, 422, 429, 502, 503))  # fmt: skip
    path = "/v1/endpoints/{endpoint}/sessions/{session_id}"
    b.add("get", path, {
        "operationId": "get_session", "tags": ["sessions"], "summary": "A caller session",
        "parameters": [b.endpoint, session_id], "responses": {"200": answer("Live", session)},
    }, (404, 410))  # fmt: skip
    b.add("delete", path, {
        "operationId": "close_session", "tags": ["sessions"], "summary": "End a caller session",
        "parameters": [b.endpoint, session_id], "responses": {"200": answer("Ended", session)},
    }, (404,))  # fmt: skip


def proxy_operation(b: SpecBuilder) -> None:
    job_fields = [
        header_param("X-Job-Priority", {"type": "integer", "minimum": 0, "maximum": 9},
                     "The job's priority (9 first)"),
        header_param("X-Job-Cost", {"type": "number", "minimum": 0, "maximum": 1e9},
                     "The job's cost, as the endpoint's caller_cost allows"),
        header_param("X-Job-Timeout", {"type": "number", "exclusiveMinimum": 0,
                                       "maximum": 86_400}, "The job's deadline, seconds"),
    ]  # fmt: skip
    b.add("post", "/v1/proxy/{endpoint}/{tail}", {
        "operationId": "proxy", "tags": ["proxy"],
        "summary": "Transparent pass-through to a worker route",
        "description": (
            "The body is the worker's payload; `/{tail}` is the worker route (it may hold '/'; "
            "never '.' or '..' segments, '%', or control characters). An OpenAI client with "
            "`base_url=.../v1/proxy/<endpoint>/v1` works unchanged."
        ),
        "parameters": [b.endpoint,
                       path_param("tail", {"type": "string", "maxLength": MAX_ROUTE_CHARS - 1,
                                           "pattern": PROXY_TAIL_PATTERN,
                                           "examples": b.known_routes()},
                                  "The worker route without its leading '/'"),
                       *b.tenant(), *job_fields],
        "requestBody": {"required": True,
                        "content": json_body({"type": "object", "additionalProperties": True})},
        "responses": {"default": passthrough()},
    })  # fmt: skip


def operations_paths(b: SpecBuilder) -> None:
    health = json_body(ref("Health"))
    b.add("get", "/healthz", {
        "operationId": "healthz", "tags": ["operations"], "summary": "Liveness",
        "responses": {"200": answer("Alive", health)},
    })  # fmt: skip
    b.add("get", "/readyz", {
        "operationId": "readyz", "tags": ["operations"], "summary": "Readiness",
        "responses": {"200": answer("Taking jobs", health),
                      "503": answer("Draining, the store unreachable, or no Vast endpoint "
                                    "listing read yet (`reason` says why)", health)},
    })  # fmt: skip
    b.add("get", "/v1/status", {
        "operationId": "status", "tags": ["operations"], "summary": "Per-endpoint live state",
        "responses": {"200": answer("The state", json_body(ref("Status")))},
    })  # fmt: skip
    b.add("get", "/metrics", {
        "operationId": "metrics", "tags": ["operations"], "summary": "Prometheus exposition",
        "responses": {"200": answer("Metrics", {"text/plain": {"schema": STRING}})},
    })  # fmt: skip
    b.add("get", "/", {
        "operationId": "status_page", "tags": ["operations"],
        "summary": "Self-refreshing HTML status page (it reads /v1/status)",
        "responses": {"200": answer("The page", {"text/html": {"schema": STRING}})},
    })  # fmt: skip
    b.add("get", "/openapi.json", {
        "operationId": "openapi", "tags": ["operations"], "summary": "This document",
        "responses": {"200": answer("OpenAPI 3.1", json_body({"type": "object"}))},
    })  # fmt: skip


ADMIN_ERRORS = {
    403: "Not an admin token (`admin: true` in `auth.tokens`); always while auth is off",
    409: "Changes that need a restart (`problems` names each path), or no config file to "
         "read; nothing was applied",
    422: "The file is invalid: `problems` lists each error with its YAML path; the running "
         "config is kept",
}  # fmt: skip


def admin_operations(b: SpecBuilder) -> None:
    errors = {
        str(code): answer(text, json_body(ref("Error"))) for code, text in ADMIN_ERRORS.items()
    }
    b.add("post", "/v1/admin/reload", {
        "operationId": "admin_reload", "tags": ["admin"],
        "summary": "Reload the config file (as SIGHUP does)",
        "description": "New endpoints, limits, estimators and tokens apply without dropping "
                       "a job. A refusal's `Error` body adds `problems`: "
                       "`[{\"field\": YAML path, \"message\"}]`.",
        "responses": {"200": answer("Applied", json_body(ref("Reloaded"))), **errors},
    })  # fmt: skip


def build_spec(config: AppConfig) -> Schema:
    builder = SpecBuilder(config)
    operations = (job_operations, session_operations, proxy_operation, operations_paths,
                  admin_operations)  # fmt: skip
    for add in operations:
        add(builder)
    components: Schema = {"schemas": {**model_schemas(), **response_schemas()}}
    spec: Schema = {
        "openapi": "3.1.0",
        "info": {
            "title": "vast-scheduler",
            "version": package_version(),
            "description": (
                "A client-side scheduler in front of Vast.ai Serverless. Every error is "
                '`{"error": {"code", "message", "field"?}, "request_id"}`.'
            ),
        },
        "paths": builder.paths,
        "components": components,
    }
    if config.auth.enabled:
        components["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer",
                       "description": "A token from the daemon's auth.tokens"},
        }  # fmt: skip
        spec["security"] = [{"bearer": []}]
    return spec


def package_version() -> str:
    try:
        return version("vast-scheduler")
    except PackageNotFoundError:
        return "0+unknown"


async def openapi_json(request: web.Request) -> web.Response:
    service = request.app.get(SERVICE)  # its config is the live one, after a reload too
    return web.json_response(build_spec(request.app[CONFIG] if service is None else service.config))
