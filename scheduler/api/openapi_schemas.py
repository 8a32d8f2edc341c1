"""The building blocks of the OpenAPI description: references, answers, errors, the
response schemas (see ``scheduler.api.openapi`` for the operations)."""

from __future__ import annotations

from typing import Any

from scheduler.api.errors import REQUEST_ID_HEADER
from scheduler.api.models import JobRequest, SessionRequest
from scheduler.core.capacity import Phase
from scheduler.jobs import JobStatus

Schema = dict[str, Any]
SCHEMAS = "#/components/schemas/"
ERROR_STATUS = {
    400: "The body is not JSON, not UTF-8, or nested too deeply (`field`: `body`)",
    401: "No bearer token, or not a valid one",
    403: "The token may not use this endpoint, or X-Tenant names another tenant",
    404: "No such endpoint, job or session (another tenant's are not found either)",
    409: "The job already finished (cancel) or was cancelled (run)",
    410: "The caller session's worker is gone",
    413: "The body is larger than `server.max_body_bytes`",
    422: "A field is invalid; `error.field` names it",
    429: "Over a limit (queue depth or cost, tenant quota, session): retry after `Retry-After`",
    502: "The job failed without an answer, or Vast or the worker failed the call",
    503: "Draining, or no worker ready, or Vast is rate limiting: retry after `Retry-After`",
    504: "The job's deadline passed before a worker answered (`field`: `timeout_s`)",
}
RETRY_AFTER_STATUS = (429, 503)


def ref(name: str) -> Schema:
    return {"$ref": SCHEMAS + name}


def json_body(schema: Schema) -> Schema:
    return {"application/json": {"schema": schema}}


def header(description: str, schema: Schema | None = None, required: bool = True) -> Schema:
    return {"description": description, "required": required,
            "schema": schema or {"type": "string"}}  # fmt: skip


REQUEST_ID = header("The caller's X-Request-ID if sane, else a fresh one")


def answer(description: str, content: Schema | None = None, **headers: Schema) -> Schema:
    response: Schema = {"description": description,
                        "headers": {REQUEST_ID_HEADER: REQUEST_ID, **headers}}  # fmt: skip
    if content is not None:
        response["content"] = content
    return response


def error_answer(status: int) -> Schema:
    extra: dict[str, Schema] = {}
    if status in RETRY_AFTER_STATUS:
        extra["Retry-After"] = header("Seconds to wait", {"type": "string", "pattern": "^[0-9]+$"})
    if status == 401:
        extra["WWW-Authenticate"] = header("The bearer challenge")
    return answer(ERROR_STATUS[status], json_body(ref("Error")), **extra)


def model_schemas() -> dict[str, Schema]:
    """The request models' JSON schemas, their nested models lifted into components."""
    found: dict[str, Schema] = {}
    for model in (JobRequest, SessionRequest):
        schema = model.model_json_schema(ref_template=SCHEMAS + "{model}")
        found.update(schema.pop("$defs", {}))
        found[model.__name__] = schema
    return found


NUMBER = {"type": "number"}
INTEGER = {"type": "integer"}
STRING = {"type": "string"}
NULLABLE_NUMBER = {"type": ["number", "null"]}
NULLABLE_INTEGER = {"type": ["integer", "null"]}


def obj(properties: dict[str, Schema], required: list[str] | None = None) -> Schema:
    return {"type": "object", "properties": properties, "required": required or []}


