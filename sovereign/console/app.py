"""The console's ASGI application: routes, sign-in, sessions, CSRF and security headers.

Every page but ``/login``, ``/auth/callback`` and ``/static`` needs a session. A page is shown only to
someone whose roles allow the operator RPC behind it (the role map the gRPC port uses); the RPC then
checks the token again. Forms carry a per-session CSRF token and must come from the console's own
origin; approving a held change also needs a sign-in less than ``fresh_login`` old.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import jinja2
from prometheus_client import CollectorRegistry, Counter
from starlette.applications import Starlette
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from kms.oidc.errors import AuthError
from kms.oidc.roles import ADMIN_SERVICE, AUDIT_SERVICE, RoleMap, method_path
from kms.oidc.tokens import TokenValidator
from sovereign.console.backend import NODE_STATES, Backend, BackendError, Query
from sovereign.console.login import Realm, authorization_url, exchange_code, new_verifier
from sovereign.console.overview import Overview
from sovereign.console.sessions import COOKIE, PendingLogin, Session, Sessions

log = logging.getLogger("sovereign.console")
HERE = Path(__file__).parent
LEDGER_LIMIT = 200

PAGES = {
    "nodes": method_path(ADMIN_SERVICE, "ListNodes"),
    "keys": method_path(ADMIN_SERVICE, "ListKeys"),
    "ledger": method_path(AUDIT_SERVICE, "ListEntries"),
    "pending": method_path(ADMIN_SERVICE, "ListPendingChanges"),
    "approve": method_path(ADMIN_SERVICE, "ApprovePendingChange"),
}


@dataclass
class ConsoleSettings:
    public_url: str  # https://host:port as the browser reaches it
    realm: Realm
    validator: TokenValidator
    roles: RoleMap
    backend: Backend
    overview: Overview
    audit_key: bytes  # raw Ed25519 public key of the checkpoints, for the browser to verify with
    audit_key_pinned: bool
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    fresh_login: timedelta = timedelta(minutes=5)
    sessions: Sessions = field(default_factory=Sessions)
    registry: CollectorRegistry | None = None


class _Counters:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.sign_ins = Counter("sovereign_console_sign_ins", "Console sign-ins", registry=registry)
        self.refusals = Counter(
            "sovereign_console_refusals", "Console requests refused, by reason", ["reason"], registry=registry
        )


def _security_headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"  # "no-referrer" would make forms send Origin: null
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Strict-Transport-Security"] = "max-age=31536000"
    return response


def template_environment() -> jinja2.Environment:
    """The pages' templates: escaped, and a missing value is an error rather than an empty cell."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(HERE / "templates")),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )


