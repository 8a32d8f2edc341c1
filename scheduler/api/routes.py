"""The daemon's URL map."""

from __future__ import annotations

from aiohttp import web

from scheduler.api import (
    admin,
    frontdoor,
    frontdoor_sessions,
    jobs,
    openapi,
    sessions,
    status_page,
    streaming,
)

ENDPOINT = r"{endpoint:[A-Za-z0-9][A-Za-z0-9._-]{0,127}}"


def add_routes(app: web.Application) -> None:
    app.router.add_post(f"/v1/endpoints/{ENDPOINT}/jobs", jobs.submit_job, name="submit")
    app.router.add_post(f"/v1/endpoints/{ENDPOINT}/run", streaming.run_job, name="run")
    app.router.add_post(f"/v1/endpoints/{ENDPOINT}/sessions", sessions.open_session,
                        name="open_session")  # fmt: skip
    session_path = f"/v1/endpoints/{ENDPOINT}/sessions/{{session_id}}"
    app.router.add_get(session_path, sessions.get_session, name="get_session")
    app.router.add_delete(session_path, sessions.close_session, name="close_session")
    app.router.add_get("/v1/jobs/{job_id}", jobs.get_job, name="get_job")
    app.router.add_delete("/v1/jobs/{job_id}", jobs.cancel_job, name="cancel_job")
    # [\s\S]: a route with a line break must reach validation (422 naming route), not 404.
    app.router.add_post(f"/v1/proxy/{ENDPOINT}/{{tail:[\\s\\S]*}}", streaming.proxy, name="proxy")
    app.router.add_get("/", status_page.status_page, name="status_page")
    app.router.add_get("/healthz", admin.healthz, name="healthz")
    app.router.add_get("/readyz", admin.readyz, name="readyz")
    app.router.add_get("/v1/status", admin.status, name="status")
    app.router.add_get("/metrics", admin.metrics, name="metrics")
    app.router.add_get("/openapi.json", openapi.openapi_json, name="openapi")
    app.router.add_post("/v1/admin/reload", admin.reload_config, name="admin_reload")
    add_frontdoor_routes(app)


def add_frontdoor_routes(app: web.Application) -> None:
    """What ``vastai``'s client asks of ``webserver_url`` and ``autoscaler_url``."""
    app.router.add_get("/api/v0/endptjobs/", frontdoor.list_endpoints, name="vast_endpoints")
    app.router.add_get("/api/v0/endptjobs/{endpoint_id}/", frontdoor.get_endpoint,
                       name="vast_endpoint")  # fmt: skip
    app.router.add_post("/route/", frontdoor.route, name="vast_route")
    worker = f"{frontdoor.PREFIX}/{ENDPOINT}"
    app.router.add_post(f"{worker}/session/get", frontdoor_sessions.get_session,
                        name="vast_session_get")  # fmt: skip
    app.router.add_post(f"{worker}/session/end", frontdoor_sessions.end_session,
                        name="vast_session_end")  # fmt: skip
    app.router.add_post(f"{worker}/{{tail:[\\s\\S]*}}", frontdoor.worker_call, name="vast_worker")
