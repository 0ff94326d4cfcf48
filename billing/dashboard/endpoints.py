"""HTTP of the dashboard: sign-in and sign-out, the HTML pages, their live JSON, static files.

Pages are GETs rendered with Jinja2 (autoescaped) and sent with a strict Content-Security-
Policy: scripts and styles only from `/dashboard/static/`, no inline code. The session cookie
is HMAC-signed (see `cookies`), http-only, Secure and SameSite=Lax; the two POSTs (sign-in,
sign-out) also refuse a cross-site `Origin`. None of these routes is in the OpenAPI document:
they are the page, not the API.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, quote, urlsplit

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy.orm import Session

from billing.dashboard import charges, cookies, service, views
from billing.dashboard import formatting as fmt
from billing.dashboard import repository as repo
from billing.dashboard.config import get_dashboard_settings
from billing.invoices import export as invoice_export
from metering.api.deps import SessionDep, SettingsDep
from metering.auth.service import Principal, digest, resolve
from metering.config import Settings
from metering.core.clock import parse_period
from metering.errors import BadRequest, Forbidden, MeteringError, NotFound, Unauthorized

router = APIRouter(include_in_schema=False)

HERE = Path(__file__).resolve().parent
STATIC_TYPES = {"dashboard.css": "text/css; charset=utf-8",
                "dashboard.js": "text/javascript; charset=utf-8",
                "print.css": "text/css; charset=utf-8"}
MAX_FORM_BYTES = 8192
DASHBOARD_ROLES = ("team", "finance", "admin")

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    # Pages carry one team's figures: never kept by shared caches or the back-forward cache
    # after sign-out.
    "Cache-Control": "no-store",
}


@cache
def _static(name: str) -> bytes:
    return (HERE / "static" / name).read_bytes()


@cache
def asset_version() -> str:
    """A digest of the static files, put in their URLs so browsers may cache them for good."""
    h = hashlib.sha256()
    for name in sorted(STATIC_TYPES):
        h.update(_static(name))
    return h.hexdigest()[:12]


def _view_json(view: object, **kwargs: Any) -> str:
    return json.dumps(views.as_json(view), **kwargs)


def _environment() -> Environment:
    env = Environment(loader=FileSystemLoader(HERE / "templates"),
                      autoescape=select_autoescape(default=True, default_for_string=True),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update(money=fmt.money, quantity=fmt.quantity, when=fmt.when)
    # `tojson` of a page's view (its live figures for the script), as the refresh answers it.
    env.policies["json.dumps_function"] = _view_json
    env.globals.update(asset_version=asset_version)
    return env


TEMPLATES = _environment()


def render(request: Request, template: str, *, principal: Principal | None,
           status: int = 200, **context: Any) -> HTMLResponse:
    config = get_dashboard_settings()
    html = TEMPLATES.get_template(template).render(
        principal=principal, request_path=request.url.path,
        poll_ms=int(config.poll_seconds * 1000), **context)
    return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)


# --- sessions -------------------------------------------------------------------------------


def _secret(request: Request) -> bytes:
    secret: bytes | None = getattr(request.app.state, "dashboard_secret", None)
    if secret is None:
        settings: Settings = request.app.state.settings
        secret = cookies.load_secret(get_dashboard_settings().secret, settings.data_dir)
        request.app.state.dashboard_secret = secret
    return secret


def signed_in(request: Request, session: Session) -> Principal | None:
    """The principal of a valid session cookie: signed here, unexpired, key not revoked."""
    claim = cookies.parse(request.cookies.get(cookies.COOKIE_NAME))
    if claim is None:
        return None
    row = repo.key_row(session, claim.key_id)
    if row is None or row.revoked or row.role not in DASHBOARD_ROLES:
        return None
    if not cookies.verify(_secret(request), claim, row.digest, int(time.time())):
        return None
    if repo.signed_out(session, cookies.session_digest(claim)):
        return None
    return Principal(row.id, row.role, row.team_id)


def home(principal: Principal) -> str:
    if principal.role == "team" and principal.team_id:
        return service.team_href(principal.team_id)
    return "/dashboard/finance"


def _safe_next(value: str | None) -> str | None:
    """Only a path of this dashboard: never another site (open redirects)."""
    if not value or not value.startswith("/dashboard/") or "//" in value or "\\" in value:
        return None
    parts = urlsplit(value)
    return value if not parts.scheme and not parts.netloc else None


def _same_origin(request: Request) -> bool:
    """A browser POST names its page's origin; it must be this host. Clients that send no
    Origin (curl, tests) are not browsers a cross-site page can drive."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc == request.headers.get("host", "")


