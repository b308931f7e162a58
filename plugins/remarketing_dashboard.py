"""The Remarketing page in Airflow's UI: per market, the day's funnel, gate and deliverability.

A FastAPI app served by Airflow's API server under ``/remarketing``, shown in the UI's nav bar
as *Remarketing* (an external view with ``url_route``: the UI frames it at ``/plugin/remarketing``).
Numbers are read from the remarketing DB (connection ``remarketing_db``) and the market
configuration; see ``remarketing.dashboard.queries`` for what each one counts.

Access follows Airflow's own login: the page reads the UI's session cookie (or a bearer token)
and asks the auth manager whether the user may see the custom view ``Remarketing``
(the simple auth manager lets every viewer in; FAB and Keycloak map it to their permissions).

* ``GET /remarketing/?day=YYYY-MM-DD``: the page (default: today, UTC);
* ``GET /remarketing/api/day?day=YYYY-MM-DD``: the same numbers as JSON.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime
from typing import Annotated

from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response

log = logging.getLogger(__name__)

URL_PREFIX = "/remarketing"
RESOURCE = "Remarketing"
Day = Annotated[
    date | None, Query(description="UTC day, YYYY-MM-DD; default today")
]  # the custom view name auth managers authorize
ICON = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" fill="none" stroke="#4a6fa5" '
    'stroke-width="2" stroke-linecap="round" stroke-linejoin="round"><path d="M4 4h16v12H4z"/>'
    '<path d="m4 5 8 6 8-6"/><path d="M8 20h8"/></svg>'
)


async def airflow_user_may_view(request: Request) -> None:
    """Let in a user logged in to Airflow whom the auth manager allows the ``Remarketing`` view."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.core_api.security import get_user
    from fastapi.security import HTTPAuthorizationCredentials
    from fastapi.security.utils import get_authorization_scheme_param

    scheme, credentials = get_authorization_scheme_param(request.headers.get("Authorization"))
    bearer = None
    if scheme.lower() == "bearer" and credentials:
        bearer = HTTPAuthorizationCredentials(scheme=scheme, credentials=credentials)
    user = await get_user(request, None, bearer)  # 401/403 for a missing, expired or invalid token
    if not get_auth_manager().is_authorized_custom_view(method="GET", resource_name=RESOURCE, user=user):
        raise HTTPException(status_code=403, detail=f"not allowed to view {RESOURCE}")


def _state_engine():
    """The remarketing DB (per connection URL, migrated once): an edited connection is used at once."""
    from remarketing.platform.connections import migrated_remarketing_engine

    return migrated_remarketing_engine()


def _markets():
    from remarketing.markets import load_markets

    return load_markets()


def create_app(
    *,
    engine_factory: Callable = _state_engine,
    markets_loader: Callable = _markets,
    authorize: Callable[[Request], Awaitable[None]] = airflow_user_may_view,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> FastAPI:
    """The page's app; tests pass their own engine, markets, authorization and clock."""
    app = FastAPI(title="Remarketing", docs_url=None, redoc_url=None, openapi_url=None)

    def engine():
        return engine_factory()  # the default caches one engine per URL; tests pass their own

    def load(day: date | None):
        from remarketing.dashboard.queries import load_dashboard

        now = clock()
        return load_dashboard(engine(), markets_loader(), day or now.astimezone(UTC).date(), now=now)

    @app.exception_handler(HTTPException)
    async def refused(request: Request, exc: HTTPException):
        if exc.status_code in (401, 403) and "text/html" in request.headers.get("accept", ""):
            page = (
                "<!doctype html><meta charset=utf-8><title>Remarketing</title>"
                f"<p>{'Log in to Airflow first.' if exc.status_code == 401 else 'You may not see this page.'}"
                ' <a href="/" target="_top">Open Airflow</a></p>'
            )
            return HTMLResponse(page, status_code=exc.status_code)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.get("/icon.svg")
    def icon() -> Response:
        return Response(ICON, media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})

    @app.get("/", response_class=HTMLResponse, dependencies=[Depends(authorize)])
    async def page(request: Request, day: Day = None):
        from remarketing.dashboard.page import render_page

        dashboard = await run_in_threadpool(load, day)
        html = await run_in_threadpool(render_page, dashboard, base=request.scope.get("root_path", ""))
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    @app.get("/api/day", dependencies=[Depends(authorize)])
    async def day_numbers(day: Day = None) -> JSONResponse:
        dashboard = await run_in_threadpool(load, day)
        return JSONResponse(dashboard.to_dict(), headers={"Cache-Control": "no-store"})

    return app


app = create_app()


class RemarketingDashboardPlugin(AirflowPlugin):
    name = "remarketing_dashboard"
    fastapi_apps = [{"app": app, "url_prefix": URL_PREFIX, "name": "Remarketing page"}]
    external_views = [
        {
            "name": "Remarketing",
            "href": f"{URL_PREFIX}/",
            "url_route": "remarketing",
            "destination": "nav",
            "nav_top_level": True,
            "icon": f"{URL_PREFIX}/icon.svg",
        }
    ]