def response_schemas() -> dict[str, Schema]:
    job_props: dict[str, Schema] = {
        "id": STRING, "endpoint": STRING, "route": STRING,
        "status": ref("JobStatus"), "cost": NUMBER, "priority": INTEGER, "tenant": STRING,
        "attempts": INTEGER, "created_at": {**NUMBER, "description": "Unix time, seconds"},
        "timings": obj({"queued_s": NUMBER, "total_s": NUMBER}, ["queued_s", "total_s"]),
        "idempotency_key": STRING, "history": {"type": "array", "items": STRING},
        "error": STRING,
        "result": obj({"status_code": INTEGER, "content_type": {"type": ["string", "null"]},
                       "body": {"description": "JSON, text, or null once streamed"}},
                      ["status_code", "content_type"]),
    }  # fmt: skip
    return {
        "Error": obj({
            "error": obj({"code": STRING, "message": STRING, "field": STRING},
                         ["code", "message"]),
            "request_id": {"type": ["string", "null"]},
        }, ["error", "request_id"]),
        "JobStatus": {"type": "string", "enum": [str(s) for s in JobStatus]},
        "JobCreated": obj({"id": STRING, "status": ref("JobStatus"), "cost": NUMBER,
                           "eta_s": NULLABLE_NUMBER}, ["id", "status", "cost", "eta_s"]),
        "Job": obj(job_props, ["id", "endpoint", "route", "status", "cost", "priority",
                               "tenant", "attempts", "created_at", "timings"]),
        "Session": obj({"id": STRING, "cost": NUMBER, "inflight_cost": NUMBER,
                        "inflight_jobs": INTEGER, "expires_in_s": NUMBER,
                        "gone": {"type": "boolean"}},
                       ["id", "cost", "inflight_cost", "inflight_jobs", "expires_in_s", "gone"]),
        "Health": obj({"status": {"type": "string",
                                  "enum": ["ok", "ready", "draining", "store_unavailable",
                                           "vast_keys_unavailable", "route_refused"]},
                       "reason": {**STRING, "description": "Why not ready"}},
                      ["status"]),
        "Status": obj({"accepting": {"type": "boolean"},
                       "store": obj({"backend": {"type": "string", "enum": ["memory", "redis"]},
                                     "healthy": {"type": "boolean"}}, ["backend", "healthy"]),
                       "endpoints": {"type": "object",
                                     "additionalProperties": ref("EndpointStatus")},
                       "worker_tls": ref("WorkerTls"), "vast": ref("VastAccount")},
                      ["accepting", "store", "endpoints"]),
        "WorkerTls": obj({
            "source": {"type": "string", "enum": ["console", "ca_bundle"],
                       "description": "Where Vast's root for HTTPS workers comes from"},
            "loaded": {"type": "boolean",
                       "description": "false until an HTTPS worker first needs the root"},
            "root_sha256": {"type": ["string", "null"]},
            "fetches": INTEGER, "failures": INTEGER, "refreshes": INTEGER,
            "rotations": INTEGER,
            "last_error": {"type": ["string", "null"],
                           "description": "Why the last download failed; null after one worked"},
        }, ["source", "loaded", "root_sha256"]),
        "VastAccount": obj({
            "account_key": {"type": "boolean", "description": "vast.account_api_key is set"},
            "listed": {"type": "boolean",
                       "description": "The account's endpoint listing has been read"},
            "listing_age_s": NULLABLE_NUMBER, "listings": INTEGER,
            "refreshes_after_401": {**INTEGER,
                                    "description": "Listings read because Vast refused a key"},
            "missing_endpoints": {"type": "array", "items": STRING},
            "last_error": {"type": ["string", "null"]},
        }, ["account_key", "listed", "listings", "missing_endpoints", "last_error"]),
        "EndpointVast": obj({
            "key_source": {"type": ["string", "null"],
                           "enum": ["endpoint", "account", "vast.api_key", None],
                           "description": "Where the endpoint's route key comes from; null: "
                                          "none yet"},
            "id": {**NULLABLE_INTEGER, "description": "From the account listing; null without"},
            "state": {"type": ["string", "null"]},
            "max_queue_time_s": NULLABLE_NUMBER, "target_queue_time_s": NULLABLE_NUMBER,
            "max_workers": NULLABLE_INTEGER, "cold_workers": NULLABLE_INTEGER,
            "min_load": NULLABLE_NUMBER, "target_util": NULLABLE_NUMBER,
            "cold_mult": NULLABLE_NUMBER,
            "workers": {"oneOf": [{"type": "null"}, ref("VastWorkers")],
                        "description": "null until polled (only while the status is read or "
                                       "jobs wait)"},
        }, ["key_source", "id"]),
        "VastWorkers": obj({
            "age_s": NUMBER, "error": {"type": ["string", "null"]},
            "unavailable": {"type": ["string", "null"],
                            "description": "Vast's error_msg: the endpoint cannot be queried yet"},
            "count": INTEGER,
            "by_status": {"type": "object", "additionalProperties": INTEGER},
            "workers": {"type": "array", "items": obj({
                "id": INTEGER, "status": STRING, "cur_load": NUMBER, "perf": NUMBER,
                "measured_perf": NUMBER, "reqs_working": INTEGER, "reliability": NUMBER,
                "loaded_at": NUMBER,
            }, ["id", "status"])},
        }, ["age_s", "error", "unavailable", "count", "workers"]),
        "EndpointStatus": obj({
            "queue_depth": INTEGER, "queued_cost": NUMBER, "inflight": INTEGER,
            "max_concurrency": {**NULLABLE_INTEGER,
                                "description": "null: no cap (leases and worker limits bound it)"},
            "max_worker_cost": {**NULLABLE_NUMBER,
                                "description": "The work a worker holds at most "
                                               "(`capacity.max_worker_cost`); null: unset"},
            "max_depth": INTEGER,
            "known_workers": {"type": "array", "items": STRING}, "leases": INTEGER,
            "workers": {"type": "array", "items": ref("WorkerStatus"),
                        "description": "Each leased worker, busiest first"},
            "eta_s": NULLABLE_NUMBER, "throughput_cost_per_s": NUMBER,
            "polling": {"type": "boolean"},
            "route_error": {**obj({
                "kind": {**STRING, "description": "The last route call's error"},
                "for_s": {**NUMBER, "description": "Since the first of the calls failing in a row"},
                "streak": INTEGER,
                "retry_in_s": {**NUMBER, "description": "Until the next route call may go"},
                "refused": {"type": "boolean",
                            "description": "Vast refuses the calls (400/401): not ready"},
            }, ["kind", "for_s", "streak", "retry_in_s", "refused"]), "type": ["object", "null"],
                "description": "Route calls failing in a row; null once one is answered"},
            "fleet": obj({"unfinished_jobs": INTEGER, "unfinished_cost": NUMBER},
                         ["unfinished_jobs", "unfinished_cost"]),
            "vast": ref("EndpointVast"),
        }, ["queue_depth", "queued_cost", "inflight", "max_depth"]),
        "WorkerStatus": obj({
            "worker_url": STRING,
            "limit": {**NULLABLE_INTEGER, "minimum": 1,
                      "description": "Jobs the worker may hold at once, learnt from completions; "
                                     "null when the endpoint sets `capacity.enabled: false`"},
            "phase": {"type": ["string", "null"], "enum": [*(str(p) for p in Phase), None],
                      "description": "How the limit is being learnt; null as `limit`"},
            "inflight_jobs": INTEGER, "inflight_cost": NUMBER,
            "throughput_cost_per_s": {**NULLABLE_NUMBER,
                                      "description": "Cost per busy second; null until measured"},
            "latency_floor_s_per_cost": {
                **NULLABLE_NUMBER,
                "description": "Least latency per unit of cost over a round (s), drifting up "
                               "slowly; null until measured"},
        }, ["worker_url", "limit", "phase", "inflight_jobs", "inflight_cost",
            "throughput_cost_per_s", "latency_floor_s_per_cost"]),
        "Reloaded": obj({
            "status": {"type": "string", "enum": ["reloaded"]},
            "changes": {"type": "array", "items": STRING,
                        "description": "One `path: old -> new` per setting changed"},
            "added_endpoints": {"type": "array", "items": STRING},
            "updated_endpoints": {"type": "array", "items": STRING},
        }, ["status", "changes", "added_endpoints", "updated_endpoints"]),
    }  # fmt: skip


def path_param(name: str, schema: Schema, description: str) -> Schema:
    return {"name": name, "in": "path", "required": True, "schema": schema,
            "description": description}  # fmt: skip


def header_param(name: str, schema: Schema, description: str) -> Schema:
    return {"name": name, "in": "header", "required": False, "schema": schema,
            "description": description}  # fmt: skip