async def form_fields(request: Request) -> dict[str, str]:
    """An urlencoded form body (no multipart: the sign-in form has one field)."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise BadRequest("form too large")
    parsed = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=8)
    return {name: values[0] for name, values in parsed.items()}


FormDep = Annotated[dict[str, str], Depends(form_fields)]


def _sign_in_page(request: Request, principal: Principal | None, *, next_path: str | None,
                  error: str | None = None, notice: str | None = None,
                  status: int = 200) -> HTMLResponse:
    host = (request.url.hostname or "").lower()
    plain_http = request.url.scheme == "http" and host not in ("localhost", "127.0.0.1", "::1")
    return render(request, "sign_in.html", principal=principal, status=status,
                  next_path=next_path or "", error=error, notice=notice,
                  plain_http=plain_http, page="sign-in")


@router.get("/")
def site_root() -> Response:
    """A person who opens the service's address lands on the dashboard (API clients never
    ask for `/`; the API's reference is at `/docs`)."""
    return RedirectResponse("/dashboard", status_code=307)


@router.get("/dashboard")
@router.get("/dashboard/")
def dashboard_home(request: Request, session: SessionDep) -> Response:
    principal = signed_in(request, session)
    target = home(principal) if principal else "/dashboard/sign-in"
    return RedirectResponse(target, status_code=303)


@router.get("/dashboard/sign-in")
def sign_in_form(request: Request, session: SessionDep, next: str | None = None,
                 signed_out: int = 0) -> HTMLResponse:
    return _sign_in_page(request, signed_in(request, session), next_path=_safe_next(next),
                         notice="You are signed out." if signed_out else None)


@router.post("/dashboard/sign-in")
def sign_in(request: Request, session: SessionDep, form: FormDep) -> Response:
    """Check the key once; answer a session cookie naming it, never containing it."""
    next_path = _safe_next(form.get("next"))
    if not _same_origin(request):
        return _sign_in_page(request, None, next_path=next_path, status=403,
                             error="Sign-in must come from this site's own form.")
    key = form.get("key", "").strip()
    principal = resolve(session, key) if key and len(key) <= 256 else None
    if principal is None:
        return _sign_in_page(request, None, next_path=next_path, status=401,
                             error="That key is not valid: it is unknown or was revoked.")
    if principal.role not in DASHBOARD_ROLES:
        return _sign_in_page(request, None, next_path=next_path, status=403,
                             error=f"A {principal.role} key cannot open the dashboard; "
                                   "use a team or finance key.")
    config = get_dashboard_settings()
    lifetime = int(config.session_hours * 3600)
    value = cookies.sign(_secret(request), principal.key_id, digest(key),
                         int(time.time()) + lifetime)
    response = RedirectResponse(next_path or home(principal), status_code=303)
    response.set_cookie(cookies.COOKIE_NAME, value, max_age=lifetime, path=cookies.COOKIE_PATH,
                        secure=True, httponly=True, samesite="lax")
    response.headers["Cache-Control"] = "no-store"
    return response