def build_app(settings: ConsoleSettings) -> Starlette:
    templates = Jinja2Templates(env=template_environment())
    counters = _Counters(settings.registry)
    origin = _origin(settings.public_url)
    redirect_uri = f"{settings.public_url}/auth/callback"

    def render(
        request: Request, session: Session | None, name: str, status: int = 200, **ctx: Any
    ) -> Response:
        allowed = {page: _allowed(settings.roles, session, method) for page, method in PAGES.items()}
        response = templates.TemplateResponse(
            request, name, {"session": session, "allowed": allowed, **ctx}, status_code=status
        )
        return _security_headers(response)

    def refuse(
        request: Request, session: Session | None, status: int, code: str, message: str, *, hint: str = ""
    ) -> Response:
        counters.refusals.labels(code).inc()
        return render(request, session, "error.html", status=status, code=code, message=message, hint=hint)

    def session_of(request: Request) -> Session | None:
        return settings.sessions.get(request.cookies.get(COOKIE), settings.clock())

    def page(
        method: str | None, handler: Callable[[Request, Session], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            session = session_of(request)
            if session is None:
                if request.method != "GET" or request.url.path.startswith("/api/"):
                    return refuse(
                        request, None, 401, "CONSOLE_NOT_SIGNED_IN", "sign in first", hint="open /login"
                    )
                return _security_headers(
                    RedirectResponse(f"/login?{urlencode({'next': _local(request)})}", 303)
                )
            if method is not None and not _allowed(settings.roles, session, method):
                required = ", ".join(sorted(settings.roles.required(method)))
                return refuse(request, session, 403, "AUTH_ROLE_MISSING",
                              f"this page needs one of the roles: {required}", hint="ask a realm administrator for the role")  # fmt: skip
            if request.method == "POST":
                problem = await _check_form(request, session, origin)
                if problem is not None:
                    return refuse(request, session, 403, "CONSOLE_CSRF", problem, hint="reload the page and submit the form again")  # fmt: skip
            try:
                return await handler(request, session)
            except BackendError as err:
                status = {"PERMISSION_DENIED": 403, "NOT_FOUND": 404, "UNAUTHENTICATED": 401,
                          "INVALID_ARGUMENT": 400, "FAILED_PRECONDITION": 409}.get(err.status, 502)  # fmt: skip
                return refuse(request, session, status, err.code, err.message, hint=err.hint)

        return endpoint

    async def login(request: Request) -> Response:
        now = settings.clock()
        verifier = new_verifier()
        nonce = new_verifier()[:32]
        state = settings.sessions.begin_login(
            PendingLogin(verifier, nonce, _safe_next(request.query_params.get("next")), now)
        )
        url = authorization_url(
            settings.realm, redirect_uri=redirect_uri, state=state, nonce=nonce, verifier=verifier
        )
        return _security_headers(RedirectResponse(url, 303))

    async def callback(request: Request) -> Response:
        now = settings.clock()
        error = request.query_params.get("error")
        login = settings.sessions.finish_login(request.query_params.get("state", ""), now)
        if login is None or error or not request.query_params.get("code"):
            return refuse(request, None, 400, "CONSOLE_LOGIN_FAILED",
                          "the sign-in did not complete (expired, replayed or refused)", hint="start again at /login")  # fmt: skip
        try:
            token = await _in_thread(
                exchange_code, settings.realm, code=request.query_params["code"], redirect_uri=redirect_uri,
                verifier=login.verifier,
            )  # fmt: skip
            actor = settings.validator.validate(token, now=now)
        except AuthError as err:
            return refuse(request, None, 401, err.code.value, err.message, hint=err.hint)
        session = settings.sessions.open(actor, token, now)
        counters.sign_ins.inc()
        log.info("console sign-in: %s (%s)", actor.username, actor.audit_id)
        # A page, not a redirect: the next request is then same-site, so the SameSite=Strict cookie is sent.
        response = render(request, session, "signed_in.html", next=login.return_to)
        response.set_cookie(
            COOKIE, session.session_id, max_age=int((session.expires_at - now).total_seconds()), path="/",
            secure=True, httponly=True, samesite="strict",
        )  # fmt: skip
        return response

    async def logout(request: Request, session: Session) -> Response:
        settings.sessions.close(session.session_id)
        response = render(request, None, "signed_out.html")
        response.delete_cookie(COOKIE, path="/", secure=True, httponly=True, samesite="strict")
        return response

    async def overview(request: Request, session: Session) -> Response:
        summary = settings.overview.summary(settings.clock())
        pending: list[dict[str, Any]] | None = None
        if _allowed(settings.roles, session, PAGES["pending"]):
            pending = await settings.backend.pending(session.access_token)
        return render(request, session, "overview.html", summary=summary, pending=pending)

    async def nodes(request: Request, session: Session) -> Response:
        state = request.query_params.get("state", "")
        group = request.query_params.get("group", "")
        tee = request.query_params.get("tee", "")
        if state and state not in NODE_STATES:
            return refuse(request, session, 400, "REQUEST_INVALID", f"unknown state {state!r}", hint=f"one of {', '.join(NODE_STATES)}")  # fmt: skip
        rows = await settings.backend.nodes(session.access_token, [state] if state else [])
        rows = [n for n in rows if (not group or group in n["groups"]) and (not tee or n["tee"] == tee)]
        return render(
            request,
            session,
            "nodes.html",
            nodes=rows,
            state=state,
            group=group,
            tee=tee,
            states=list(NODE_STATES),
        )

    async def node(request: Request, session: Session) -> Response:
        found = await settings.backend.node(session.access_token, request.path_params["node_id"])
        history: list[dict[str, Any]] | None = None
        if _allowed(settings.roles, session, PAGES["ledger"]):
            history = await settings.backend.entries(
                session.access_token, Query(node_id=found["node_id"]), LEDGER_LIMIT
            )
        return render(request, session, "node.html", node=found, history=history)

    async def keys(request: Request, session: Session) -> Response:
        return render(request, session, "keys.html", keys=await settings.backend.keys(session.access_token))

    async def ledger(request: Request, session: Session) -> Response:
        form = _LedgerForm.parse(request)
        if form.error:
            return refuse(
                request, session, 400, "REQUEST_INVALID", form.error, hint="check the search fields"
            )
        rows = await _search(settings.backend, session, form)
        return render(request, session, "ledger.html", entries=rows, form=form, limit=LEDGER_LIMIT)

    async def entry(request: Request, session: Session) -> Response:
        sequence = _int(request.path_params["sequence"])
        found = await settings.backend.entry(session.access_token, sequence) if sequence is not None else None
        if found is None:
            return refuse(request, session, 404, "AUDIT_NOT_FOUND", "no such entry")
        return render(
            request, session, "entry.html", entry=found, audit_key=settings.audit_key.hex(),
            audit_key_pinned=settings.audit_key_pinned,
        )  # fmt: skip

    async def proof(request: Request, session: Session) -> Response:
        sequence = _int(request.path_params["sequence"])
        if sequence is None:
            return refuse(request, session, 400, "REQUEST_INVALID", "not an entry number")
        body = await settings.backend.proof(session.access_token, sequence)
        return _security_headers(JSONResponse(body))

    async def pending_page(request: Request, session: Session) -> Response:
        state = request.query_params.get("state", "pending")
        if state not in ("pending", "applied", "rejected", "expired"):
            return refuse(request, session, 400, "REQUEST_INVALID", f"unknown state {state!r}")
        changes = await settings.backend.pending(session.access_token, state)
        fresh = session.fresh(settings.clock(), settings.fresh_login)
        return render(request, session, "pending.html", changes=changes, state=state, fresh=fresh)

    async def decide(request: Request, session: Session) -> Response:
        form = await request.form()
        change_id = request.path_params["change_id"]
        comment = str(form.get("comment", ""))[:1024]
        action = request.path_params["action"]
        if action not in ("approve", "reject"):
            return refuse(request, session, 404, "CONSOLE_NOT_FOUND", "no such page")
        if action == "approve" and not session.fresh(settings.clock(), settings.fresh_login):
            return refuse(request, session, 403, "CONSOLE_STALE_SIGN_IN",
                          "approving a held change needs a fresh sign-in", hint="sign out, sign in again, then approve")  # fmt: skip
        if action == "approve":
            await settings.backend.approve(session.access_token, change_id, comment)
        else:
            await settings.backend.reject(session.access_token, change_id, comment)
        return _security_headers(RedirectResponse("/pending", 303))

    routes = [
        Route("/", page(None, overview)),
        Route("/login", login),
        Route("/auth/callback", callback),
        Route("/logout", page(None, logout), methods=["POST"]),
        Route("/nodes", page(PAGES["nodes"], nodes)),
        Route("/nodes/{node_id}", page(method_path(ADMIN_SERVICE, "GetNode"), node)),
        Route("/keys", page(PAGES["keys"], keys)),
        Route("/ledger", page(PAGES["ledger"], ledger)),
        Route("/ledger/{sequence}", page(PAGES["ledger"], entry)),
        Route("/api/proof/{sequence}", page(method_path(AUDIT_SERVICE, "GetInclusionProof"), proof)),
        Route("/pending", page(PAGES["pending"], pending_page)),
        Route("/pending/{change_id}/{action:str}", page(PAGES["approve"], decide), methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]

    async def not_found(request: Request, _exc: Exception) -> Response:
        return refuse(request, session_of(request), 404, "CONSOLE_NOT_FOUND", "no such page")

    async def not_allowed(request: Request, _exc: Exception) -> Response:
        return refuse(request, session_of(request), 405, "CONSOLE_METHOD_NOT_ALLOWED", "no such request here")

    return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_allowed})


@dataclass
class _LedgerForm:
    node: str = ""
    username: str = ""
    key: str = ""
    decision: str = ""
    since: str = ""
    until: str = ""
    error: str = ""
    since_at: datetime | None = None
    until_at: datetime | None = None

    @classmethod
    def parse(cls, request: Request) -> _LedgerForm:
        q = request.query_params
        fields = ("node", "username", "key", "decision", "since", "until")
        node, username, key, decision, since, until = (q.get(name, "").strip()[:256] for name in fields)
        form = cls(node, username, key, decision, since, until)
        if form.decision not in ("", "grant", "deny"):
            form.error = "decision must be grant or deny"
        for name in ("since", "until"):
            text = getattr(form, name)
            if text:
                try:
                    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
                except ValueError:
                    form.error = f"{name} is not an ISO 8601 time (e.g. 2026-12-01T00:00:00Z)"
                    continue
                setattr(form, f"{name}_at", value if value.tzinfo else value.replace(tzinfo=UTC))
        return form


async def _search(backend: Backend, session: Session, form: _LedgerForm) -> list[dict[str, Any]]:
    """Entries matching the form: node by id or name, key by name or ``prefix/*``, operator user name."""
    token = session.access_token
    prefix = form.key[:-1] if form.key.endswith("/*") else ""
    base = Query(
        key_name="" if prefix else form.key, decision=form.decision, since=form.since_at, until=form.until_at
    )
    node_ids = [""]
    if form.node:
        try:
            named = [
                n["node_id"] for n in await backend.nodes(token) if form.node in (n["name"], n["node_id"])
            ]
        except BackendError:  # may not list nodes (an auditor): the text is then a node id
            named = []
        node_ids = named or [form.node]
    rows: list[dict[str, Any]] = []
    for node_id in node_ids:
        query = Query(node_id, base.key_name, base.decision, base.since, base.until)
        rows += await backend.entries(token, query, 10_000 if (prefix or form.username) else LEDGER_LIMIT)
    if prefix:
        rows = [r for r in rows if r["key_name"].startswith(prefix)]
    if form.username:
        rows = [r for r in rows if r["username"] == form.username]
    rows.sort(key=lambda r: r["sequence"])
    return rows[:LEDGER_LIMIT]


async def _check_form(request: Request, session: Session, origin: str) -> str | None:
    sent_origin = request.headers.get("origin")
    if sent_origin is None or sent_origin != origin:
        return "the form was not sent from this console"
    form: FormData = await request.form()
    token = str(form.get("csrf", ""))
    if not hmac.compare_digest(token.encode(), session.csrf.encode()):
        return "the form's CSRF token is missing or wrong"
    return None


def _allowed(roles: RoleMap, session: Session | None, method: str) -> bool:
    if session is None:
        return False
    try:
        roles.authorize(session.actor, method)
    except AuthError:
        return False
    return True


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _local(request: Request) -> str:
    return request.url.path + (f"?{request.url.query}" if request.url.query else "")


def _safe_next(value: str | None) -> str:
    """Only a path on this console: never an open redirect."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


def _int(text: str) -> int | None:
    return int(text) if text.isdigit() and len(text) <= 15 else None


async def _in_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    import asyncio

    return await asyncio.to_thread(fn, *args, **kwargs)
