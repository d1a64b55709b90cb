"""The review page's web layer (the only module that imports the web framework).

Thin Starlette handlers over `ReviewSession`: each parses the request, calls one
session method and renders a Jinja2 template (autoescaped: every value from the data is
text, never markup). No JavaScript and nothing loaded from the network; the style sheet
is inline. Security:

* binds 127.0.0.1 unless told otherwise (the CLI warns), and answers only requests whose
  Host is the address it serves (no DNS rebinding);
* every state-changing request (POST) carries a CSRF token: an HMAC of a random
  per-browser cookie with a per-process secret, compared in constant time; a POST from
  another origin is refused;
* only the routes below exist: no static-file serving, nothing read from a path in the
  request; record ids are looked up in the batch's own table.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import urlencode

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from detector.decisions import DECISION_TEXT, KNOWN_SCHEMES
from detector.errors import DetectorError
from detector.review.session import BAND_TEXT, SORTS, STATUS_TEXT, QueueQuery, ReviewSession

CSRF_COOKIE = "detector_csrf"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                               "img-src 'self' data:; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("detector", "templates"),
                             autoescape=True)
    env.filters["score"] = lambda v: "" if v is None else f"{v:.3f}"
    env.filters["money"] = lambda v: "" if v is None else f"${v:,.0f}"
    env.filters["count"] = lambda v: "" if v is None else f"{v:,}"
    env.filters["query"] = lambda params: urlencode(params)
    return env


def create_app(session: ReviewSession, *, allowed_hosts: list[str] | None = None,
               secret: bytes | None = None) -> Starlette:
    """The ASGI app serving ``session``."""
    env = _environment()
    secret = secret or secrets.token_bytes(32)

    def token_for(cookie: str) -> str:
        return hmac.new(secret, cookie.encode(), hashlib.sha256).hexdigest()

    def render(request: Request, template: str, status: int = 200, **context) -> HTMLResponse:
        cookie = request.cookies.get(CSRF_COOKIE)
        fresh = cookie is None or len(cookie) != 43
        if fresh:
            cookie = secrets.token_urlsafe(32)
        html = env.get_template(template).render(
            csrf_token=token_for(cookie), analyst=session.analyst or "",
            records=session.records, model_label=session.model.label, **context)
        response = HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)
        if fresh:
            response.set_cookie(CSRF_COOKIE, cookie, httponly=True, samesite="strict")
        return response

    def error(request: Request, status: int, message: str) -> HTMLResponse:
        return render(request, "review_error.html.j2", status=status, status_code=status,
                      message=message)

    async def check_csrf(request: Request) -> dict[str, str] | None:
        """The form of a POST whose token and origin are right; None otherwise."""
        origin = request.headers.get("origin")
        if origin is not None and origin.split("://", 1)[-1] != request.headers.get("host"):
            return None
        form = await request.form()
        cookie = request.cookies.get(CSRF_COOKIE) or ""
        sent = str(form.get("csrf_token") or "")
        if not cookie or not hmac.compare_digest(sent, token_for(cookie)):
            return None
        return {k: str(v) for k, v in form.items()}

    # Plain functions: Starlette runs them in its thread pool, so a case page waiting for
    # the first scoring does not block the queue.
    def queue(request: Request) -> Response:
        try:
            query = QueueQuery.parse(dict(request.query_params))
        except DetectorError as exc:
            return error(request, 400, str(exc))
        page = session.queue_page(query)
        return render(request, "review_queue.html.j2", page=page, sorts=list(SORTS),
                      bands=BAND_TEXT, statuses=STATUS_TEXT)

    def case(request: Request) -> Response:
        kind = request.query_params.get("kind", "")
        record_id = request.query_params.get("id", "")
        try:
            data = session.case(kind, record_id)
        except KeyError:
            return error(request, 404, f"no {kind or 'record'} {record_id!r} in this batch")
        return render(request, "review_case.html.j2", case=data, schemes=KNOWN_SCHEMES,
                      decision_text=DECISION_TEXT, saved=request.query_params.get("saved"),
                      back=request.query_params.get("back") or "")

    async def decide(request: Request) -> Response:
        form = await check_csrf(request)
        if form is None:
            return error(request, 403, "the form's security token is missing or wrong "
                                       "(reload the case page and decide again)")
        kind, record_id = form.get("kind", ""), form.get("id", "")
        try:
            await run_in_threadpool(session.decide, kind, record_id, form)
        except KeyError:
            return error(request, 404, f"no {kind or 'record'} {record_id!r} in this batch")
        except DetectorError as exc:
            return error(request, 400, f"decision not stored: {exc}")
        params = {"kind": kind, "id": record_id, "saved": "1"}
        if form.get("back"):
            params["back"] = form["back"]
        return RedirectResponse(f"/case?{urlencode(params)}", status_code=303)

    def labels_csv(request: Request) -> Response:
        import tempfile
        from pathlib import Path

        from detector.decisions import export_labels

        with tempfile.TemporaryDirectory() as tmp:
            path, _ = export_labels(Path(tmp) / "labels.csv", session.store)
            body = path.read_bytes()
        return Response(body, media_type="text/csv", headers={
            **SECURITY_HEADERS, "Content-Disposition": 'attachment; filename="labels.csv"'})

    async def not_found(request: Request, exc: Exception) -> Response:
        return error(request, 404, "no such page")

    routes = [
        Route("/", queue, methods=["GET"]),
        Route("/case", case, methods=["GET"]),
        Route("/decide", decide, methods=["POST"]),
        Route("/labels.csv", labels_csv, methods=["GET"]),
    ]
    hosts = allowed_hosts or ["127.0.0.1", "localhost"]
    return Starlette(routes=routes,
                     middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=hosts)],
                     exception_handlers={404: not_found, 405: not_found})


def run(session: ReviewSession, host: str, port: int) -> None:
    """Serve until interrupted."""
    import uvicorn

    hosts = ["127.0.0.1", "localhost", "::1"] if host in ("127.0.0.1", "localhost", "::1") \
        else ["*"]  # bound to a network address on purpose: any Host name may reach it
    uvicorn.run(create_app(session, allowed_hosts=hosts), host=host, port=port,
                log_level="warning")