@router.post("/dashboard/sign-out")
def sign_out(request: Request, session: SessionDep) -> Response:
    if not _same_origin(request):
        raise Forbidden("sign-out must come from this site's own pages")
    claim = cookies.parse(request.cookies.get(cookies.COOKIE_NAME))
    if claim is not None and signed_in(request, session) is not None:
        # The cookie is signed, not stored: without this record a copy of it would keep
        # working until it expires.
        repo.record_sign_out(session, cookies.session_digest(claim),
                             datetime.fromtimestamp(claim.expires_at, UTC))
    response = RedirectResponse("/dashboard/sign-in?signed_out=1", status_code=303)
    response.delete_cookie(cookies.COOKIE_NAME, path=cookies.COOKIE_PATH, secure=True,
                           httponly=True, samesite="lax")
    response.headers["Clear-Site-Data"] = '"cache"'
    return response


# --- pages ----------------------------------------------------------------------------------


def _page(request: Request, session: Session,
          build: Callable[[Principal], HTMLResponse]) -> Response:
    """Sign-in first (coming back here after), then the page, or its error as a page."""
    principal = signed_in(request, session)
    if principal is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/dashboard/sign-in?next={quote(target, safe='')}",
                                status_code=303)
    try:
        return build(principal)
    except MeteringError as exc:
        titles = {400: "That request is not valid", 403: "Not allowed", 404: "Not found"}
        return render(request, "error.html", principal=principal, status=exc.status_code,
                      title=titles.get(exc.status_code, "Something went wrong"),
                      message=exc.message, page="error", team=None)


@router.get("/dashboard/teams/{team_id}")
def overview_page(request: Request, team_id: str, session: SessionDep, settings: SettingsDep,
                  range: str | None = None) -> Response:
    def build(principal: Principal) -> HTMLResponse:
        view = service.overview(session, principal, settings, team_id, range)
        return render(request, "overview.html", principal=principal, page="overview",
                      team=view.team, view=view,
                      live_url=_api_href(team_id, "overview") + f"?range={view.chart.range}")

    return _page(request, session, build)


@router.get("/dashboard/teams/{team_id}/executions")
def executions_page(request: Request, team_id: str, session: SessionDep,
                    settings: SettingsDep, q: str | None = None,
                    after: str | None = None) -> Response:
    def build(principal: Principal) -> HTMLResponse:
        view = service.executions(session, principal, settings, team_id, q, after)
        more = None
        if view.next_cursor:
            more = (service.team_href(team_id, "executions") + "?after="
                    + quote(view.next_cursor, safe="")
                    + (f"&q={quote(view.query, safe='')}" if view.query else ""))
        return render(request, "executions.html", principal=principal, page="executions",
                      team=view.team, view=view, more_href=more)

    return _page(request, session, build)


@router.get("/dashboard/teams/{team_id}/sandboxes/{sandbox_id}")
def sandbox_page(request: Request, team_id: str, sandbox_id: str, session: SessionDep,
                 settings: SettingsDep) -> Response:
    def build(principal: Principal) -> HTMLResponse:
        view = service.sandbox(session, principal, settings, team_id, sandbox_id)
        return render(request, "sandbox.html", principal=principal, page="sandbox",
                      team=view.team, view=view,
                      live_url=_api_href(team_id, "sandboxes", sandbox_id))

    return _page(request, session, build)


@router.get("/dashboard/teams/{team_id}/invoices")
def invoices_page(request: Request, team_id: str, session: SessionDep,
                  settings: SettingsDep) -> Response:
    def build(principal: Principal) -> HTMLResponse:
        view = service.invoices(session, principal, settings, team_id)
        return render(request, "invoices.html", principal=principal, page="invoices",
                      team=view.team, view=view)

    return _page(request, session, build)


@router.get("/dashboard/teams/{team_id}/invoices/{invoice_id}")
def invoice_page(request: Request, team_id: str, invoice_id: str,
                 session: SessionDep) -> Response:
    def build(principal: Principal) -> HTMLResponse:
        view = charges.invoice(session, principal, team_id, invoice_id)
        return render(request, "invoice.html", principal=principal, page="invoice",
                      team=view.team, view=view)

    return _page(request, session, build)


@router.get("/dashboard/teams/{team_id}/invoices/{invoice_id}/lines/{position}")
def invoice_line_page(request: Request, team_id: str, invoice_id: str, position: int,
                      session: SessionDep, settings: SettingsDep,
                      after: str | None = None) -> Response:
    def build(principal: Principal) -> HTMLResponse:
        view = charges.line(session, principal, settings, team_id, invoice_id, position, after)
        return render(request, "invoice_line.html", principal=principal, page="invoice",
                      team=view.team, view=view)

    return _page(request, session, build)


@router.get("/dashboard/teams/{team_id}/runs/{execution_id}")
def run_page(request: Request, team_id: str, execution_id: str, session: SessionDep
             ) -> Response:
    def build(principal: Principal) -> HTMLResponse:
        view = charges.run(session, principal, team_id, execution_id)
        return render(request, "execution.html", principal=principal, page="sandbox",
                      team=view.team, view=view)

    return _page(request, session, build)


@router.get("/dashboard/finance")
def finance_page(request: Request, session: SessionDep, settings: SettingsDep,
                 period: str | None = None, team: str | None = None, q: str | None = None,
                 sort: str | None = None) -> Response:
    def build(principal: Principal) -> HTMLResponse:
        if team:  # the "open a team" form of bookmarks made before the team list
            principal.require("finance")
            raise _Redirect(service.team_href(team.strip()))
        view = service.finance(session, principal, period, settings, q, sort)
        return render(request, "finance.html", principal=principal, page="finance",
                      team=None, view=view)

    try:
        return _page(request, session, build)
    except _Redirect as redirect:
        return RedirectResponse(redirect.target, status_code=303)


class _Redirect(Exception):
    def __init__(self, target: str) -> None:
        super().__init__(target)
        self.target = target


@router.get("/dashboard/finance/invoices.csv")
def finance_export(request: Request, session: SessionDep, period: str) -> Response:
    """The month's invoices and lines as CSV (the finance page's export link)."""
    principal = signed_in(request, session)
    if principal is None:
        raise Unauthorized("sign in to the dashboard first")
    principal.require("finance")
    try:
        parse_period(period)
    except ValueError as exc:
        raise BadRequest(f"period: {exc}") from exc
    # The same file as `metering invoices export` and `GET /v1/invoices/export`.
    body = invoice_export.csv_text(session, period)
    return Response(body, media_type="text/csv; charset=utf-8", headers={
        "Content-Disposition": f'attachment; filename="invoices-{period}.csv"',
        "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})


# --- live JSON for the pages' refresh -------------------------------------------------------


def _api_href(team_id: str, *rest: str) -> str:
    return "/dashboard/api/teams/" + "/".join(quote(p, safe="") for p in (team_id, *rest))


def _require_session(request: Request, session: Session) -> Principal:
    principal = signed_in(request, session)
    if principal is None:
        raise Unauthorized("the dashboard session ended; sign in again")
    return principal


def _json(view: object) -> JSONResponse:
    return JSONResponse(views.as_json(view), headers={"Cache-Control": "no-store",
                                          "X-Content-Type-Options": "nosniff"})


@router.get("/dashboard/api/teams/{team_id}/overview")
def overview_data(request: Request, team_id: str, session: SessionDep, settings: SettingsDep,
                  range: str | None = None) -> JSONResponse:
    """The overview's live figures: balance, usage chart, running sandboxes."""
    principal = _require_session(request, session)
    return _json(service.overview(session, principal, settings, team_id, range))


@router.get("/dashboard/api/teams/{team_id}/sandboxes/{sandbox_id}")
def sandbox_data(request: Request, team_id: str, sandbox_id: str, session: SessionDep,
                 settings: SettingsDep) -> JSONResponse:
    principal = _require_session(request, session)
    return _json(service.sandbox(session, principal, settings, team_id, sandbox_id))


@router.get("/dashboard/static/{name}")
def static_file(name: str) -> Response:
    if name not in STATIC_TYPES:
        raise NotFound(f"no file {name}")
    return Response(_static(name), media_type=STATIC_TYPES[name], headers={
        "Cache-Control": "public, max-age=31536000, immutable",
        "X-Content-Type-Options": "nosniff"})
